"""The book's house style: one look for every figure, one colour per estimator across chapters."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
from matplotlib.collections import Collection
from matplotlib.lines import Line2D

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



def _in_data_coordinates(transform, ax: plt.Axes) -> bool:
    # axhline/axvline/axvspan blend data coordinates on one axis with axes coordinates on the other.
    return transform.contains_branch_seperately(ax.transData) == (True, True)


def _is_data_artist(artist, ax: plt.Axes) -> bool:
    """True for an artist with something to draw in data coordinates (reference lines and spans do not count)."""
    if isinstance(artist, Collection):  # scatter: markers placed at data offsets; fill_between, hlines: data paths
        placed = len(artist.get_offsets()) > 0 and _in_data_coordinates(artist.get_offset_transform(), ax)
        drawn = (any(len(path.vertices) > 0 for path in artist.get_paths())
                 and _in_data_coordinates(artist.get_transform(), ax))
        return placed or drawn
    if not _in_data_coordinates(artist.get_transform(), ax):
        return False
    if isinstance(artist, Line2D):
        return len(artist.get_xdata()) > 0
    return True  # patches (bars) and images


def plotted_axes_problems(fig: plt.Figure) -> list[str]:
    """What is blank in ``fig``: one line per axes that shows no data beyond reference lines.

    An axes counts as plotted when it holds a line with points, a non-empty collection (scatter, fill_between,
    error bars), a bar or an image in data coordinates; ``axhline``/``axvline``/``axvspan`` do not count. An axes
    with its axis turned off (a schematic or a table) counts when it holds any artist or text.
    """
    problems = []
    for index, ax in enumerate(fig.axes):
        name = f"axes {index}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        if not ax.axison:
            if not (ax.lines or ax.patches or ax.collections or ax.images or ax.texts or ax.tables):
                problems.append(f"{name} is turned off and empty")
            continue
        artists = [*ax.lines, *ax.collections, *ax.patches, *ax.images]
        if not any(_is_data_artist(artist, ax) for artist in artists):
            problems.append(f"{name} shows no data (reference lines do not count)")
    if not fig.axes:
        problems.append("the figure has no axes")
    return problems


def show(fig: plt.Figure | None = None) -> None:
    """``plt.show()`` after checking that every axes of ``fig`` (default: the current figure) shows data.

    Raises ``AssertionError`` naming the blank axes, so that a chapter cell that plots nothing fails the build and
    nbval instead of printing an empty frame.
    """
    fig = plt.gcf() if fig is None else fig
    problems = plotted_axes_problems(fig)
    assert not problems, f"blank figure: {'; '.join(problems)}"
    plt.show()
