"""Device choice and reproducible generators: CUDA when it is there, the CPU
otherwise."""

from __future__ import annotations

import os
import platform
import re

import torch


def default_device() -> torch.device:
    """The device the chapters train on: ``cuda`` if available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: object) -> torch.device | None:
    """``None`` for ``"auto"``, else the ``torch.device`` that ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` names (whether or not CUDA is present here); raises ``ValueError``
    naming ``device`` for anything else."""
    if name == "auto":
        return None
    try:
        device = torch.device(name) if isinstance(name, str) else None
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}"
        )
    return device


def resolve_device(name: str) -> torch.device:
    """The device that ``name`` (see :func:`parse_device`) means here (``"auto"``: CUDA
    when available)."""
    device = parse_device(name)
    if device is None:
        device = default_device()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device = {name!r} but CUDA is not available here; use 'cpu' or 'auto'"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the host's processor (for run
    metadata)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def cpu_kernels() -> dict[str, str]:
    """What decides whether float32 results on this CPU are bit-identical to another's:
    the processor's model name, the instruction set torch's vectorised kernels use
    (``ATEN_CPU_CAPABILITY`` can lower it) and the BLAS build."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    build = torch.__config__.show()
    blas = next(
        (
            item.split("=", 1)[1]
            for item in build.replace(",", "\n").split()
            if item.startswith("BLAS_INFO=")
        ),
        "unknown",
    )
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", build)
    return {
        "cpu_model": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": f"{blas} {mkl.group(1)}" if blas == "mkl" and mkl else blas,
        "blas_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "default"),
    }


# The seeds torch's generators take (a 64-bit integer, signed or not).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def check_seed(name: str, seed: object) -> int:
    """Return ``seed`` if a ``torch.Generator`` takes it (an integer in [-2**63, 2**64 -
    1]), else ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(
            f"{name} must be an integer between -2**63 and 2**64 - 1 (a 64-bit seed), "
            f"got {seed}"
        )
    return seed


def make_generator(
    seed: int, device: torch.device | str | None = None
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default: CPU) seeded with ``seed``.

    Every sampler takes such a generator explicitly, so that no global random state is
    touched and a chapter's numbers are fixed by its seeds.
    """
    check_seed("seed", seed)
    generator = torch.Generator(
        device=torch.device(device) if device is not None else "cpu"
    )
    generator.manual_seed(seed)
    return generator
