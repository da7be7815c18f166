"""The book's house style: one look for every figure, one colour per estimator across chapters."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt

from icl_lib.evaluation import ErrorCurve

HOUSE_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
}

# The same estimator has the same colour in every chapter (colour-blind-safe Okabe-Ito palette).
ESTIMATOR_COLORS = {
    "transformer": "#000000",
    "least squares": "#0072B2",
    "ridge": "#56B4E9",
    "Bayes": "#009E73",
    "lasso": "#D55E00",
    "oracle": "#CC79A7",
    "k-NN": "#E69F00",
    "averaging": "#F0E442",
    "one-step GD": "#999999",
}


def use_house_style() -> None:
    """Apply the house style to matplotlib's rcParams (call once at the top of a chapter)."""
    plt.rcParams.update(HOUSE_STYLE)


def estimator_color(name: str) -> str | None:
    """The house colour of an estimator, matched on the start of its name (``"lasso (alpha=0.1)"``)."""
    for key, color in ESTIMATOR_COLORS.items():
        if name.lower().startswith(key.lower()):
            return color
    return None


def plot_error_curves(
    curves: Mapping[str, ErrorCurve],
    ax: plt.Axes | None = None,
    d: int | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.25),
    zero_predictor: float | None = 1.0,
) -> plt.Axes:
    """Normalised error vs number of in-context examples, one line and bootstrap band per curve.

    ``d`` draws the interpolation threshold k = d. The dotted line is the zero predictor's normalised
    error, ``zero_predictor`` (1 for noiseless tasks, 1 + noise_std^2 / d for noisy linear; None: no line).
    """
    if ax is None:
        _, ax = plt.subplots()
    for name, curve in curves.items():
        color = estimator_color(name)
        (line,) = ax.plot(curve.k, curve.mean, label=name, color=color)
        ax.fill_between(curve.k, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
    if zero_predictor is not None:
        ax.axhline(zero_predictor, color="grey", linestyle=":", linewidth=1, label="zero predictor")
    if d is not None:
        ax.axvline(d, color="grey", linestyle="--", linewidth=1)
        ax.annotate("k = d", (d, 1.0), xytext=(4, 4), textcoords="offset points", color="grey", fontsize=9)
    ax.set_xlabel("number of in-context examples k")
    ax.set_ylabel("normalised squared error")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax

