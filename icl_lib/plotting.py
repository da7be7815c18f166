"""The book's house style: one look for every figure, and one look per estimator across
chapters.

Estimators are drawn from the style table :data:`icl_lib.evaluation.STYLES` (label,
colour, line style and marker by estimator id); :func:`plot_error_curves` takes curves
keyed by those ids, with per-call overrides. Every k axis has integer ticks
(:func:`k_axis`), and distribution shifts get readable titles (:func:`shift_title`).

Every figure carries alt text. In a chapter (an IPython kernel), :func:`use_house_style`
makes each figure's PNG carry a description in its ``Description`` text chunk: the text
given by :func:`set_alt` (or ``show(fig, alt=...)``) if any, else
:func:`figure_description`, which is written from the figure's titles, axis labels and
legends. The book's Sphinx extension ``book/_ext/figure_alt.py`` turns that chunk into
the ``alt`` attribute of the image in the HTML book; alt text set in a cell's metadata
(MyST-NB's ``mystnb: {image: {alt: ...}}``) takes precedence.
"""

from __future__ import annotations

import base64
import io
import re
import weakref
from collections.abc import Container, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import Collection, PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from icl_lib import fits, samplers
from icl_lib.evaluation import ErrorCurve, Style, label, style

HOUSE_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
}

# Readable titles of icl_lib.shifts' shifts, and the symbols of their options
# (shift_title).
SHIFT_TITLES = {
    "skewed_covariance": "skewed covariance",
    "noisy_labels": "noisy labels",
    "opposite_orthant": "opposite orthant",
    "orthogonal_query": "orthogonal query",
    "half_subspace": "half subspace",
    "scaled_inputs": "scaled inputs",
    "scaled_outputs": "scaled outputs",
}
OPTION_SYMBOLS = {"noise_std": "σ", "scale": "c"}
K_LABEL = "number of in-context examples k"


# the PNG text chunk that carries a figure's alt text (book/_ext/figure_alt.py reads it)
ALT_TEXT_KEY = "Description"
_ALT_TEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def use_house_style() -> None:
    """Apply the house style to matplotlib's rcParams (call once at the top of a
    chapter); in an IPython kernel, also make every figure's PNG carry its alt text
    (:func:`figure_png`)."""
    plt.rcParams.update(HOUSE_STYLE)
    _register_png_formatter()


def _register_png_formatter() -> bool:
    """Display figures through :func:`figure_png` in the running IPython shell; False
    where there is none."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    # The inline backend registers its own PNG formatter when pyplot loads it, at the
    # first figure: load it now, and register ours again before every cell
    # (``%matplotlib inline`` or an InlineBackend setting registers it anew).
    load_backend = getattr(plt, "_get_backend_mod", None)
    if load_backend is not None:
        load_backend()
    shell.display_formatter.formatters["image/png"].for_type(Figure, _png_for_display)
    if not getattr(shell, "_icl_lib_alt_text", False):
        shell.events.register(
            "pre_run_cell",
            lambda *args: shell.display_formatter.formatters["image/png"].for_type(
                Figure, _png_for_display
            ),
        )
        shell._icl_lib_alt_text = True
    return True


def _png_for_display(fig: Figure) -> str | None:
    if not fig.axes and not fig.lines:  # as IPython does: an empty figure shows nothing
        return None
    return base64.b64encode(figure_png(fig)).decode("ascii")


def set_alt(fig: Figure, text: str) -> Figure:
    """Give ``fig`` the alt text ``text`` (what the figure shows, in a sentence or two);
    return ``fig``."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"alt must be a non-empty string saying what the figure shows, got {text!r}"
        )
    _ALT_TEXT[fig] = " ".join(text.split())
    return fig


def _plain(text: str) -> str:
    """A label without mathtext markup: ``"$f(x_0 + t\\,e_1)$"`` -> ``"f(x_0 + t
    e_1)"``."""
    text = re.sub(r"\\[,;:! ]", " ", text.replace("$", ""))
    text = re.sub(
        r"\\(?:mathrm|mathbf|mathit|text|operatorname)\{([^}]*)\}", r"\1", text
    )
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text).replace("{", "").replace("}", "")
    return " ".join(text.split())


def _axes_description(ax) -> str:
    kinds = []
    if any(
        isinstance(a, Line2D)
        and len(a.get_xdata()) > 1
        and _in_data_coordinates(a.get_transform(), ax)
        for a in ax.lines
    ):
        kinds.append("lines")
    if any(
        isinstance(c, PathCollection) and len(c.get_offsets()) > 0
        for c in ax.collections
    ):
        kinds.append("points")
    if any(
        isinstance(p, Rectangle) and _in_data_coordinates(p.get_transform(), ax)
        for p in ax.patches
    ):
        kinds.append("bars")
    if any(isinstance(i, AxesImage) for i in ax.images):
        kinds.append("an image")
    title = _plain(
        " ".join(
            t
            for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right"))
            if t
        )
    )
    xlabel, ylabel = _plain(ax.get_xlabel()), _plain(ax.get_ylabel())
    parts = [f"{title}:" if title else ""]
    if ax.axison:
        what = " and ".join(kinds) or "a plot"
        parts.append(
            f"{what} of {ylabel} against {xlabel}"
            if xlabel and ylabel
            else f"{what} against {xlabel}"
            if xlabel
            else f"{what} of {ylabel}"
            if ylabel
            else what
        )
    else:
        parts.append(
            "a diagram"
            + (
                " with the text "
                f"{', '.join(_plain(t.get_text()) for t in ax.texts[:6])}"
                if ax.texts
                else ""
            )
        )
    legend = ax.get_legend()
    labels = (
        [_plain(t.get_text()) for t in legend.get_texts()] if legend is not None else []
    )
    if labels:
        parts.append(f"(legend: {', '.join(labels)})")
    return " ".join(p for p in parts if p)


def figure_description(fig: Figure) -> str:
    """The alt text of ``fig``: the text given by :func:`set_alt`, else a description
    written from the figure's title, the title, axis labels, kind of marks and legend of
    each panel, and the figure's legend."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if fig in _ALT_TEXT:
        return _ALT_TEXT[fig]
    panels = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    described = [_axes_description(ax) for ax in panels]
    suptitle = (
        _plain(fig._suptitle.get_text())
        if getattr(fig, "_suptitle", None) is not None
        else ""
    )
    count = f"{len(panels)} panels" if len(panels) != 1 else "one panel"
    head = (
        f"Figure: {suptitle}. {count[0].upper() + count[1:]}"
        if suptitle
        else f"Figure with {count}"
    )
    body = (
        "; ".join(f"({index + 1}) {text}" for index, text in enumerate(described))
        if len(described) > 1
        else (described[0] if described else "")
    )
    text = f"{head}: {body}" if body else head
    labels = [
        _plain(t.get_text()) for legend in fig.legends for t in legend.get_texts()
    ]
    if labels:
        text += f". Legend: {', '.join(labels)}"
    colorbars = [
        _plain(ax.get_ylabel() or ax.get_xlabel())
        for ax in fig.axes
        if hasattr(ax, "_colorbar")
    ]
    if any(colorbars):
        text += f". Colour scale: {', '.join(c for c in colorbars if c)}"
    return text + "."


# pixels per figure pixel in the book's PNGs: sharp on high-density screens and when
# zoomed
PNG_SCALE = 2


def figure_png(fig: Figure, **savefig_kwargs) -> bytes:
    """``fig`` as PNG bytes, as the inline backend draws it (``bbox_inches="tight"``) at
    :data:`PNG_SCALE` times the figure's dpi, with its alt text
    (:func:`figure_description`) in the PNG's ``Description`` text chunk. The page
    scales the image to the text column, so a figure keeps its proportions and its text
    its size relative to the figure, at twice the resolution."""
    kwargs = {
        "format": "png",
        "dpi": PNG_SCALE * fig.dpi,
        "bbox_inches": "tight",
        "facecolor": fig.get_facecolor(),
        "edgecolor": fig.get_edgecolor(),
    } | savefig_kwargs
    metadata = dict(kwargs.pop("metadata", None) or {}) | {
        ALT_TEXT_KEY: figure_description(fig)
    }
    buffer = io.BytesIO()
    fig.canvas.print_figure(buffer, metadata=metadata, **kwargs)
    return buffer.getvalue()


def estimator_color(name: str) -> str:
    """The house colour of an estimator id or label
    (:data:`icl_lib.evaluation.STYLES`)."""
    return style(name).color


def shift_title(name: str, **options: Any) -> str:
    """A readable title for the shift ``name`` with ``options``:
    ``shift_title("noisy_labels", noise_std=0.5)`` is ``"noisy labels, σ = 0.5"``;
    unknown names and options are shown as given."""
    values = [
        f"{OPTION_SYMBOLS.get(key, key)} = {value:g}"
        if isinstance(value, (int, float))
        else f"{key} = {value}"
        for key, value in options.items()
    ]
    return ", ".join([SHIFT_TITLES.get(name, name.replace("_", " ")), *values])


def k_axis(ax: plt.Axes, label: str = K_LABEL) -> plt.Axes:
    """Label the x axis of ``ax`` as a number of examples, with integer ticks only;
    return ``ax``."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _option(value: Mapping[str, Any] | Any, name: str, default: Any) -> Any:
    """A per-curve style option: ``value[name]`` for a mapping (``default`` if absent),
    else ``value`` for all."""
    if isinstance(value, Mapping):
        return value.get(name, default)
    return default if value is None else value


def plot_error_curves(
    curves: Mapping[str, ErrorCurve],
    ax: plt.Axes | None = None,
    d: int | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.25),
    zero_predictor: float | None = 1.0,
    *,
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | str | None = None,
    linestyles: Mapping[str, str] | str | None = None,
    markers: Mapping[str, str | None] | str | None = None,
    bands: bool | Container[str] = True,
    x: np.ndarray | None = None,
    xlabel: str = K_LABEL,
    ylabel: str = "normalised squared error",
    legend: bool = True,
) -> plt.Axes:
    """Normalised error against the number of in-context examples k, one line and
    bootstrap band per curve.

    ``curves`` are keyed by estimator id (or label) of
    :data:`icl_lib.evaluation.STYLES`, which gives each its label, colour, line style
    and marker; any other key is its own label, in the next colour of the axes' cycle.
    ``labels``, ``colors``, ``linestyles``, ``markers``: overrides by key (a mapping),
    or one value for every curve (a string). ``bands``: draw the bands of all curves
    (True), none (False) or of the keys given. ``d`` draws the interpolation threshold
    k = d. The dotted line is the zero predictor's normalised error, ``zero_predictor``
    (1 for noiseless tasks, 1 + noise_std^2 / d for noisy linear; None: no line). ``x``:
    other x coordinates than k (one per point of every curve; then ``xlabel`` names them
    and the ticks need not be integers).
    """
    if ax is None:
        _, ax = plt.subplots()
    for name, curve in curves.items():
        try:
            house = style(name)
        except ValueError:  # not in the table: its own label, the axes' colour cycle
            house = Style(label=name, color=None)
        where = curve.k if x is None else x
        marker = _option(markers, name, house.marker)
        (line,) = ax.plot(
            where,
            curve.mean,
            label=_option(labels, name, house.label),
            color=_option(colors, name, house.color),
            linestyle=_option(linestyles, name, house.linestyle),
            marker=marker,
            markersize=3 if marker else None,
        )
        if bands is True or (bands is not False and name in bands):
            ax.fill_between(
                where,
                curve.low,
                curve.high,
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if zero_predictor is not None:
        ax.axhline(
            zero_predictor,
            color="grey",
            linestyle=":",
            linewidth=1,
            label="zero predictor",
        )
    if d is not None:
        ax.axvline(d, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            "k = d",
            (d, 1.0),
            xytext=(4, 4),
            textcoords="offset points",
            color="grey",
            fontsize=9,
        )
    if x is None:
        k_axis(ax, xlabel)
    else:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax


def plot_in_context_fits(
    pictures: Mapping[str, tuple[Any, Mapping[str, fits.Predictor]]],
    n_examples: int,
    grid: torch.Tensor,
    generator: torch.Generator,
    labels: Mapping[str, str] | None = None,
    error_half_width: float = 2.0,
) -> tuple[Figure, dict[tuple[str, str], float]]:
    """One panel per entry ``{title: (task, {estimator id: predictor})}``: a function
    drawn from the task, ``n_examples`` standard normal inputs (the same in every
    panel) with its labels, and each predictor's in-context fit
    (:func:`icl_lib.fits.in_context_fit`) over ``grid: (m, d)``, in two columns.

    Draws from ``generator`` in this order: the inputs, then one function per panel.
    Returns the figure (for the calling cell to show) and each fit's mean squared error
    against the true function on the grid points with every coordinate within
    ``error_half_width``, keyed ``(title, estimator id)``. ``labels``: overrides of the
    legend labels (:func:`icl_lib.evaluation.label`).
    """
    if not pictures:
        raise ValueError("pictures must name at least one panel, got none")
    if not (isinstance(grid, torch.Tensor) and grid.ndim == 2):
        got = (
            tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        )
        raise ValueError(f"grid must be a tensor of shape (m, d), got {got}")
    examples_x = samplers.gaussian_xs(1, n_examples, grid.shape[1], generator)[0]
    inside = (grid.abs() <= error_half_width).all(dim=1)
    n_columns = 2
    n_rows = (len(pictures) + 1) // n_columns
    fig, grid_of_axes = plt.subplots(n_rows, n_columns, figsize=(9, 3.4 * n_rows))
    axes = np.atleast_1d(grid_of_axes).flatten()
    for ax in axes[len(pictures) :]:
        ax.remove()
    errors = {}
    for ax, (title, (task, predictors)) in zip(axes, pictures.items()):
        sample = task.sample(torch.cat([examples_x, grid])[None], generator)
        examples_y, truth = sample.ys[0, :n_examples], sample.ys[0, n_examples:]
        line_x = grid[:, 0]
        ax.plot(
            line_x, truth, color="grey", linewidth=3, alpha=0.5, label="true function"
        )
        ax.plot(
            examples_x[:, 0],
            examples_y,
            "o",
            color="black",
            markersize=5,
            label=f"the {n_examples} examples",
        )
        for name, predict in predictors.items():
            fit = fits.in_context_fit(predict, examples_x, examples_y, grid)
            look = style(name)
            ax.plot(
                line_x,
                fit,
                color=look.color,
                linestyle=look.linestyle,
                linewidth=1.5,
                label=label(name, labels),
            )
            errors[title, name] = float(((fit - truth.double())[inside] ** 2).mean())
        ax.set_title(title)
        ax.set_xlabel("x")
    for ax in axes[::n_columns]:
        ax.set_ylabel("y")
    fig.tight_layout()
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3,
    )
    return fig, errors


def _in_data_coordinates(transform, ax: plt.Axes) -> bool:
    # axhline/axvline/axvspan blend data coordinates on one axis with axes coordinates
    # on the other.
    return transform.contains_branch_seperately(ax.transData) == (True, True)


def _is_data_artist(artist, ax: plt.Axes) -> bool:
    """True for an artist with something to draw in data coordinates (reference lines
    and spans do not count)."""
    # scatter: markers placed at data offsets; fill_between, hlines: data paths
    if isinstance(artist, Collection):
        placed = len(artist.get_offsets()) > 0 and _in_data_coordinates(
            artist.get_offset_transform(), ax
        )
        drawn = any(
            len(path.vertices) > 0 for path in artist.get_paths()
        ) and _in_data_coordinates(artist.get_transform(), ax)
        return placed or drawn
    if not _in_data_coordinates(artist.get_transform(), ax):
        return False
    if isinstance(artist, Line2D):
        return len(artist.get_xdata()) > 0
    return True  # patches (bars) and images


def plotted_axes_problems(fig: plt.Figure) -> list[str]:
    """What is blank in ``fig``: one line per axes that shows no data beyond reference
    lines.

    An axes counts as plotted when it holds a line with points, a non-empty collection
    (scatter, fill_between, error bars), a bar or an image in data coordinates;
    ``axhline``/``axvline``/``axvspan`` do not count. An axes with its axis turned off
    (a schematic or a table) counts when it holds any artist or text.
    """
    problems = []
    for index, ax in enumerate(fig.axes):
        name = f"axes {index}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        if not ax.axison:
            if not (
                ax.lines
                or ax.patches
                or ax.collections
                or ax.images
                or ax.texts
                or ax.tables
            ):
                problems.append(f"{name} is turned off and empty")
            continue
        artists = [*ax.lines, *ax.collections, *ax.patches, *ax.images]
        if not any(_is_data_artist(artist, ax) for artist in artists):
            problems.append(f"{name} shows no data (reference lines do not count)")
    if not fig.axes:
        problems.append("the figure has no axes")
    return problems


def show(fig: plt.Figure | None = None, alt: str | None = None) -> None:
    """``plt.show()`` after checking that every axes of ``fig`` (default: the current
    figure) shows data.

    Raises ``AssertionError`` naming the blank axes, so that a chapter cell that plots
    nothing fails the build and nbval instead of printing an empty frame. ``alt``: the
    figure's alt text (:func:`set_alt`); without it the book shows
    :func:`figure_description`.
    """
    fig = plt.gcf() if fig is None else fig
    if alt is not None:
        set_alt(fig, alt)
    _register_png_formatter()
    problems = plotted_axes_problems(fig)
    assert not problems, f"blank figure: {'; '.join(problems)}"
    plt.show()
