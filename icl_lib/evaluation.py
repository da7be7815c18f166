"""Error curves: squared error against the number of in-context examples, with bootstrap
bands.

Errors are normalised as in Garg et al.: divided by the zero predictor's error E[f(x)^2]
of the function class (d for dense linear, k for k-sparse), so 1.0 means "no better than
predicting 0".

:func:`error_curves` is the one way the book evaluates predictors: trained models
(through :func:`as_predictor`) and baselines on the same prompts;
:func:`icl_lib.evaluate.evaluate_model` draws the prompts and calls it. :data:`STYLES`
is the book's one table of how each estimator is named and drawn
(:mod:`icl_lib.plotting`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch
from torch import nn

from icl_lib import checks

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Style:
    """How an estimator is named and drawn: legend ``label``, ``color`` (None: the axes'
    colour cycle), matplotlib ``linestyle`` and ``marker``."""

    label: str
    color: str | None
    linestyle: str = "-"
    marker: str | None = None


# Every estimator and trained model the book plots, by id: the names of
# icl_lib.evaluate.ESTIMATORS; "bayes", the posterior mean of the prior the prompts (or
# a model's pretraining prompts) come from, and "bayes_oracle", the one told the task's
# parameter; "gd_one_step"; and chapter 5's trained models by what they were trained on.
# One look in every chapter, in colour-blind-safe Okabe-Ito colours; a dashed or dotted
# line, or a marker, tells two of one colour apart.
STYLES: dict[str, Style] = {
    "transformer": Style("transformer", "#000000"),
    "least_squares": Style("least squares", "#0072B2"),
    "ridge": Style("ridge", "#56B4E9"),
    "bayes": Style("Bayes", "#009E73", "--"),
    "bayes_oracle": Style("Bayes, told the task", "#D55E00", ":"),
    "lasso": Style("lasso", "#D55E00"),
    "oracle": Style("oracle least squares", "#CC79A7"),
    "knn": Style("k-NN (3)", "#E69F00"),
    "averaging": Style("averaging", "#F0E442"),
    "gd_one_step": Style("one-step GD", "#999999"),
    "relu_net_gd": Style("2-layer ReLU net, GD", "#CC79A7", "-."),
    "dmmse": Style("dMMSE", "#009E73", "-."),
    "dense_trained": Style("dense-trained", "#56B4E9", marker="o"),
    "sparse_trained": Style("sparse-trained", "#CC79A7", marker="o"),
    "mixture_trained": Style("mixture-trained", "#000000", marker="o"),
    "linear_trained": Style("linear-trained", "#56B4E9", marker="s"),
    "sinusoid_trained": Style("sinusoid-trained", "#CC79A7", marker="s"),
}


def style(name: str) -> Style:
    """The :data:`STYLES` entry of an estimator id, or of the label it is drawn with
    (``"least squares"``)."""
    if name in STYLES:
        return STYLES[name]
    for entry in STYLES.values():
        if entry.label == name:
            return entry
    raise ValueError(
        f"estimator must be an id of the style table {list(STYLES)} or one of its "
        f"labels, got {name!r}"
    )


def label(name: str, overrides: Mapping[str, str] | None = None) -> str:
    """The label an estimator is drawn and printed with: ``overrides[name]`` where a
    chapter names it more precisely (``{"lasso": "lasso (α = 0.01)"}``), else its
    :func:`style` label."""
    if overrides is not None and name in overrides:
        return overrides[name]
    return style(name).label


@dataclass(frozen=True)
class ErrorCurve:
    """Mean normalised squared error at each number of examples k, with a bootstrap
    confidence band.

    ``mean``, ``low``, ``high``: arrays of shape ``(n_points,)``; entry k is the error
    of the prediction made from k examples. ``n_prompts`` is how many prompts the mean
    is over.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_prompts: int

    @property
    def k(self) -> np.ndarray:
        """The numbers of in-context examples, 0 .. n_points - 1."""
        return np.arange(len(self.mean))


def squared_errors(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per-prompt, per-position squared error ``(batch, n_points)``."""
    if not isinstance(ys, torch.Tensor) or ys.ndim != 2:
        got = tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys).__name__
        raise ValueError(f"ys must be a tensor of shape (batch, n_points), got {got}")
    if not isinstance(preds, torch.Tensor) or preds.shape != ys.shape:
        got = (
            tuple(preds.shape)
            if isinstance(preds, torch.Tensor)
            else type(preds).__name__
        )
        raise ValueError(
            f"preds must be a tensor of shape (batch, n_points) = {tuple(ys.shape)}, "
            f"got {got}"
        )
    return (preds.to(torch.float64) - ys.to(torch.float64)) ** 2


def bootstrap_band(
    errors: torch.Tensor, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band of the mean over prompts: resample the rows of
    ``errors: (batch, n)``."""
    n_bootstrap = checks.positive_int("n_bootstrap", n_bootstrap)
    level = checks.unit_interval("level", level)
    means = _resampled_means(errors, n_bootstrap, seed)  # (n_bootstrap, n)
    tail = (1 - level) / 2
    low, high = torch.quantile(
        means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0
    )
    return low.numpy(), high.numpy()


def bootstrap_mean(
    values: torch.Tensor, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values: (n,)``, one number per prompt (an error, or the paired
    difference of two models' errors on the same prompts), and its percentile bootstrap
    interval: ``(mean, low, high)``, :func:`bootstrap_band` of one column."""
    if not (isinstance(values, torch.Tensor) and values.ndim == 1 and len(values) > 0):
        got = (
            tuple(values.shape)
            if isinstance(values, torch.Tensor)
            else type(values).__name__
        )
        raise ValueError(f"values must be a tensor of shape (n,), n >= 1, got {got}")
    low, high = bootstrap_band(values[:, None], n_bootstrap, level, seed)
    return float(values.mean()), float(low[0]), float(high[0])


def bootstrap_ratio(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The ratio of two means over the same prompts, ``mean(numerator) /
    mean(denominator)`` (both ``(batch,)``), with its percentile bootstrap interval:
    each resample draws prompts once for both, so their correlation counts.

    For example the share of a specialist's gain over least squares that a model keeps:
    numerator LS - model, denominator LS - specialist, per prompt. Returns ``(ratio,
    low, high)``.
    """
    n_bootstrap = checks.positive_int("n_bootstrap", n_bootstrap)
    level = checks.unit_interval("level", level)
    if not (
        isinstance(numerator, torch.Tensor)
        and isinstance(denominator, torch.Tensor)
        and numerator.ndim == 1
        and numerator.shape == denominator.shape
        and len(numerator) > 0
    ):
        shapes = [
            tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            for v in (numerator, denominator)
        ]
        raise ValueError(
            "numerator and denominator must be tensors of one shape (batch,), batch >= "
            f"1, got {shapes}"
        )
    pair = torch.stack((numerator, denominator), dim=1)
    means = _resampled_means(pair, n_bootstrap, seed)  # (n_bootstrap, 2)
    ratios = means[:, 0] / means[:, 1]
    tail = (1 - level) / 2
    low, high = torch.quantile(
        ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64)
    )
    whole = pair.to(torch.float64).mean(0)
    return float(whole[0] / whole[1]), float(low), float(high)


def _resampled_means(values: torch.Tensor, n_bootstrap: int, seed: int) -> torch.Tensor:
    """Means over the rows of ``values: (batch, n)`` in ``n_bootstrap`` resamples of the
    rows: ``(n_bootstrap, n)``."""
    values = values.detach().to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed)
    batch = values.shape[0]
    rows = torch.randint(batch, (n_bootstrap, batch), generator=generator)
    # How often each prompt is drawn in each resample: (n_bootstrap, batch), so memory
    # does not grow with n.
    counts = torch.zeros(n_bootstrap, batch, dtype=torch.float64).scatter_add_(
        1, rows, torch.ones_like(rows, dtype=torch.float64)
    )
    return counts @ values / batch


INTERVAL_METHODS = ("normal", "t")


def _sample(
    name: str, values: torch.Tensor | np.ndarray, ddof: int = 0
) -> torch.Tensor | np.ndarray:
    """``values`` as a float64 sample of shape ``(n,)``, n > ``ddof``, in its own
    library (a CPU tensor or an array), so that the chapters' numbers stay those of
    their own torch or numpy code; else a ``ValueError``."""
    if isinstance(values, torch.Tensor):
        sample = values.detach().to("cpu", torch.float64)
    elif isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        sample = values.astype(np.float64, copy=False)
    else:
        raise ValueError(
            f"{name} must be a 1-d torch tensor or numpy array of numbers, got "
            f"{type(values).__name__}"
            + (f" of dtype {values.dtype}" if isinstance(values, np.ndarray) else "")
        )
    if sample.ndim != 1 or len(sample) <= ddof:
        raise ValueError(
            f"{name} must have shape (n,) with n >= {ddof + 1} (ddof = {ddof}), got "
            f"{tuple(sample.shape)}"
        )
    bad = int(
        (~torch.isfinite(sample)).sum()
        if isinstance(sample, torch.Tensor)
        else (~np.isfinite(sample)).sum()
    )
    if bad:
        raise ValueError(
            f"{name} must hold finite numbers, got {bad} nan or inf entries"
        )
    return sample


def _paired_samples(
    preds: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]:
    preds, truth = _sample("preds", preds), _sample("truth", truth)
    _check_pair("preds and truth", preds, truth, "(batch,)")
    return preds, truth


def _check_pair(names: str, a: object, b: object, shape: str) -> None:
    """Raise a ``ValueError`` naming ``names`` unless ``a`` and ``b`` are two torch
    tensors or two numpy arrays of one shape."""
    same_kind = any(
        isinstance(a, kind) and isinstance(b, kind)
        for kind in (torch.Tensor, np.ndarray)
    )
    if not same_kind or a.shape != b.shape:
        shapes = [
            tuple(v.shape)
            if isinstance(v, (torch.Tensor, np.ndarray))
            else type(v).__name__
            for v in (a, b)
        ]
        raise ValueError(
            f"{names} must be two torch tensors or two numpy arrays of one shape "
            f"{shape}, got {type(a).__name__} {shapes[0]} and {type(b).__name__} "
            f"{shapes[1]}"
        )


def regression_slope(
    preds: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray
) -> float:
    """The slope of the regression of the predictions on the truth through 0, E[yhat
    y] / E[y^2], over ``preds, truth: (batch,)`` (float64): 1 for right answers."""
    preds, truth = _paired_samples(preds, truth)
    return float((preds * truth).mean() / (truth * truth).mean())


def normalised_error(
    preds: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray
) -> float:
    """E[(yhat - y)^2] / E[y^2] over ``preds, truth: (batch,)`` (float64): 1 for the
    zero predictor."""
    preds, truth = _paired_samples(preds, truth)
    return float(((preds - truth) ** 2).mean() / (truth**2).mean())


def standard_error(values: torch.Tensor | np.ndarray, ddof: int = 1) -> float:
    """The standard error of the mean of ``values: (n,)``, ``std(values, ddof) /
    sqrt(n)`` (a float).

    ``ddof=1`` (the default, torch's ``.std()`` and ``scipy.stats.sem``) divides the
    squared deviations by n - 1; ``ddof=0`` (numpy's ``.std()``) by n. Computed in
    float64 by the input's own library (torch or numpy).
    """
    ddof = checks.nonnegative_int("ddof", ddof)
    sample = _sample("values", values, ddof)
    return float(_std(sample, ddof) / math.sqrt(len(sample)))


def mean_interval(
    values: torch.Tensor | np.ndarray,
    level: float = 0.95,
    method: str = "normal",
    ddof: int = 1,
) -> tuple[float, float, float]:
    """The mean of ``values: (n,)`` and its confidence interval ``(mean, low, high)``,
    floats: ``mean -+ q * std(values, ddof) / sqrt(n)``.

    ``method="normal"``: q is the normal quantile of ``(1 + level) / 2`` (1.96 at 0.95);
    ``"t"``: Student's t quantile with n - 1 degrees of freedom (for few values, as over
    seeds; needs n >= 2). ``level`` in (0, 1).
    """
    method = checks.choice("method", method, INTERVAL_METHODS)
    level = _open_unit_interval("level", level)
    ddof = checks.nonnegative_int("ddof", ddof)
    sample = _sample("values", values, max(ddof, 1 if method == "t" else 0))
    n = len(sample)
    quantile = (
        normal_quantile((1 + level) / 2)
        if method == "normal"
        else t_quantile((1 + level) / 2, n - 1)
    )
    mean = float(sample.mean())
    half = quantile * float(_std(sample, ddof)) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_interval(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    level: float = 0.95,
    method: str = "normal",
    ddof: int = 1,
) -> tuple[float, float, float]:
    """The mean difference ``a - b`` of paired values (per prompt, task or seed; ``a, b:
    (n,)``, both tensors or both arrays) and its interval ``(mean, low, high)``:
    :func:`mean_interval` of the differences, so that what the pairs share cancels."""
    _check_pair("a and b", a, b, "(n,)")
    return mean_interval(a - b, level=level, method=method, ddof=ddof)


def _std(sample: torch.Tensor | np.ndarray, ddof: int) -> float:
    if isinstance(sample, torch.Tensor):
        return sample.std(correction=ddof).item()
    return sample.std(ddof=ddof)


def _open_unit_interval(name: str, value: object) -> float:
    """Return ``float(value)`` if it lies in (0, 1), else raise ``ValueError`` naming
    ``name``."""
    try:
        number = checks.unit_interval(name, value)
    except ValueError:
        number = 0.0
    if number in (0, 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return number


def normal_quantile(p: float) -> float:
    """The standard normal quantile at probability ``p`` in (0, 1)
    (``scipy.stats.norm.ppf``)."""
    return statistics.NormalDist().inv_cdf(_open_unit_interval("p", p))


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile at probability ``p`` in (0, 1) with ``df >= 1`` degrees of
    freedom (``scipy.stats.t``)."""
    p = _open_unit_interval("p", p)
    df = checks.positive_int("df", df)
    return float(scipy.stats.t.ppf(p, df))


def error_curve(
    preds: torch.Tensor,
    ys: torch.Tensor,
    normalizer: float,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ErrorCurve:
    """Normalised error curve of ``preds`` against ``ys`` (both ``(batch, n_points)``).

    ``normalizer`` is the function class's ``zero_predictor_error(d)``.
    """
    normalizer = checks.positive_float("normalizer", normalizer)
    errors = squared_errors(preds, ys) / normalizer
    if errors.shape[0] == 0:
        raise ValueError(
            "preds and ys must hold at least one prompt (batch >= 1), got an empty "
            "batch"
        )
    if errors.shape[1] == 0:
        raise ValueError(
            "preds and ys must hold at least one point per prompt (n_points >= 1), got "
            f"shape {tuple(errors.shape)}"
        )
    low, high = bootstrap_band(errors, n_bootstrap=n_bootstrap, level=level, seed=seed)
    mean = errors.mean(dim=0).cpu().numpy()
    return ErrorCurve(mean=mean, low=low, high=high, n_prompts=errors.shape[0])


def as_predictor(model: nn.Module, label_scale: float = 1.0) -> Predictor:
    """A trained model as a predictor ``(xs, ys) -> preds: (batch, n_points)`` in
    float64, run in eval mode without gradients on the model's device (float32 inputs).

    ``label_scale``: the model reads the labels times this scale (the scale of its
    training labels) and its prediction is divided by it, so that it is compared with
    other predictors on the same prompts.
    """
    device = next(model.parameters()).device

    def predict(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                preds = model(
                    xs.to(device, torch.float32),
                    (ys * label_scale).to(device, torch.float32),
                )
        finally:
            model.train(was_training)
        return preds.double() / label_scale

    return predict


def predictions(
    predict: Predictor,
    xs: torch.Tensor,
    ys: torch.Tensor,
    query_xs: torch.Tensor | None = None,
    query_ys: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """``(batch, n_points)``: entry k predicts the query at k from the examples ``xs[:,
    :k]``, ``ys[:, :k]``.

    The query at k is ``xs[:, k]`` (as in training) unless ``query_xs, query_ys: (batch,
    n_points, d), (batch, n_points)`` are given (a query shift). ``chunk``: at most that
    many prompts per call of ``predict`` (None: all).
    """

    def in_chunks(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        size = xs.shape[0] if chunk is None else chunk
        return torch.cat(
            [
                predict(xs[i : i + size], ys[i : i + size])
                for i in range(0, xs.shape[0], size)
            ]
        )

    if query_xs is None:
        return in_chunks(xs, ys)
    columns = []
    # the first k examples, then the k-th query in the query's position
    for k in range(xs.shape[1]):
        prompt_xs = torch.cat((xs[:, :k], query_xs[:, k : k + 1]), dim=1)
        prompt_ys = torch.cat((ys[:, :k], query_ys[:, k : k + 1]), dim=1)
        columns.append(in_chunks(prompt_xs, prompt_ys)[:, k])
    return torch.stack(columns, dim=1)


def error_curves(
    predictors: Mapping[str, Predictor | nn.Module],
    xs: torch.Tensor,
    ys: torch.Tensor,
    normalizer: float,
    *,
    queries: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int | None = None,
    **bootstrap,
) -> dict[str, ErrorCurve]:
    """Error curves of several predictors on the same prompts ``xs: (batch, n_points,
    d)``, ``ys: (batch, n_points)``, by name (the order is kept). A predictor is a
    function ``(xs, ys) -> preds`` or a trained model (:func:`as_predictor`).
    ``queries``: ``(query_xs, query_ys)`` of a query shift, against whose labels the
    errors are measured (:func:`predictions`); ``chunk``: prompts per call;
    ``bootstrap``: options of :func:`error_curve`.
    """
    checks.prompt_tensors(xs, ys)
    query_xs, query_ys = queries if queries is not None else (None, None)
    targets = ys if query_ys is None else query_ys
    curves = {}
    for name, predict in predictors.items():
        predict = as_predictor(predict) if isinstance(predict, nn.Module) else predict
        preds = predictions(predict, xs, ys, query_xs, query_ys, chunk)
        curves[name] = error_curve(preds, targets, normalizer, **bootstrap)
    return curves


def band_contains(
    curve: ErrorCurve, values: np.ndarray | float, k: slice | np.ndarray
) -> bool:
    """Whether ``values`` (for example a closed form) lie inside the curve's band at the
    given k."""
    values = np.broadcast_to(np.asarray(values, dtype=float), curve.mean[k].shape)
    return bool(np.all((curve.low[k] <= values) & (values <= curve.high[k])))
