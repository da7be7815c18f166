"""House style, the style table and error-curve plots on the Agg backend: lines, bands,
colours, ticks, titles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import torch  # noqa: E402

from icl_lib import baselines, evaluate, tasks  # noqa: E402
from icl_lib.devices import make_generator  # noqa: E402
from icl_lib.evaluate import ESTIMATORS  # noqa: E402
from icl_lib.evaluation import STYLES, ErrorCurve, style  # noqa: E402
from icl_lib.plotting import (  # noqa: E402
    HOUSE_STYLE,
    estimator_color,
    k_axis,
    plot_error_curves,
    plot_in_context_fits,
    plotted_axes_problems,
    shift_title,
    show,
    use_house_style,
)


def make_curve(n_points: int, offset: float) -> ErrorCurve:
    mean = np.linspace(1.0, 0.1, n_points) + offset
    return ErrorCurve(mean=mean, low=mean - 0.05, high=mean + 0.05, n_prompts=100)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_use_house_style_sets_the_rc_params():
    with plt.rc_context():
        use_house_style()
        for key, value in HOUSE_STYLE.items():
            current = plt.rcParams[key]
            if isinstance(value, tuple):
                assert tuple(current) == value, key
            else:
                assert current == value, key
    assert matplotlib.get_backend().lower() == "agg"


def test_every_estimator_of_the_library_has_a_style():
    assert set(ESTIMATORS) | {"transformer"} <= set(STYLES)
    assert evaluate.LABELS == {
        name: STYLES[name].label for name in ("transformer", *ESTIMATORS)
    }


def test_styles_are_valid_and_tell_every_estimator_apart():
    looks = [(mcolors.to_hex(s.color), s.linestyle, s.marker) for s in STYLES.values()]
    assert len(set(looks)) == len(looks), "two estimators would look the same"
    labels = [s.label for s in STYLES.values()]
    assert len(set(labels)) == len(labels)
    assert all(mcolors.is_color_like(s.color) for s in STYLES.values())
    assert all(s.linestyle in ("-", "--", ":", "-.") for s in STYLES.values())


def test_style_and_estimator_color_take_an_id_or_its_label():
    assert style("knn") is style("k-NN (3)") is STYLES["knn"]
    assert (
        estimator_color("least_squares")
        == estimator_color("least squares")
        == STYLES["least_squares"].color
    )
    with pytest.raises(
        ValueError,
        match=(
            r"estimator must be an id of the style table \[.*'least_squares'.*got 'the "
            r"lasso'"
        ),
    ):
        style("the lasso")


@pytest.mark.parametrize(
    "name, options, title",
    [
        ("noisy_labels", {"noise_std": 0.5}, "noisy labels, σ = 0.5"),
        ("scaled_inputs", {"scale": 2.0}, "scaled inputs, c = 2"),
        ("orthogonal_query", {}, "orthogonal query"),
        ("skewed_covariance", {"decay": 2}, "skewed covariance, decay = 2"),
        ("a_new_shift", {"mode": "fast"}, "a new shift, mode = fast"),
    ],
)
def test_shift_titles_are_readable(name, options, title):
    assert shift_title(name, **options) == title


def test_plot_error_curves_draws_each_id_in_its_house_style_with_a_band():
    curves = {
        "least_squares": make_curve(12, 0.0),
        "relu_net_gd": make_curve(12, 0.1),
        "my model": make_curve(12, 0.2),
    }
    fig, ax = plt.subplots()
    returned = plot_error_curves(curves, ax=ax, d=5, title="dense linear")
    assert returned is ax

    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {
        "least squares",
        "2-layer ReLU net, GD",
        "my model",
        "zero predictor",
    } <= set(lines)
    for label, curve in zip(
        ("least squares", "2-layer ReLU net, GD", "my model"), curves.values()
    ):
        np.testing.assert_array_equal(lines[label].get_xdata(), curve.k)
        np.testing.assert_allclose(lines[label].get_ydata(), curve.mean)
    assert mcolors.same_color(
        lines["least squares"].get_color(), STYLES["least_squares"].color
    )
    relu = lines["2-layer ReLU net, GD"]
    assert (
        mcolors.same_color(relu.get_color(), STYLES["relu_net_gd"].color)
        and relu.get_linestyle() == "-."
    )
    # a key outside the table is its own label, in a colour of the cycle unlike the
    # house colours used here
    assert not mcolors.same_color(
        lines["my model"].get_color(), lines["least squares"].get_color()
    )

    # one translucent band per curve, in the curve's colour, spanning low .. high
    bands = ax.collections
    assert len(bands) == len(curves)
    for band, label, curve in zip(
        bands, ("least squares", "2-layer ReLU net, GD", "my model"), curves.values()
    ):
        face = band.get_facecolor()[0]
        assert mcolors.same_color(face[:3], mcolors.to_rgb(lines[label].get_color()))
        assert face[3] == pytest.approx(0.2)
        vertices = np.concatenate([path.vertices for path in band.get_paths()])
        assert vertices[:, 1].min() == pytest.approx(curve.low.min())
        assert vertices[:, 1].max() == pytest.approx(curve.high.max())

    # zero predictor at 1 and the interpolation threshold at k = d
    np.testing.assert_allclose(lines["zero predictor"].get_ydata(), [1.0, 1.0])
    verticals = [line for line in ax.get_lines() if np.allclose(line.get_xdata(), 5)]
    assert len(verticals) == 1 and len(ax.get_lines()) == len(curves) + 2
    assert any(text.get_text() == "k = d" for text in ax.texts)

    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [
        "least squares",
        "2-layer ReLU net, GD",
        "my model",
        "zero predictor",
    ]
    assert ax.get_ylim() == pytest.approx((0.0, 1.25))
    assert ax.get_title() == "dense linear"
    assert ax.get_xlabel() == "number of in-context examples k"
    assert ax.get_ylabel() == "normalised squared error"
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(
        float(t).is_integer() for t in ticks
    ), f"k ticks should be integers, got {ticks}"


def test_plot_error_curves_accepts_labels_as_keys():
    ax = plot_error_curves(
        {"least squares": make_curve(6, 0.0), "k-NN (3)": make_curve(6, 0.1)}
    )
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert mcolors.same_color(
        lines["least squares"].get_color(), STYLES["least_squares"].color
    )
    assert mcolors.same_color(lines["k-NN (3)"].get_color(), STYLES["knn"].color)


def test_plot_error_curves_overrides_and_bands():
    curves = {
        "lasso": make_curve(6, 0.0),
        "sparse_trained": make_curve(6, 0.1),
        "bayes": make_curve(6, 0.2),
    }
    ax = plot_error_curves(
        curves,
        labels={"lasso": "lasso (α = 0.001)"},
        colors={"bayes": "#123456"},
        linestyles="--",
        bands=["sparse_trained"],
        legend=False,
    )
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) >= {"lasso (α = 0.001)", "sparse-trained", "Bayes"}
    assert mcolors.same_color(
        lines["lasso (α = 0.001)"].get_color(), STYLES["lasso"].color
    )
    assert mcolors.same_color(lines["Bayes"].get_color(), "#123456")
    assert all(
        lines[label].get_linestyle() == "--"
        for label in ("lasso (α = 0.001)", "sparse-trained", "Bayes")
    )
    assert lines["sparse-trained"].get_marker() == "o" and lines[
        "lasso (α = 0.001)"
    ].get_marker() in ("None", None, "")
    assert len(ax.collections) == 1  # only the band asked for
    assert ax.get_legend() is None
    none = plot_error_curves(curves, bands=False, markers={"sparse_trained": None})
    assert not none.collections
    assert {line.get_label(): line for line in none.get_lines()}[
        "sparse-trained"
    ].get_marker() in ("None", None, "")


def test_plot_error_curves_at_other_x_values():
    alphas = np.linspace(0.0, 1.0, 6)
    ax = plot_error_curves(
        {"transformer": make_curve(6, 0.0)},
        x=alphas,
        xlabel="alpha",
        zero_predictor=None,
    )
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), alphas)
    assert ax.get_xlabel() == "alpha"
    vertices = np.concatenate([path.vertices for path in ax.collections[0].get_paths()])
    assert vertices[:, 0].min() == pytest.approx(0.0) and vertices[
        :, 0
    ].max() == pytest.approx(1.0)


def test_k_axis_labels_and_gives_integer_ticks():
    fig, ax = plt.subplots()
    ax.plot(np.arange(5), np.arange(5))
    assert k_axis(ax) is ax
    assert ax.get_xlabel() == "number of in-context examples k"
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    k_axis(ax, "examples in the prompt M")
    assert ax.get_xlabel() == "examples in the prompt M"


def test_plot_error_curves_defaults():
    ax = plot_error_curves({"ridge": make_curve(6, 0.0)}, ylim=None)
    assert isinstance(ax, plt.Axes)
    # no k = d line
    assert [line.get_label() for line in ax.get_lines()] == ["ridge", "zero predictor"]
    assert not ax.texts
    assert ax.get_title() == ""
    assert ax.get_ylim()[1] >= 1.0  # autoscaled to the data and the zero-predictor line
    assert len(ax.collections) == 1
    ax.figure.canvas.draw()


def test_plot_error_curves_zero_predictor_level():
    noisy = plot_error_curves(
        {"ridge": make_curve(6, 0.0)}, ylim=None, zero_predictor=1.25
    )
    zero = [line for line in noisy.get_lines() if line.get_label() == "zero predictor"]
    np.testing.assert_allclose(zero[0].get_ydata(), [1.25, 1.25])
    none = plot_error_curves({"ridge": make_curve(6, 0.0)}, zero_predictor=None)
    assert [line.get_label() for line in none.get_lines()] == ["ridge"]


# (name, what the cell draws on one axes, blank?)
DRAWINGS = [
    ("a line", lambda ax: ax.plot([1, 2], [3, 4]), False),
    ("a line on log axes", lambda ax: ax.semilogy([1, 2], [3, 4]), False),
    ("a line without points", lambda ax: ax.plot([], []), True),
    ("an axhline", lambda ax: ax.axhline(0.3), True),
    (
        "reference lines and spans",
        lambda ax: (ax.axhline(0.3), ax.axvline(1), ax.axvspan(1, 2), ax.axhspan(1, 2)),
        True,
    ),
    ("an axhline and an empty line", lambda ax: (ax.axhline(1), ax.plot([], [])), True),
    ("a scatter", lambda ax: ax.scatter([1], [2]), False),
    ("an empty scatter", lambda ax: ax.scatter([], []), True),
    ("a band", lambda ax: ax.fill_between([1, 2], [0, 0], [1, 1]), False),
    ("bars", lambda ax: ax.bar([1, 2], [3, 4]), False),
    ("error bars", lambda ax: ax.errorbar([1, 2], [3, 4], yerr=[1, 1]), False),
    ("a histogram", lambda ax: ax.hist([1, 2, 3]), False),
    ("hlines", lambda ax: ax.hlines([1], 0, 1), False),
    ("an image", lambda ax: ax.imshow([[1, 2], [3, 4]]), False),
    ("a mesh", lambda ax: ax.pcolormesh([[1, 2], [3, 4]]), False),
    ("text only", lambda ax: ax.text(0.5, 0.5, "x"), True),
    ("nothing, axis off", lambda ax: ax.axis("off"), True),
    (
        "a schematic (axis off, text)",
        lambda ax: (ax.axis("off"), ax.text(0.5, 0.5, "x")),
        False,
    ),
]


@pytest.mark.parametrize(
    "draw, blank", [pytest.param(d, b, id=n) for n, d, b in DRAWINGS]
)
def test_plotted_axes_problems_finds_the_blank_axes(draw, blank):
    fig, (drawn, other) = plt.subplots(1, 2)
    other.plot([0, 1], [0, 1])
    draw(drawn)
    problems = plotted_axes_problems(fig)
    plt.close(fig)
    assert (problems != []) == blank, problems
    assert all(p.startswith("axes 0") for p in problems)


def test_show_fails_on_a_blank_axes_and_names_it():
    fig, (ax, empty) = plt.subplots(1, 2)
    ax.plot([0, 1], [0, 1])
    empty.set_title("loss curves")
    empty.axhline(0.5)
    with pytest.raises(
        AssertionError, match=r"blank figure: axes 1 \('loss curves'\) shows no data"
    ):
        show(fig)
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    show(fig)  # a plotted figure passes
    plt.close(fig)


def test_every_chapter_shows_its_figures_through_the_blank_figure_check():
    """A chapter that called plt.show() directly would print an empty frame without
    failing; plotting.show fails."""
    import json
    from pathlib import Path

    for path in sorted(
        (Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")
    ):
        cells = json.loads(path.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert not any(
            "plt.show(" in source for source in code
        ), f"{path.name} calls plt.show(): use plotting.show(fig)"
        assert any(
            "plotting.show(" in source for source in code
        ), f"{path.name} shows no figure through plotting.show"


# -------------------------------------- alt text (read back with Pillow, independently)


def _png_text(data: bytes) -> dict:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as image:
        image.load()
        return dict(image.text)


def test_figure_description_names_the_titles_labels_and_legend():
    from icl_lib.plotting import figure_description

    fig, axes = plt.subplots(1, 2)
    axes[0].plot([0, 1, 2], [1.0, 0.5, 0.0], label="least squares")
    axes[0].plot([0, 1, 2], [1.0, 0.6, 0.2], label="ridge ($\\lambda = 0.1$)")
    axes[0].set(
        title="dense prompts",
        xlabel="number of in-context examples k",
        ylabel="normalised squared error",
    )
    axes[0].legend()
    axes[1].bar([0, 1], [2, 3])
    axes[1].set_title("$f(x_0 + t\\,e_1)$")
    fig.suptitle("Errors")
    text = figure_description(fig)
    assert text.startswith(
        "Figure: Errors. 2 panels: (1) dense prompts: lines of normalised squared "
        "error against number of in-context examples k (legend: least squares, ridge "
        "(lambda = 0.1)); (2) f(x_0 + t e_1): bars"
    ), text
    assert "$" not in text and "\\" not in text


def test_the_png_carries_the_description_or_the_authors_alt_text():
    from icl_lib.plotting import ALT_TEXT_KEY, figure_description, figure_png, set_alt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set(title="a line", xlabel="x", ylabel="y")
    assert (
        _png_text(figure_png(fig))[ALT_TEXT_KEY]
        == figure_description(fig)
        == "Figure with one panel: a line: lines of y against x."
    )
    # whitespace collapsed, Unicode kept (an iTXt chunk)
    set_alt(fig, "  The identity   on [0, 1]. σ ")
    assert _png_text(figure_png(fig))[ALT_TEXT_KEY] == "The identity on [0, 1]. σ"


def test_the_png_has_twice_the_figures_pixels_and_records_its_dpi():
    """A sharp PNG for high-density screens; its recorded dpi keeps the figure's size in
    inches (the PDF's size)."""
    import io

    from PIL import Image

    from icl_lib.plotting import PNG_SCALE, figure_png

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([0, 1], [0, 1])
    image = Image.open(io.BytesIO(figure_png(fig, bbox_inches=None)))
    assert PNG_SCALE == 2 and image.size == (800, 600)
    assert [round(d) for d in image.info["dpi"]] == [200, 200]


def test_the_book_extension_reads_what_pillow_reads():
    import importlib.util
    from pathlib import Path

    from icl_lib.plotting import figure_png, set_alt

    path = Path(__file__).resolve().parents[1] / "book" / "_ext" / "figure_alt.py"
    spec = importlib.util.spec_from_file_location("figure_alt", path)
    figure_alt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure_alt)
    fig, ax = plt.subplots()
    ax.scatter([0, 1], [1, 0])
    for alt in (None, "Two points, λ = 1."):
        if alt:
            set_alt(fig, alt)
        data = figure_png(fig)
        assert figure_alt.png_text(data) == _png_text(data)
    assert figure_alt.png_text(b"not a png") == {}


def test_show_takes_the_alt_text():
    from icl_lib.plotting import figure_description

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    show(fig, alt="A rising line.")
    assert figure_description(fig) == "A rising line."


def test_in_context_fits_draw_one_panel_per_picture_and_measure_each_fit():
    # Noiseless 1-d linear functions: least squares recovers each slope from the
    # examples, so its fit is the true function (error ~0); averaging's is not (its
    # slope is the mean of x_i y_i, off by the sampling error).
    grid = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    pictures = {
        title: (
            tasks.make_task("linear"),
            {
                "least_squares": baselines.least_squares,
                "averaging": baselines.averaging,
            },
        )
        for title in ("first", "second", "third")
    }
    fig, errors = plot_in_context_fits(pictures, 12, grid, make_generator(0))
    assert [ax.get_title() for ax in fig.axes] == ["first", "second", "third"]
    assert not plotted_axes_problems(fig)
    assert set(errors) == {
        (t, n) for t in pictures for n in ("least_squares", "averaging")
    }
    for title in pictures:
        assert errors[title, "least_squares"] < 1e-10  # float32 rounding: ~1e-15
        assert errors[title, "averaging"] > 1e-3
    again = plot_in_context_fits(pictures, 12, grid, make_generator(0))[1]
    assert again == errors
    plt.close("all")
