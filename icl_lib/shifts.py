"""Garg et al.'s out-of-distribution suite: transformations of a batch of prompts.

Every shift starts from the training distribution's inputs ``xs: (batch, n_points, d)``
with rows x ~ N(0, I_d) and changes the inputs, the labels, or the query. Input shifts
are plain functions of ``xs`` (and a generator):

* :func:`skewed_covariance`: x -> S x with S = Q diag(sqrt(lambda)) Q^T, lambda_i
  proportional to 1 / i (random basis Q), rescaled so that E ||x||^2 = d as in training;
* :func:`half_subspace`: the inputs lie in a random subspace of dimension d // 2 (again
  E ||x||^2 = d);
* :func:`scaled_inputs`: x -> c x;
* :func:`opposite_orthant`: the examples lie in one random orthant, each query in the
  opposite one;
* :func:`orthogonal_query`: the query at position k is orthogonal to the k examples
  before it (same norm);

label shifts are plain functions of ``ys: (batch, n_points)``:

* :func:`noisy_labels`: y -> y + noise_std * eps, eps ~ N(0, 1), on every label (the
  query's included);
* :func:`scaled_outputs`: y -> c y.

:func:`make_shift` builds a :class:`Shift` by name (each one a frozen dataclass of its
options; the scaled ones need ``scale``); ``Shift.apply(xs, task, generator)`` returns
:class:`ShiftedPrompts`, which :mod:`icl_lib.evaluate` reads. The book's choices where
Garg et al.'s code differs or was not followed exactly: the skewed spectrum is lambda_i
proportional to 1 / i, both covariance shifts are normalised to trace d, and noisy
labels add noise of standard deviation ``noise_std`` without renormalising.

Chapter 2 measures models on its own shifted prompts with :func:`axis_orthogonal_query`
(Garg et al.'s query along e_d), :func:`prediction_at_query`,
:func:`least_squares_at_query`, and scores them with
:func:`icl_lib.evaluation.regression_slope` and
:func:`icl_lib.evaluation.normalised_error`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from icl_lib import checks, evaluation


@dataclass(frozen=True)
class ShiftedPrompts:
    """A batch of shifted prompts.

    ``xs: (batch, n_points, d)`` and ``ys: (batch, n_points)`` are the examples. If
    ``query_xs`` and ``query_ys`` (same shapes) are set, the prediction at position k is
    for the query ``query_xs[:, k]`` (label ``query_ys[:, k]``) from the examples
    ``xs[:, :k]``, ``ys[:, :k]``; otherwise the query at k is ``xs[:, k]``, as in
    training. ``params`` are the sampled functions' (for example ``w: (batch, d)``).
    ``variance`` is E[f(x_query)^2] relative to the training distribution's
    zero-predictor error (for example c^2 for inputs or outputs scaled by c), by which
    errors are normalised.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    query_xs: torch.Tensor | None = None
    query_ys: torch.Tensor | None = None
    variance: float = 1.0
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def has_queries(self) -> bool:
        """Whether the queries differ from the examples (opposite orthant, orthogonal
        query)."""
        return self.query_xs is not None


# ----------------------------------------------------- input shifts


def random_rotation(
    d: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A random orthogonal matrix ``(d, d)`` (QR of a Gaussian matrix, signs fixed so it
    is Haar-distributed)."""
    d = checks.positive_int("d", d)
    gaussian = torch.randn(
        d, d, generator=generator, device=generator.device, dtype=torch.float64
    )
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def _transform(
    xs: torch.Tensor, spectrum: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """x -> S x with S = Q diag(sqrt(spectrum)) Q^T, spectrum rescaled to sum to d:
    ``(batch, n, d)``."""
    d = xs.shape[-1]
    spectrum = spectrum * (d / spectrum.sum())
    rotation = random_rotation(d, generator, xs.dtype)
    root = rotation @ torch.diag(spectrum.to(xs).sqrt()) @ rotation.T
    return xs @ root.T


def skewed_covariance(
    xs: torch.Tensor, generator: torch.Generator, decay: float = 1.0
) -> torch.Tensor:
    """Inputs with covariance Q diag(lambda) Q^T, lambda_i proportional to i^(-decay),
    trace d: ``(batch, n, d)``.

    One random basis Q for the whole batch (as Garg et al. draw one transformation per
    evaluation).
    """
    batch, _, d = checks.prompt_tensors(xs)
    decay = checks.nonnegative_float("decay", decay)
    spectrum = torch.arange(1, d + 1, dtype=torch.float64, device=xs.device) ** -decay
    return _transform(xs, spectrum, generator)


def half_subspace(xs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Inputs in a random subspace of dimension max(1, d // 2), covariance trace d:
    ``(batch, n, d)``."""
    _, _, d = checks.prompt_tensors(xs)
    spectrum = torch.zeros(d, dtype=torch.float64, device=xs.device)
    spectrum[: max(1, d // 2)] = 1.0
    return _transform(xs, spectrum, generator)


def scaled_inputs(xs: torch.Tensor, scale: float) -> torch.Tensor:
    """x -> scale * x: ``(batch, n, d)``."""
    checks.prompt_tensors(xs)
    return checks.positive_float("scale", scale) * xs


def opposite_orthant(
    xs: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(examples, queries)``, both ``(batch, n, d)``: examples |x| * s in the orthant
    of a random sign pattern s (one per prompt), queries -|x| * s in the opposite
    orthant (Garg et al.'s "random quadrants")."""
    batch, _, d = checks.prompt_tensors(xs)
    signs = (
        torch.randint(0, 2, (batch, 1, d), generator=generator, device=xs.device).to(
            xs.dtype
        )
        * 2
        - 1
    )
    examples = xs.abs() * signs
    return examples, -examples


def orthogonal_query(xs: torch.Tensor) -> torch.Tensor:
    """Queries ``(batch, n, d)``: row k is x_k minus its projection on span(x_0, ...,
    x_{k-1}), rescaled to ||x_k||.

    For k >= d the examples span R^d (almost surely) and nothing orthogonal is left;
    those rows are zero and evaluation should stop at k = d - 1
    (:meth:`Shift.max_points`).
    """
    batch, n_points, d = checks.prompt_tensors(xs)
    x64 = xs.to(torch.float64)
    queries = torch.zeros_like(x64)
    for k in range(n_points):
        query = x64[:, k]
        if k > 0:
            if k >= d:
                continue
            # (batch, d, k): orthonormal basis of the span
            basis, _ = torch.linalg.qr(x64[:, :k].transpose(1, 2))
            query = query - (basis @ (basis.transpose(1, 2) @ query[..., None]))[..., 0]
            query = query * (
                x64[:, k].norm(dim=-1, keepdim=True)
                / query.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            )
        queries[:, k] = query
    return queries.to(xs.dtype)


# ----------------------------------------------------- label shifts


def noisy_labels(
    ys: torch.Tensor, generator: torch.Generator, noise_std: float = 1.0
) -> torch.Tensor:
    """y -> y + noise_std * eps with eps ~ N(0, 1) independent per label: ``(batch,
    n)``."""
    noise_std = checks.nonnegative_float("noise_std", noise_std)
    noise = torch.randn(ys.shape, generator=generator, device=ys.device, dtype=ys.dtype)
    return ys + noise_std * noise


def scaled_outputs(ys: torch.Tensor, scale: float) -> torch.Tensor:
    """y -> scale * y: ``(batch, n)``."""
    return checks.positive_float("scale", scale) * ys


# ----------------------------------------------------- measuring on shifted prompts


def axis_orthogonal_query(xs: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s orthogonal query as chapter 2 draws it: a copy of ``xs: (batch,
    n_points, d)`` with the examples (all points but the last) in the span of e_1, ...,
    e_{d-1} and the query (the last point) along e_d."""
    checks.prompt_tensors(xs)
    xs = xs.clone()
    xs[:, :-1, -1] = 0.0
    xs[:, -1, :-1] = 0.0
    return xs


def least_squares_at_query(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares fitted to all the examples of each prompt, evaluated
    at its query (the last point): ``xs: (batch, n_points, d)``, ``ys: (batch,
    n_points)`` -> ``(batch,)`` float64 (what :func:`icl_lib.baselines.least_squares`
    predicts at the last position, without every shorter prefix)."""
    checks.prompt_tensors(xs, ys)
    x64, y64 = xs.double(), ys.double()
    weights = (torch.linalg.pinv(x64[:, :-1]) @ y64[:, :-1, None])[..., 0]
    return (x64[:, -1] * weights).sum(-1)


def prediction_at_query(
    model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """A trained model's prediction at the last point of each prompt (the query):
    ``xs: (batch, n_points, d)``, ``ys: (batch, n_points)`` -> ``(batch,)`` float64
    (:func:`icl_lib.evaluation.as_predictor`)."""
    checks.prompt_tensors(xs, ys)
    return evaluation.as_predictor(model)(xs, ys)[:, -1]


# ----------------------------------------------------- shifts of whole prompts, by name


class Shift:
    """What the shifts share: :meth:`apply` draws the prompts, :meth:`inputs` and
    :meth:`labels` change them.

    Each shift is a frozen dataclass whose fields are its options (:data:`SHIFTS`,
    :func:`make_shift`); this base changes nothing.
    """

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(examples, queries or None)``, both ``(batch, n, d)``, from inputs of the
        training distribution."""
        return xs, None

    def labels(self, ys: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Shifted labels ``(batch, n)``."""
        return ys

    @property
    def variance(self) -> float:
        """E[f(x_query)^2] relative to the training distribution's zero-predictor
        error."""
        return 1.0

    def max_points(self, d: int) -> int | None:
        """The longest prompt the shift is defined for, or ``None``."""
        return None

    @property
    def label(self) -> str:
        """A short name for plots, with the options that are required or not at their
        default: ``"scaled_inputs(scale=2)"``."""
        shown = [
            f"{f.name}={getattr(self, f.name):g}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default
        ]
        name = next(name for name, kind in SHIFTS.items() if type(self) is kind)
        return f"{name}({', '.join(shown)})" if shown else name

    def apply(
        self, xs: torch.Tensor, task: Any, generator: torch.Generator
    ) -> ShiftedPrompts:
        """Shift prompts whose inputs ``xs: (batch, n, d)`` come from the training
        distribution N(0, I_d).

        ``task`` is a function class (:mod:`icl_lib.tasks`); examples and queries get
        labels from the same sampled function. Random draws: the inputs' shift, the
        task, then the labels' shift.
        """
        checks.prompt_tensors(xs)
        xs, queries = self.inputs(xs, generator)
        if queries is None:
            drawn = task.sample(xs, generator)
            ys, query_ys = drawn.ys, None
        else:
            n_points = xs.shape[1]
            drawn = task.sample(torch.cat((xs, queries), dim=1), generator)
            ys, query_ys = drawn.ys[:, :n_points], drawn.ys[:, n_points:]
        ys = self.labels(ys, generator)
        query_ys = self.labels(query_ys, generator) if query_ys is not None else None
        return ShiftedPrompts(
            xs=xs,
            ys=ys,
            query_xs=queries,
            query_ys=query_ys,
            variance=float(self.variance),
            params=dict(drawn.params),
        )


@dataclass(frozen=True)
class SkewedCovariance(Shift):
    """:func:`skewed_covariance` with spectrum i^(-decay)."""

    decay: float = 1.0

    def __post_init__(self) -> None:
        checks.nonnegative_float("decay", self.decay)

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, None]:
        return skewed_covariance(xs, generator, self.decay), None


@dataclass(frozen=True)
class HalfSubspace(Shift):
    """:func:`half_subspace`."""

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, None]:
        return half_subspace(xs, generator), None


@dataclass(frozen=True)
class ScaledInputs(Shift):
    """x -> scale * x (:func:`scaled_inputs`), so E[f(x)^2] grows by scale^2 for a
    linear f."""

    scale: float

    def __post_init__(self) -> None:
        checks.positive_float("scale", self.scale)

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, None]:
        return scaled_inputs(xs, self.scale), None

    @property
    def variance(self) -> float:
        return self.scale**2


@dataclass(frozen=True)
class OppositeOrthant(Shift):
    """:func:`opposite_orthant`: examples in one random orthant, queries in the opposite
    one."""

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return opposite_orthant(xs, generator)


@dataclass(frozen=True)
class OrthogonalQuery(Shift):
    """:func:`orthogonal_query`, defined for prompts of at most d points."""

    def inputs(
        self, xs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return xs, orthogonal_query(xs)

    def max_points(self, d: int) -> int:
        return d


@dataclass(frozen=True)
class NoisyLabels(Shift):
    """:func:`noisy_labels` with ``noise_std``; the normalisation counts the signal
    only."""

    noise_std: float = 1.0

    def __post_init__(self) -> None:
        checks.nonnegative_float("noise_std", self.noise_std)

    def labels(self, ys: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return noisy_labels(ys, generator, self.noise_std)


@dataclass(frozen=True)
class ScaledOutputs(Shift):
    """y -> scale * y (:func:`scaled_outputs`)."""

    scale: float

    def __post_init__(self) -> None:
        checks.positive_float("scale", self.scale)

    def labels(self, ys: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return scaled_outputs(ys, self.scale)

    @property
    def variance(self) -> float:
        return self.scale**2


SHIFTS: dict[str, type[Shift]] = {
    "skewed_covariance": SkewedCovariance,
    "noisy_labels": NoisyLabels,
    "opposite_orthant": OppositeOrthant,
    "orthogonal_query": OrthogonalQuery,
    "half_subspace": HalfSubspace,
    "scaled_inputs": ScaledInputs,
    "scaled_outputs": ScaledOutputs,
}


def make_shift(name: str, **options: Any) -> Shift:
    """Build a shift by name: ``make_shift("scaled_inputs", scale=2.0)``;
    ``list(SHIFTS)`` lists the names."""
    return checks.build(SHIFTS, {"name": name, **options}, "shift")
