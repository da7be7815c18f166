"""Shared fixtures for the icl_lib unit tests: seeded CPU generators and a small linear prompt batch."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: the plotting tests must never need a display

import pytest
import torch

from icl_lib.devices import make_generator


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed: each test that takes it sees the same random stream."""
    return make_generator(1234)


@pytest.fixture
def linear_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight noiseless dense-linear prompts in float64: ``xs: (8, 10, 4)``, ``ys: (8, 10)``."""
    g = make_generator(7)
    xs = torch.randn(8, 10, 4, generator=g, dtype=torch.float64)
    w = torch.randn(8, 4, generator=g, dtype=torch.float64)
    return xs, torch.einsum("bnd,bd->bn", xs, w)
