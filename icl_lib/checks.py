"""Argument checks shared by the library: each error names the argument and what it accepts."""

from __future__ import annotations

import math

import torch


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return value


def nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (>= 0), got {value!r}")
    return value


def finite_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number (of any sign), else raise ``ValueError``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def nonnegative_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number >= 0, else raise ``ValueError``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def positive_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise ``ValueError``."""
    number = nonnegative_float(name, value)
    if number == 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def unit_interval(name: str, value: object) -> float:
    """Return ``float(value)`` if it lies in [0, 1], else raise ``ValueError``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0 <= number <= 1:  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def prompt_tensors(xs: torch.Tensor, ys: torch.Tensor | None = None) -> tuple[int, int, int]:
    """Check ``xs: (batch, n_points, d)`` and ``ys: (batch, n_points)``; return (batch, n_points, d)."""
    if not isinstance(xs, torch.Tensor) or xs.ndim != 3:
        shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
        raise ValueError(f"xs must be a tensor of shape (batch, n_points, d), got {shape}")
    batch, n_points, d = xs.shape
    if ys is not None:
        if not isinstance(ys, torch.Tensor) or tuple(ys.shape) != (batch, n_points):
            shape = tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys).__name__
            raise ValueError(
                f"ys must be a tensor of shape (batch, n_points) = {(batch, n_points)} matching xs, got {shape}"
            )
    return batch, n_points, d


def choice(name: str, value: object, accepted: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``accepted``, else raise ``ValueError`` listing them."""
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, accepted))}; got {value!r}")
    return value  # type: ignore[return-value]
