"""Garg et al.'s out-of-distribution suite: transformations of a batch of prompts.

Every shift starts from the training distribution's inputs ``xs: (batch, n_points, d)`` with rows x ~ N(0, I_d) and
changes the inputs, the labels, or the query. Input shifts are plain functions of ``xs`` (and a generator):

* :func:`skewed_covariance`: x -> S x with S = Q diag(sqrt(lambda)) Q^T, lambda_i proportional to 1 / i (random
  basis Q), rescaled so that E ||x||^2 = d as in training;
* :func:`half_subspace`: the inputs lie in a random subspace of dimension d // 2 (again E ||x||^2 = d);
* :func:`scaled_inputs`: x -> c x;
* :func:`opposite_orthant`: the examples lie in one random orthant, each query in the opposite one;
* :func:`orthogonal_query`: the query at position k is orthogonal to the k examples before it (same norm);

label shifts are plain functions of ``ys: (batch, n_points)``:

* :func:`noisy_labels`: y -> y + noise_std * eps, eps ~ N(0, 1), on every label (the query's included);
* :func:`scaled_outputs`: y -> c y.

:func:`make_shift` builds a :class:`Shift` by name; ``Shift.apply(xs, task, generator)`` returns
:class:`ShiftedPrompts`, which :mod:`icl_lib.evaluate` reads. The book's choices where Garg et al.'s code differs
or was not followed exactly: the skewed spectrum is lambda_i proportional to 1 / i, both covariance shifts are
normalised to trace d, and noisy labels add noise of standard deviation ``noise_std`` without renormalising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from icl_lib import checks


@dataclass(frozen=True)
class ShiftedPrompts:
    """A batch of shifted prompts.

    ``xs: (batch, n_points, d)`` and ``ys: (batch, n_points)`` are the examples. If ``query_xs`` and ``query_ys``
    (same shapes) are set, the prediction at position k is for the query ``query_xs[:, k]`` (label
    ``query_ys[:, k]``) from the examples ``xs[:, :k]``, ``ys[:, :k]``; otherwise the query at k is ``xs[:, k]``, as
    in training. ``params`` are the sampled functions' (for example ``w: (batch, d)``). ``variance`` is E[f(x_query)^2] relative to the training distribution's zero-predictor error
    (for example c^2 for inputs or outputs scaled by c), by which errors are normalised.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    query_xs: torch.Tensor | None = None
    query_ys: torch.Tensor | None = None
    variance: float = 1.0
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def has_queries(self) -> bool:
        """Whether the queries differ from the examples (opposite orthant, orthogonal query)."""
        return self.query_xs is not None


# ---------------------------------------------------------------- input shifts


def random_rotation(d: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random orthogonal matrix ``(d, d)`` (QR of a Gaussian matrix, signs fixed so it is Haar-distributed)."""
    d = checks.positive_int("d", d)
    gaussian = torch.randn(d, d, generator=generator, device=generator.device, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def _transform(xs: torch.Tensor, spectrum: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x -> S x with S = Q diag(sqrt(spectrum)) Q^T, spectrum rescaled to sum to d: ``(batch, n, d)``."""
    d = xs.shape[-1]
    spectrum = spectrum * (d / spectrum.sum())
    rotation = random_rotation(d, generator, xs.dtype)
    root = rotation @ torch.diag(spectrum.to(xs).sqrt()) @ rotation.T
    return xs @ root.T


def skewed_covariance(xs: torch.Tensor, generator: torch.Generator, decay: float = 1.0) -> torch.Tensor:
    """Inputs with covariance Q diag(lambda) Q^T, lambda_i proportional to i^(-decay), trace d: ``(batch, n, d)``.

    One random basis Q for the whole batch (as Garg et al. draw one transformation per evaluation).
    """
    batch, _, d = checks.prompt_tensors(xs)
    decay = checks.nonnegative_float("decay", decay)
    spectrum = torch.arange(1, d + 1, dtype=torch.float64, device=xs.device) ** -decay
    return _transform(xs, spectrum, generator)


def half_subspace(xs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Inputs in a random subspace of dimension max(1, d // 2), covariance trace d: ``(batch, n, d)``."""
    _, _, d = checks.prompt_tensors(xs)
    spectrum = torch.zeros(d, dtype=torch.float64, device=xs.device)
    spectrum[: max(1, d // 2)] = 1.0
    return _transform(xs, spectrum, generator)


def scaled_inputs(xs: torch.Tensor, scale: float) -> torch.Tensor:
    """x -> scale * x: ``(batch, n, d)``."""
    checks.prompt_tensors(xs)
    return checks.positive_float("scale", scale) * xs


def opposite_orthant(xs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(examples, queries)``, both ``(batch, n, d)``: examples |x| * s in the orthant of a random sign pattern
    s (one per prompt), queries -|x| * s in the opposite orthant (Garg et al.'s "random quadrants")."""
    batch, _, d = checks.prompt_tensors(xs)
    signs = torch.randint(0, 2, (batch, 1, d), generator=generator, device=xs.device).to(xs.dtype) * 2 - 1
    examples = xs.abs() * signs
    return examples, -examples


def orthogonal_query(xs: torch.Tensor) -> torch.Tensor:
    """Queries ``(batch, n, d)``: row k is x_k minus its projection on span(x_0, ..., x_{k-1}), rescaled to ||x_k||.

    For k >= d the examples span R^d (almost surely) and nothing orthogonal is left; those rows are zero and
    evaluation should stop at k = d - 1 (:meth:`Shift.max_points`).
    """
    batch, n_points, d = checks.prompt_tensors(xs)
    x64 = xs.to(torch.float64)
    queries = torch.zeros_like(x64)
    for k in range(n_points):
        query = x64[:, k]
        if k > 0:
            if k >= d:
                continue
            basis, _ = torch.linalg.qr(x64[:, :k].transpose(1, 2))  # (batch, d, k): orthonormal basis of the span
            query = query - (basis @ (basis.transpose(1, 2) @ query[..., None]))[..., 0]
            query = query * (x64[:, k].norm(dim=-1, keepdim=True) / query.norm(dim=-1, keepdim=True).clamp_min(1e-30))
        queries[:, k] = query
    return queries.to(xs.dtype)


# ---------------------------------------------------------------- label shifts


def noisy_labels(ys: torch.Tensor, generator: torch.Generator, noise_std: float = 1.0) -> torch.Tensor:
    """y -> y + noise_std * eps with eps ~ N(0, 1) independent per label: ``(batch, n)``."""
    noise_std = checks.nonnegative_float("noise_std", noise_std)
    noise = torch.randn(ys.shape, generator=generator, device=ys.device, dtype=ys.dtype)
    return ys + noise_std * noise


def scaled_outputs(ys: torch.Tensor, scale: float) -> torch.Tensor:
    """y -> scale * y: ``(batch, n)``."""
    return checks.positive_float("scale", scale) * ys


# ---------------------------------------------------------------- by name

SHIFTS: dict[str, tuple[str, ...]] = {
    "skewed_covariance": ("decay",),
    "noisy_labels": ("noise_std",),
    "opposite_orthant": (),
    "orthogonal_query": (),
    "half_subspace": (),
    "scaled_inputs": ("scale",),
    "scaled_outputs": ("scale",),
}


@dataclass(frozen=True)
class Shift:
    """A named shift with its options; build with :func:`make_shift`."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks.choice("shift", self.name, tuple(SHIFTS))
        unknown = sorted(set(self.options) - set(SHIFTS[self.name]))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for shift {self.name!r}; accepted: {list(SHIFTS[self.name])}")
        if "scale" in SHIFTS[self.name]:
            checks.positive_float("scale", self.options.get("scale", 2.0))
        if "noise_std" in self.options:
            checks.nonnegative_float("noise_std", self.options["noise_std"])
        if "decay" in self.options:
            checks.nonnegative_float("decay", self.options["decay"])

    @property
    def label(self) -> str:
        """A short name for plots: ``"scaled_inputs(scale=2)"``."""
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({inner})" if inner else self.name

    def max_points(self, d: int) -> int | None:
        """The longest prompt the shift is defined for (``d`` for an orthogonal query), or ``None``."""
        return d if self.name == "orthogonal_query" else None

    def apply(self, xs: torch.Tensor, task: Any, generator: torch.Generator) -> ShiftedPrompts:
        """Shift prompts whose inputs ``xs: (batch, n, d)`` come from the training distribution N(0, I_d).

        ``task`` is a function class (:mod:`icl_lib.tasks`); examples and queries get labels from the same
        sampled function.
        """
        checks.prompt_tensors(xs)
        name, options = self.name, self.options
        queries = None
        variance = 1.0
        if name == "skewed_covariance":
            xs = skewed_covariance(xs, generator, options.get("decay", 1.0))
        elif name == "half_subspace":
            xs = half_subspace(xs, generator)
        elif name == "scaled_inputs":
            xs = scaled_inputs(xs, options.get("scale", 2.0))
            variance = options.get("scale", 2.0) ** 2
        elif name == "opposite_orthant":
            xs, queries = opposite_orthant(xs, generator)
        elif name == "orthogonal_query":
            queries = orthogonal_query(xs)
        if queries is None:
            drawn = task.sample(xs, generator)
            ys, query_ys = drawn.ys, None
        else:
            n_points = xs.shape[1]
            drawn = task.sample(torch.cat((xs, queries), dim=1), generator)
            ys, query_ys = drawn.ys[:, :n_points], drawn.ys[:, n_points:]
        if name in ("noisy_labels", "scaled_outputs"):
            def relabel(labels: torch.Tensor) -> torch.Tensor:
                if name == "noisy_labels":
                    return noisy_labels(labels, generator, options.get("noise_std", 1.0))
                return scaled_outputs(labels, options.get("scale", 2.0))
            ys = relabel(ys)
            query_ys = relabel(query_ys) if query_ys is not None else None
            if name == "scaled_outputs":
                variance = options.get("scale", 2.0) ** 2
        return ShiftedPrompts(xs=xs, ys=ys, query_xs=queries, query_ys=query_ys, variance=float(variance),
                              params=dict(drawn.params))


def make_shift(name: str, **options: Any) -> Shift:
    """Build a shift by name: ``make_shift("scaled_inputs", scale=2.0)``; ``list(SHIFTS)`` lists the names."""
    return Shift(name, dict(options))
