"""Function classes: the tasks a prompt is drawn from, following Garg et al.'s
``tasks.py``.

A function class samples one function per prompt and evaluates it on that prompt's
inputs: ``sample(xs, generator)`` with ``xs: (batch, n_points, d)`` returns a
:class:`TaskSample` whose ``ys`` has shape ``(batch, n_points)`` and whose ``params``
hold the sampled functions (for example the weight vectors ``w: (batch, d)``), which
oracle baselines and plots use.

``zero_predictor_error(d)`` is E[f(x)^2] for x ~ N(0, I_d): the squared error of always
predicting 0. Dividing errors by it gives Garg et al.'s normalisation (d for dense
linear, k for k-sparse), under which the zero predictor scores 1.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from icl_lib import checks


@dataclass(frozen=True)
class TaskSample:
    """Labels and the functions that produced them: ``ys: (batch, n_points)``,
    ``params`` by name."""

    ys: torch.Tensor
    params: dict[str, torch.Tensor]


def _randn(generator: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    checks.generator("generator", generator)  # None would draw from the global RNG
    return torch.randn(
        *shape, generator=generator, device=like.device, dtype=like.dtype
    )


def _rand(generator: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    checks.generator("generator", generator)
    return torch.rand(*shape, generator=generator, device=like.device, dtype=like.dtype)


def _function_class(name: str, value: object) -> object:
    """``value`` if it has the two methods of a function class, the function class of a
    spec (``"linear"``, ``{"name": "sparse_linear", "k": 2}``), else ``ValueError``
    naming ``name``."""
    if isinstance(value, (str, Mapping)):
        return checks.build(TASKS, value, name)
    if not (
        callable(getattr(value, "sample", None))
        and callable(getattr(value, "zero_predictor_error", None))
    ):
        raise ValueError(
            f"{name} must be a function class (with sample and zero_predictor_error, "
            f"e.g. DenseLinear()) or a spec {{'name': ..., **options}}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class DenseLinear:
    """f(x) = <w, x> with w ~ N(0, scale^2 I_d): all d coefficients non-zero.

    ``scale`` (default 1) sets the label scale, E[f(x)^2] = scale^2 d: in a mixture with
    a k-sparse class, ``scale = sqrt(k / d)`` gives both classes the same label
    variance, so that the size of the labels does not give the class away and the sparse
    prompts weigh as much as the dense ones in the squared-error loss.
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        checks.positive_float("scale", self.scale)

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, _, d = checks.prompt_tensors(xs)
        # times 1.0 is exact: the default draws are unchanged
        w = _randn(generator, batch, d, like=xs) * self.scale
        return TaskSample(ys=torch.einsum("bnd,bd->bn", xs, w), params={"w": w})

    def zero_predictor_error(self, d: int) -> float:
        return self.scale**2 * checks.positive_int("d", d)


@dataclass(frozen=True)
class SparseLinear:
    """f(x) = <w, x> where w has ``k`` non-zero N(0, 1) coordinates on a uniformly
    random support.

    During a curriculum only the first ``active_dims`` coordinates of x are non-zero;
    ``sample(..., active_dims=m)`` then draws the support among those m coordinates (all
    of them when k >= m), as Garg et al.'s ``valid_coords`` does, so that every prompt
    keeps min(k, m) active terms. ``active_dims`` may be a 0-dim device tensor (the
    training step's, read without a host sync); the random draws are the same with or
    without it.
    """

    k: int = 3
    takes_active_dims = True

    def __post_init__(self) -> None:
        checks.positive_int("k", self.k)

    def sample(
        self,
        xs: torch.Tensor,
        generator: torch.Generator,
        active_dims: torch.Tensor | int | None = None,
    ) -> TaskSample:
        batch, _, d = checks.prompt_tensors(xs)
        if self.k > d:
            raise ValueError(
                f"k must be at most d = {d} (k of d coordinates are non-zero), got k = "
                f"{self.k}"
            )
        # uniform on [0, 1): the support is the k smallest
        scores = _rand(generator, batch, d, like=xs)
        if active_dims is not None:
            scores = scores + 2.0 * (
                torch.arange(d, device=xs.device) >= active_dims
            ).to(scores.dtype)  # inactive last
        order = scores.argsort(dim=1)
        support = torch.zeros(batch, d, dtype=torch.bool, device=xs.device)
        support.scatter_(1, order[:, : self.k], True)
        w = _randn(generator, batch, d, like=xs) * support
        return TaskSample(
            ys=torch.einsum("bnd,bd->bn", xs, w), params={"w": w, "support": support}
        )

    def zero_predictor_error(self, d: int) -> float:
        """E[f(x)^2] = k, or d when only d < k coordinates are active (a curriculum's
        early prompts)."""
        checks.positive_int("d", d)
        return float(min(self.k, d))


@dataclass(frozen=True)
class NoisyLinear:
    """y = <w, x> + noise_std * eps with w ~ N(0, I_d) and eps ~ N(0, 1) independent per
    point.

    ``zero_predictor_error`` counts the signal only (d), as Garg et al. normalise:
    predicting 0 then scores 1 + noise_std^2 / d.
    """

    noise_std: float = 0.5

    def __post_init__(self) -> None:
        checks.nonnegative_float("noise_std", self.noise_std)

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, n_points, d = checks.prompt_tensors(xs)
        w = _randn(generator, batch, d, like=xs)
        noise = self.noise_std * _randn(generator, batch, n_points, like=xs)
        return TaskSample(ys=torch.einsum("bnd,bd->bn", xs, w) + noise, params={"w": w})

    def zero_predictor_error(self, d: int) -> float:
        return float(checks.positive_int("d", d))


POOL_DRAWS = ("pool", "gaussian")
MAX_POOL_SIZE = 2**24


@functools.lru_cache(maxsize=32)
def _cached_pool(
    pool_size: int, pool_seed: int, d: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The pool of :class:`FinitePoolLinear` on ``device`` in ``dtype``: drawn on the
    CPU in float64, then cast."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(pool_seed)
    pool = torch.randn(pool_size, d, generator=generator, dtype=torch.float64)
    return pool.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class FinitePoolLinear:
    """Noisy linear regression on a finite pool of tasks (Raventos et al.): y = <w, x> +
    noise_std * eps.

    The pool holds ``pool_size`` weight vectors w_1, ..., w_M drawn once from N(0, I_d)
    by a generator of their own, seeded with ``pool_seed`` (never the training stream),
    so that every run and every evaluation with the same spec rebuilds the same pool
    (:meth:`pool`). With ``draw = "pool"`` each prompt's w is one of them, uniformly;
    with ``draw = "gaussian"`` it is fresh from N(0, I_d), exactly as
    :class:`NoisyLinear` draws it (same random draws), which is how a model trained on
    the pool is tested on tasks it never saw. eps ~ N(0, 1) per point.

    Sampling stays on the device with no host sync (a CUDA graph can hold it): the pool
    is built once per ``(d, device, dtype)`` and cached, and each prompt's index is a
    random integer tensor drawn from ``generator``. ``params``: ``w: (batch, d)`` and,
    for pool draws, ``index: (batch,)``. ``zero_predictor_error`` counts the signal
    under the Gaussian, E|w|^2 = d, for every draw, so that errors of runs with
    different pools share one scale (the pool's own mean |w_m|^2 differs from d by O(d /
    sqrt(M))).
    """

    pool_size: int = 16
    pool_seed: int = 0
    noise_std: float = 0.5
    draw: str = "pool"

    def __post_init__(self) -> None:
        checks.positive_int("pool_size", self.pool_size)
        if self.pool_size > MAX_POOL_SIZE:
            raise ValueError(
                f"pool_size must be at most 2^24 = {MAX_POOL_SIZE} (the pool is held "
                f"in memory), got {self.pool_size}"
            )
        checks.nonnegative_int("pool_seed", self.pool_seed)
        checks.nonnegative_float("noise_std", self.noise_std)
        checks.choice("draw", self.draw, POOL_DRAWS)

    def pool(
        self,
        d: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """The pool ``(pool_size, d)``, the same for every call with the same spec and d
        (a copy: safe to modify)."""
        checks.positive_int("d", d)
        return _cached_pool(
            self.pool_size, self.pool_seed, d, torch.device(device), dtype
        ).clone()

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, n_points, d = checks.prompt_tensors(xs)
        checks.generator("generator", generator)
        params: dict[str, torch.Tensor] = {}
        if self.draw == "pool":
            pool = _cached_pool(self.pool_size, self.pool_seed, d, xs.device, xs.dtype)
            index = torch.randint(
                self.pool_size, (batch,), generator=generator, device=xs.device
            )
            w = pool[index]
            params["index"] = index
        else:
            w = _randn(generator, batch, d, like=xs)
        noise = self.noise_std * _randn(generator, batch, n_points, like=xs)
        return TaskSample(
            ys=torch.einsum("bnd,bd->bn", xs, w) + noise, params={"w": w, **params}
        )

    def zero_predictor_error(self, d: int) -> float:
        return float(checks.positive_int("d", d))


@dataclass(frozen=True)
class ReluNet:
    """Two-layer ReLU network f(x) = sqrt(2 / hidden) * sum_j a_j relu(<v_j, x>), all
    weights N(0, 1).

    The sqrt(2 / hidden) factor (as in Garg et al.) makes E[f(x)^2] = d for x ~ N(0,
    I_d).
    """

    hidden: int = 100

    def __post_init__(self) -> None:
        checks.positive_int("hidden", self.hidden)

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, _, d = checks.prompt_tensors(xs)
        first = _randn(generator, batch, d, self.hidden, like=xs)
        second = _randn(generator, batch, self.hidden, like=xs)
        hidden = torch.relu(xs @ first)
        ys = math.sqrt(2.0 / self.hidden) * torch.einsum("bnh,bh->bn", hidden, second)
        return TaskSample(ys=ys, params={"first_layer": first, "second_layer": second})

    def zero_predictor_error(self, d: int) -> float:
        return float(checks.positive_int("d", d))


def relu_net_moments(
    first_layer: torch.Tensor, second_layer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Gaussian moments of :class:`ReluNet` functions: ``(E[f(x)^2], E[f(x) x])``
    for x ~ N(0, I_d).

    ``first_layer: (batch, d, hidden)`` (columns v_j) and ``second_layer: (batch,
    hidden)`` (a_j) are a sample's ``params`` (f = sqrt(2 / hidden) sum_j a_j relu(<v_j,
    x>)). Returns ``second_moment: (batch,)`` and ``beta: (batch, d)``, in float64. With
    theta_jk the angle between v_j and v_k, the arc-cosine kernel gives E[relu(<v_j, x>)
    relu(<v_k, x>)] = |v_j| |v_k| (sin theta_jk + (pi - theta_jk) cos theta_jk) / (2
    pi), and E[relu(<v, x>) x] = v / 2. So beta = E[f(x) x] is the coefficient vector of
    the best linear predictor of f (no intercept), whose squared error is E[f^2] -
    |beta|^2.
    """
    if not isinstance(first_layer, torch.Tensor) or first_layer.ndim != 3:
        got = (
            tuple(first_layer.shape)
            if isinstance(first_layer, torch.Tensor)
            else type(first_layer).__name__
        )
        raise ValueError(
            f"first_layer must be a tensor of shape (batch, d, hidden), got {got}"
        )
    batch, _, hidden = first_layer.shape
    if not isinstance(second_layer, torch.Tensor) or tuple(second_layer.shape) != (
        batch,
        hidden,
    ):
        got = (
            tuple(second_layer.shape)
            if isinstance(second_layer, torch.Tensor)
            else type(second_layer).__name__
        )
        raise ValueError(
            "second_layer must be a tensor of shape (batch, hidden) = "
            f"{(batch, hidden)}, got {got}"
        )
    checks.finite_tensor("first_layer", first_layer)
    checks.finite_tensor("second_layer", second_layer)
    v = first_layer.to(torch.float64)
    a = second_layer.to(torch.float64)
    norms = v.norm(dim=1)  # (batch, hidden)
    gram = v.transpose(1, 2) @ v  # (batch, hidden, hidden): <v_j, v_k>
    outer = norms[:, :, None] * norms[:, None, :]
    cosine = torch.where(
        outer > 0, gram / outer.clamp_min(torch.finfo(torch.float64).tiny), 0.0
    ).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)
    kernel = outer * (torch.sin(angle) + (math.pi - angle) * cosine) / (2 * math.pi)
    second_moment = (2.0 / hidden) * torch.einsum("bj,bjk,bk->b", a, kernel, a)
    beta = math.sqrt(2.0 / hidden) * torch.einsum("bdj,bj->bd", v, a) / 2
    return second_moment, beta


@dataclass(frozen=True)
class Sinusoid:
    """f(x) = amplitude * sin(frequency * <v, x> + phase): a wave along a random
    direction.

    The book's parameterisation: the input projection v is uniform on the unit sphere
    (so <v, x> ~ N(0, 1) for isotropic x), the frequency is uniform on [freq_min,
    freq_max] and the phase uniform on [0, 2 pi). Averaged over the phase,
    E[f(x)^2] = amplitude^2 / 2 for any x.
    """

    freq_min: float = 0.5
    freq_max: float = 2.0
    amplitude: float = 1.0

    def __post_init__(self) -> None:
        checks.nonnegative_float("freq_min", self.freq_min)
        checks.nonnegative_float("freq_max", self.freq_max)
        checks.positive_float("amplitude", self.amplitude)
        if self.freq_max < self.freq_min:
            raise ValueError(
                f"freq_max must be >= freq_min = {self.freq_min}, got {self.freq_max}"
            )

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, _, d = checks.prompt_tensors(xs)
        direction = _randn(generator, batch, d, like=xs)
        direction = direction / direction.norm(dim=1, keepdim=True)
        frequency = self.freq_min + (self.freq_max - self.freq_min) * _rand(
            generator, batch, like=xs
        )
        phase = 2 * math.pi * _rand(generator, batch, like=xs)
        projection = torch.einsum("bnd,bd->bn", xs, direction)
        ys = self.amplitude * torch.sin(
            frequency[:, None] * projection + phase[:, None]
        )
        return TaskSample(
            ys=ys,
            params={"direction": direction, "frequency": frequency, "phase": phase},
        )

    def zero_predictor_error(self, d: int) -> float:
        checks.positive_int("d", d)
        return self.amplitude**2 / 2


@dataclass(frozen=True)
class Mixture:
    """Each prompt's function comes from one component class, chosen with probabilities
    ``weights``.

    Components may be given as specs (``{"name": "sparse_linear", "k": 2}``).
    ``params["component"]: (batch,)`` says which; the other entries are the components'
    params with the component index as prefix (``"1.support"``), filled for every prompt
    but meaningful only where ``component`` matches.

    ``per`` says how often the class is drawn: ``"prompt"`` (each prompt its own) or
    ``"batch"`` (one class for the whole batch, as Panwar et al.'s ``TwoTaskMixer``
    draws it, so that a step carries one class's full gradient). Both consume the
    generator alike but for the class draw itself, one uniform per prompt or one per
    batch.
    """

    components: tuple
    weights: tuple
    per: str = "prompt"

    def __post_init__(self) -> None:
        if not isinstance(self.components, (tuple, list)) or len(self.components) < 1:
            raise ValueError(
                "components must hold at least one function class (a tuple), got "
                f"{self.components!r}"
            )
        object.__setattr__(
            self,
            "components",
            tuple(
                _function_class(f"components[{i}]", component)
                for i, component in enumerate(self.components)
            ),
        )
        if not isinstance(self.weights, (tuple, list)):
            raise ValueError(
                "weights must be a tuple of numbers, one per component, got "
                f"{self.weights!r}"
            )
        object.__setattr__(self, "weights", tuple(self.weights))
        if len(self.weights) != len(self.components):
            raise ValueError(
                f"weights must have one entry per component ({len(self.components)}), "
                f"got {len(self.weights)}"
            )
        for i, weight in enumerate(self.weights):
            checks.nonnegative_float(f"weights[{i}]", weight)
        if abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(
                f"weights must sum to 1, got {list(self.weights)} (sum "
                f"{sum(self.weights)})"
            )
        checks.choice("per", self.per, MIXTURE_DRAWS)

    @property
    def takes_active_dims(self) -> bool:
        """Whether a component draws differently under a curriculum (see
        :meth:`SparseLinear.sample`)."""
        return any(getattr(c, "takes_active_dims", False) for c in self.components)

    def sample(
        self,
        xs: torch.Tensor,
        generator: torch.Generator,
        active_dims: torch.Tensor | int | None = None,
    ) -> TaskSample:
        batch, _, _ = checks.prompt_tensors(xs)
        # Inverse-CDF draw against Python-float thresholds: no host-to-device copy, so a
        # CUDA graph can hold it.
        n_draws = batch if self.per == "prompt" else 1
        uniform = torch.rand(
            n_draws, generator=generator, device=xs.device, dtype=torch.float64
        )
        component = torch.zeros(n_draws, dtype=torch.long, device=xs.device)
        for threshold in itertools.accumulate(self.weights[:-1]):
            component += uniform >= threshold
        if self.per == "batch":
            component = component.expand(batch).clone()
        ys = torch.zeros(xs.shape[:2], device=xs.device, dtype=xs.dtype)
        params: dict[str, torch.Tensor] = {"component": component}
        for i, function_class in enumerate(self.components):
            extra = (
                {"active_dims": active_dims}
                if getattr(function_class, "takes_active_dims", False)
                else {}
            )
            drawn = function_class.sample(xs, generator, **extra)
            ys = torch.where((component == i)[:, None], drawn.ys, ys)
            params.update({f"{i}.{key}": value for key, value in drawn.params.items()})
        return TaskSample(ys=ys, params=params)

    def zero_predictor_error(self, d: int) -> float:
        return sum(
            w * c.zero_predictor_error(d) for w, c in zip(self.weights, self.components)
        )


# How often a Mixture draws its class: once per prompt or once per batch.
MIXTURE_DRAWS = ("prompt", "batch")


@dataclass(frozen=True)
class ConvexCombination:
    """f = alpha * f1 + (1 - alpha) * f2 with f1, f2 drawn independently from ``first``
    and ``second``.

    ``alpha = 1`` gives ``first``, ``alpha = 0`` gives ``second`` (Yadlowsky et al.'s
    interpolation between two pretraining classes). ``first`` and ``second`` may be
    given as specs.
    """

    first: object
    second: object
    alpha: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "first", _function_class("first", self.first))
        object.__setattr__(self, "second", _function_class("second", self.second))
        checks.unit_interval("alpha", self.alpha)

    @property
    def takes_active_dims(self) -> bool:
        """Whether a part draws differently under a curriculum (see
        :meth:`SparseLinear.sample`)."""
        return any(
            getattr(c, "takes_active_dims", False) for c in (self.first, self.second)
        )

    def sample(
        self,
        xs: torch.Tensor,
        generator: torch.Generator,
        active_dims: torch.Tensor | int | None = None,
    ) -> TaskSample:
        first, second = (
            part.sample(
                xs,
                generator,
                **(
                    {"active_dims": active_dims}  # type: ignore[attr-defined]
                    if getattr(part, "takes_active_dims", False)
                    else {}
                ),
            )
            for part in (self.first, self.second)
        )
        params = {f"first.{k}": v for k, v in first.params.items()}
        params |= {f"second.{k}": v for k, v in second.params.items()}
        return TaskSample(
            ys=self.alpha * first.ys + (1 - self.alpha) * second.ys, params=params
        )

    def zero_predictor_error(self, d: int) -> float:
        # The two functions are independent and zero-mean, so the cross term vanishes.
        return (
            (self.alpha**2) * self.first.zero_predictor_error(d)  # type: ignore[attr-defined]
            + (1 - self.alpha) ** 2 * self.second.zero_predictor_error(d)  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class LinearClassification:
    """Binary labels y = sign(<w, x>) in {-1, +1} with w ~ N(0, I_d) (sign(0) counts as
    +1).

    Chapter 3's in-context classification family, trained with the same squared-error
    loop as the regression tasks; a prediction is read as the class sign(prediction).
    ``zero_predictor_error`` is E[y^2] = 1.
    """

    def sample(self, xs: torch.Tensor, generator: torch.Generator) -> TaskSample:
        batch, _, d = checks.prompt_tensors(xs)
        w = _randn(generator, batch, d, like=xs)
        scores = torch.einsum("bnd,bd->bn", xs, w)
        return TaskSample(
            ys=torch.where(scores >= 0, 1.0, -1.0).to(xs.dtype), params={"w": w}
        )

    def zero_predictor_error(self, d: int) -> float:
        checks.positive_int("d", d)
        return 1.0


FunctionClass = (
    DenseLinear
    | SparseLinear
    | NoisyLinear
    | FinitePoolLinear
    | ReluNet
    | Sinusoid
    | Mixture
    | ConvexCombination
    | LinearClassification
)

# The names configs use (``[task] name = ...``); each class's fields are its options.
TASKS: dict[str, type] = {
    "linear": DenseLinear,
    "sparse_linear": SparseLinear,
    "noisy_linear": NoisyLinear,
    "finite_pool_linear": FinitePoolLinear,
    "relu_net": ReluNet,
    "sinusoid": Sinusoid,
    "mixture": Mixture,
    "convex": ConvexCombination,
    "linear_classification": LinearClassification,
}


def dense_label_scale(spec: Mapping) -> float:
    """The label scale of the dense class in a task spec (``{"name": "linear", "scale":
    s}``, alone or as a mixture component): the scale a run trained on that task saw its
    dense labels at, 1 if it set none or has no dense class."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"spec must be a task table with a 'name', got {spec!r}")
    specs = spec.get("components", []) if spec["name"] == "mixture" else [spec]
    return next(
        (float(c.get("scale", 1.0)) for c in specs if c.get("name") == "linear"), 1.0
    )


def check_fits(task: object, n_dims: int) -> None:
    """Refuse a function class whose options do not fit prompts of ``n_dims``
    coordinates (a sparse class with k > d, alone or as a part of a mixture or a convex
    combination), as its ``sample`` would, without sampling."""
    if isinstance(task, SparseLinear) and task.k > n_dims:
        raise ValueError(
            f"k must be at most d = {n_dims} (k of d coordinates are non-zero), got k "
            f"= {task.k}"
        )
    parts = (
        task.components
        if isinstance(task, Mixture)
        else ((task.first, task.second) if isinstance(task, ConvexCombination) else ())
    )
    for part in parts:
        check_fits(part, n_dims)


def make_task(name: str, **options) -> FunctionClass:
    """Build a function class from its name and options, as configs spell it
    (:func:`icl_lib.checks.build`).

    ``make_task("mixture", components=[{"name": "linear"}, {"name": "sparse_linear",
    "k": 2}], weights=[0.5, 0.5])``.
    """
    return checks.build(TASKS, {"name": name, **options}, "task")
