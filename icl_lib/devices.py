"""Device choice and reproducible generators: CUDA when it is there, the CPU otherwise."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The device the chapters train on: ``cuda`` if available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default: CPU) seeded with ``seed``.

    Every sampler takes such a generator explicitly, so that no global random state is touched and a
    chapter's numbers are fixed by its seeds.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    generator.manual_seed(seed)
    return generator
