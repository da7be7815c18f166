"""Error curves: squared error against the number of in-context examples, with bootstrap bands.

Errors are normalised as in Garg et al.: divided by the zero predictor's error E[f(x)^2] of the function
class (d for dense linear, k for k-sparse), so 1.0 means "no better than predicting 0".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from icl_lib import checks

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ErrorCurve:
    """Mean normalised squared error at each number of examples k, with a bootstrap confidence band.

    ``mean``, ``low``, ``high``: arrays of shape ``(n_points,)``; entry k is the error of the prediction
    made from k examples. ``n_prompts`` is how many prompts the mean is over.
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
        got = tuple(preds.shape) if isinstance(preds, torch.Tensor) else type(preds).__name__
        raise ValueError(f"preds must be a tensor of shape (batch, n_points) = {tuple(ys.shape)}, got {got}")
    return (preds.to(torch.float64) - ys.to(torch.float64)) ** 2


def bootstrap_band(
    errors: torch.Tensor, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band of the mean over prompts: resample the rows of ``errors: (batch, n)``."""
    n_bootstrap = checks.positive_int("n_bootstrap", n_bootstrap)
    level = checks.unit_interval("level", level)
    errors = errors.detach().to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed)
    batch = errors.shape[0]
    rows = torch.randint(batch, (n_bootstrap, batch), generator=generator)
    # How often each prompt is drawn in each resample: (n_bootstrap, batch), so memory does not grow with n.
    counts = torch.zeros(n_bootstrap, batch, dtype=torch.float64).scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float64))
    means = counts @ errors / batch  # (n_bootstrap, n)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return low.numpy(), high.numpy()


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
        raise ValueError("preds and ys must hold at least one prompt (batch >= 1), got an empty batch")
    low, high = bootstrap_band(errors, n_bootstrap=n_bootstrap, level=level, seed=seed)
    mean = errors.mean(dim=0).cpu().numpy()
    return ErrorCurve(mean=mean, low=low, high=high, n_prompts=errors.shape[0])


def error_curves(
    predictors: Mapping[str, Predictor], xs: torch.Tensor, ys: torch.Tensor, normalizer: float, **bootstrap
) -> dict[str, ErrorCurve]:
    """Error curves of several predictors on the same prompts, by name (the order is kept)."""
    checks.prompt_tensors(xs, ys)
    return {name: error_curve(predict(xs, ys), ys, normalizer, **bootstrap) for name, predict in predictors.items()}


def band_contains(curve: ErrorCurve, values: np.ndarray | float, k: slice | np.ndarray) -> bool:
    """Whether ``values`` (for example a closed form) lie inside the curve's band at the given k."""
    values = np.broadcast_to(np.asarray(values, dtype=float), curve.mean[k].shape)
    return bool(np.all((curve.low[k] <= values) & (values <= curve.high[k])))
