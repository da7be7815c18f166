"""Argument checks shared by the library: each error names the argument and what it
accepts.

They run where data enters the library (factories, command lines, loaders, samplers,
estimators), never on the values of a tensor inside the training step: a check there
must stay on Python values and shapes (no host sync).

:func:`build` is the one way a spec ``{"name": ..., **options}`` becomes an object (a
task, a model, a shift, an estimator): each kind is a frozen dataclass or a class whose
keyword parameters are its options, with its defaults.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _number(value: object) -> float:
    """``float(value)`` for a real number; TypeError for strings and booleans, which
    ``float`` would accept."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(type(value).__name__)
    return float(value)  # type: ignore[arg-type]


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError`` naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return value


def nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``ValueError`` naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (>= 0), got {value!r}")
    return value


def finite_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number (of any sign), else raise
    ``ValueError``."""
    try:
        number = _number(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def nonnegative_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number >= 0, else raise
    ``ValueError``."""
    try:
        number = _number(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def positive_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise
    ``ValueError``."""
    number = nonnegative_float(name, value)
    if number == 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def unit_interval(name: str, value: object) -> float:
    """Return ``float(value)`` if it lies in [0, 1], else raise ``ValueError``."""
    try:
        number = _number(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0 <= number <= 1:  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def prompt_tensors(
    xs: torch.Tensor, ys: torch.Tensor | None = None
) -> tuple[int, int, int]:
    """Check ``xs: (batch, n_points, d)`` and ``ys: (batch, n_points)``; return (batch,
    n_points, d)."""
    if not isinstance(xs, torch.Tensor) or xs.ndim != 3:
        shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
        raise ValueError(
            f"xs must be a tensor of shape (batch, n_points, d), got {shape}"
        )
    batch, n_points, d = xs.shape
    if ys is not None:
        if not isinstance(ys, torch.Tensor) or tuple(ys.shape) != (batch, n_points):
            shape = (
                tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys).__name__
            )
            raise ValueError(
                f"ys must be a tensor of shape (batch, n_points) = {(batch, n_points)} "
                f"matching xs, got {shape}"
            )
    return batch, n_points, d


def choice(name: str, value: object, accepted: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``accepted``, else raise ``ValueError`` listing
    them."""
    if value not in accepted:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, accepted))}; got {value!r}"
        )
    return value  # type: ignore[return-value]


def generator(name: str, value: object) -> torch.Generator:
    """Return ``value`` if it is a ``torch.Generator``, else raise ``ValueError`` (None
    would mean the global RNG)."""
    if not isinstance(value, torch.Generator):
        raise ValueError(
            f"{name} must be a torch.Generator (icl_lib.devices.make_generator(seed)), "
            f"got {value!r}"
        )
    return value


def finite_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """Return ``value`` if every entry is finite, else raise ``ValueError`` (a host
    sync: not for the training step)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"{name} must hold finite numbers, got "
            f"{int((~torch.isfinite(value)).sum())} nan or inf entries"
        )
    return value


def _failure(error: OSError) -> str:
    return error.strerror or str(error)


def writable_directory(name: str, path: str | os.PathLike) -> Path:
    """Create the directory ``path`` if needed and check that files can be written in
    it; ``ValueError`` if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{name} must be a directory, got {str(path)!r}, which is a file"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(
            f"{name} must be a directory that can be written, got {str(path)!r} "
            f"({_failure(error)})"
        ) from None
    return path


def writable_file(name: str, path: str | os.PathLike) -> Path:
    """Check that the file ``path`` can be written (its directory is created if needed);
    ``ValueError`` if not."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{name} must be a file path, got {str(path)!r}, which is a directory"
        )
    writable_directory(f"the directory of {name}", path.parent)
    return path


# ------------------------------------------------------ specs: {"name": ..., **options}


def spec_options(
    kinds: Mapping[str, Callable[..., Any]],
    spec: str | Mapping[str, Any],
    what: str,
    context: Collection[str] = (),
) -> tuple[str, dict[str, Any]]:
    """Check a spec against its kind and return ``(name, options)``; a bare name is a
    spec without options.

    A kind's options are its parameters (a dataclass's fields), less the ``context`` the
    caller supplies (a model's prompt shape). Errors name ``what`` ("task", "model",
    ...), the accepted names or the accepted options; the values are the kind's to check
    when it is built.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(
            f"{what} must be a table with a 'name' (one of {list(kinds)}), got {spec!r}"
        )
    options = dict(spec)
    name = choice(f"{what}.name", options.pop("name"), tuple(kinds))
    parameters = {
        p.name: p
        for p in inspect.signature(kinds[name]).parameters.values()
        if p.name not in context and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {what} {name!r}; accepted: "
            f"{list(parameters) or 'none'}"
        )
    missing = [
        p
        for p, parameter in parameters.items()
        if parameter.default is parameter.empty and p not in options
    ]
    if missing:
        raise ValueError(
            f"{what} {name!r} needs the option(s) {missing}; accepted: "
            f"{list(parameters)}"
        )
    return name, options


def build(
    kinds: Mapping[str, Callable[..., T]], spec: str | Mapping[str, Any], what: str
) -> T:
    """``kinds[name](**options)`` for a spec checked by :func:`spec_options`; the kind
    checks the values.

    ``build(tasks.TASKS, {"name": "sparse_linear", "k": 2}, "task")`` is
    ``SparseLinear(k=2)``.
    """
    name, options = spec_options(kinds, spec, what)
    return kinds[name](**options)
