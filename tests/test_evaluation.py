"""Error curves, bootstrap bands and intervals: means against numpy, band statistics,
band_contains, the interval helpers (standard_error, mean_interval, paired_interval, the
normal and t quantiles) against scipy, argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icl_lib.baselines import averaging, least_squares
from icl_lib.devices import make_generator
from icl_lib import evaluation
from icl_lib.evaluation import (
    STYLES,
    ErrorCurve,
    as_predictor,
    band_contains,
    bootstrap_band,
    error_curve,
    error_curves,
    predictions,
    squared_errors,
)


def random_preds(batch: int, n_points: int, seed: int):
    g = make_generator(seed)
    ys = torch.randn(batch, n_points, generator=g, dtype=torch.float64)
    preds = ys + 0.5 * torch.randn(batch, n_points, generator=g, dtype=torch.float64)
    return preds, ys


def test_squared_errors_against_numpy():
    preds, ys = random_preds(6, 5, 0)
    np.testing.assert_allclose(
        squared_errors(preds, ys).numpy(), (preds.numpy() - ys.numpy()) ** 2, rtol=1e-15
    )
    # float32 inputs are compared in float64
    assert squared_errors(preds.float(), ys.float()).dtype == torch.float64


def test_error_curve_mean_is_the_normalised_mean_squared_error():
    preds, ys = random_preds(30, 7, 1)
    curve = error_curve(preds, ys, normalizer=4.0, n_bootstrap=200)
    expected = np.mean((preds.numpy() - ys.numpy()) ** 2, axis=0) / 4.0
    np.testing.assert_allclose(curve.mean, expected, rtol=1e-12)
    assert curve.n_prompts == 30
    np.testing.assert_array_equal(curve.k, np.arange(7))
    assert curve.mean.shape == curve.low.shape == curve.high.shape == (7,)


def test_band_contains_the_mean_and_is_reproducible():
    preds, ys = random_preds(40, 6, 2)
    curve = error_curve(preds, ys, normalizer=1.0, n_bootstrap=500, seed=3)
    assert np.all(curve.low <= curve.mean) and np.all(curve.mean <= curve.high)
    assert np.all(curve.low < curve.high)
    again = error_curve(preds, ys, normalizer=1.0, n_bootstrap=500, seed=3)
    np.testing.assert_array_equal(again.low, curve.low)
    np.testing.assert_array_equal(again.high, curve.high)
    other = error_curve(preds, ys, normalizer=1.0, n_bootstrap=500, seed=4)
    assert not np.array_equal(other.low, curve.low)


def test_band_narrows_with_more_prompts_like_one_over_root_n():
    preds, ys = random_preds(1600, 4, 5)
    small = error_curve(preds[:100], ys[:100], normalizer=1.0, n_bootstrap=400)
    large = error_curve(preds, ys, normalizer=1.0, n_bootstrap=400)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert np.all(ratio > 2.5) and np.all(ratio < 6.0)  # sqrt(16) = 4


def test_band_width_matches_the_normal_approximation():
    errors = squared_errors(*random_preds(500, 5, 6))
    low, high = bootstrap_band(errors, n_bootstrap=2000, level=0.95)
    standard_error = errors.numpy().std(axis=0) / math.sqrt(500)
    np.testing.assert_allclose(high - low, 2 * 1.959964 * standard_error, rtol=0.15)
    # a higher level gives a wider band
    low99, high99 = bootstrap_band(errors, n_bootstrap=2000, level=0.99)
    assert np.all(high99 - low99 > high - low)


def test_band_covers_the_true_mean_about_95_percent_of_the_time():
    # 400 independent experiments side by side (columns), each the mean of 60
    # Uniform(0, 2) errors: true mean 1
    g = make_generator(7)
    errors = 2 * torch.rand(60, 400, generator=g, dtype=torch.float64)
    low, high = bootstrap_band(errors, n_bootstrap=1000, level=0.95)
    coverage = np.mean((low <= 1.0) & (1.0 <= high))
    assert 0.88 <= coverage <= 0.99, coverage


def test_band_contains():
    curve = ErrorCurve(
        mean=np.array([1.0, 0.5, 0.2]),
        low=np.array([0.9, 0.4, 0.1]),
        high=np.array([1.1, 0.6, 0.3]),
        n_prompts=10,
    )
    assert band_contains(curve, [1.05, 0.45, 0.25], slice(None))
    assert band_contains(curve, 0.5, slice(1, 2))
    assert band_contains(curve, [0.9, 0.3], np.array([0, 2]))  # edges count as inside
    assert not band_contains(curve, [1.05, 0.7, 0.25], slice(None))
    # a scalar is broadcast to every k
    assert not band_contains(curve, 0.5, slice(None))
    assert not band_contains(curve, 0.35, np.array([2]))
    assert isinstance(band_contains(curve, 0.5, slice(1, 2)), bool)


def test_least_squares_curve_band_contains_the_closed_form():
    d, batch = 4, 2000
    g = make_generator(8)
    xs = torch.randn(batch, 8, d, generator=g, dtype=torch.float64)
    ys = torch.einsum(
        "bnd,bd->bn", xs, torch.randn(batch, d, generator=g, dtype=torch.float64)
    )
    curve = error_curve(least_squares(xs, ys), ys, normalizer=d, n_bootstrap=1000)
    k = np.arange(1, d)
    # (d - k) / d below the interpolation threshold
    assert band_contains(curve, (d - k) / d, k)
    assert np.all(curve.high[d:] < 1e-12)  # and zero from k = d on
    assert curve.mean[0] == pytest.approx(1.0, abs=0.1)


def test_error_curves_keeps_the_order_and_matches_error_curve():
    g = make_generator(9)
    xs = torch.randn(50, 6, 3, generator=g, dtype=torch.float64)
    ys = torch.einsum(
        "bnd,bd->bn", xs, torch.randn(50, 3, generator=g, dtype=torch.float64)
    )
    curves = error_curves(
        {"averaging": averaging, "least squares": least_squares},
        xs,
        ys,
        3.0,
        n_bootstrap=100,
    )
    assert list(curves) == ["averaging", "least squares"]
    for name, predict in (("averaging", averaging), ("least squares", least_squares)):
        expected = error_curve(predict(xs, ys), ys, 3.0, n_bootstrap=100)
        np.testing.assert_array_equal(curves[name].mean, expected.mean)
        np.testing.assert_array_equal(curves[name].low, expected.low)


class LastLabelModel(torch.nn.Module):
    """Predicts, at every position, 2 x the label of the position before it (0 at the
    first): a fixed, known rule, in float32 like the book's models; ``calls`` records
    its training flag and the dtype it was given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = []

    def forward(self, xs, ys):
        self.calls.append((self.training, xs.dtype, ys.dtype, torch.is_grad_enabled()))
        return self.weight * torch.cat((torch.zeros_like(ys[:, :1]), ys[:, :-1]), dim=1)


def test_as_predictor_runs_a_model_in_eval_mode_without_gradients_and_undoes_the_label_scale():
    model = LastLabelModel().train()
    xs, ys = (
        torch.randn(4, 5, 3, dtype=torch.float64),
        torch.randn(4, 5, dtype=torch.float64),
    )
    preds = as_predictor(model, label_scale=0.5)(xs, ys)
    assert preds.dtype == torch.float64 and preds.shape == (4, 5)
    # the model read 0.5 ys in float32; its prediction 2 * 0.5 y_{k-1} is divided by 0.5
    # again
    expected = 2 * (0.5 * ys).float().double() / 0.5
    torch.testing.assert_close(preds[:, 1:], expected[:, :-1], rtol=0, atol=0)
    assert model.calls == [(False, torch.float32, torch.float32, False)]
    assert model.training, "the model's own mode is restored"


def test_predictions_with_queries_put_the_k_th_query_after_the_first_k_examples():
    xs, ys = torch.randn(3, 4, 2), torch.randn(3, 4)
    query_xs, query_ys = torch.randn(3, 4, 2), torch.randn(3, 4)
    seen = []

    # predicts the sum of the last input's coordinates at every position
    def last_input_sum(prompt_xs, prompt_ys):
        seen.append(prompt_xs.shape)
        return prompt_xs.sum(-1)

    preds = predictions(last_input_sum, xs, ys, query_xs, query_ys, chunk=2)
    torch.testing.assert_close(preds, query_xs.sum(-1))
    assert seen == [
        (2, k + 1, 2) if i == 0 else (1, k + 1, 2) for k in range(4) for i in range(2)
    ]
    torch.testing.assert_close(predictions(last_input_sum, xs, ys), xs.sum(-1))


def test_error_curves_take_models_and_measure_query_shifts_against_the_query_labels():
    g = make_generator(11)
    xs, ys = torch.randn(40, 6, 3, generator=g), torch.randn(40, 6, generator=g)
    model = LastLabelModel()
    curves = error_curves(
        {"transformer": model, "zero": lambda a, b: torch.zeros_like(b)},
        xs,
        ys,
        2.0,
        chunk=7,
        n_bootstrap=50,
    )
    assert list(curves) == ["transformer", "zero"]
    expected = error_curve(as_predictor(model)(xs, ys), ys, 2.0, n_bootstrap=50)
    np.testing.assert_array_equal(curves["transformer"].mean, expected.mean)
    np.testing.assert_allclose(
        curves["zero"].mean, (ys.double() ** 2).mean(0).numpy() / 2.0, rtol=1e-12
    )
    query_xs, query_ys = (
        torch.randn(40, 6, 3, generator=g),
        torch.randn(40, 6, generator=g),
    )
    shifted = error_curves(
        {"zero": lambda a, b: torch.zeros_like(b)},
        xs,
        ys,
        1.0,
        queries=(query_xs, query_ys),
        n_bootstrap=50,
    )
    np.testing.assert_allclose(
        shifted["zero"].mean, (query_ys.double() ** 2).mean(0).numpy(), rtol=1e-12
    )


# ---------------------------------------------------------------- bad input


def test_bad_input():
    preds, ys = random_preds(5, 4, 10)
    with pytest.raises(
        ValueError,
        match=(
            r"preds must be a tensor of shape \(batch, n_points\) = \(5, 4\), got \(5, "
            r"3\)"
        ),
    ):
        error_curve(preds[:, :3], ys, 1.0)
    with pytest.raises(ValueError, match=r"preds must be a tensor of shape .*got list"):
        squared_errors(preds.tolist(), ys)
    with pytest.raises(
        ValueError,
        match=r"ys must be a tensor of shape \(batch, n_points\), got \(20,\)",
    ):
        squared_errors(preds.reshape(-1), ys.reshape(-1))
    with pytest.raises(
        ValueError, match=r"ys must be a tensor of shape \(batch, n_points\), got list"
    ):
        squared_errors(preds, ys.tolist())
    with pytest.raises(ValueError, match=r"^normalizer must be a finite number > 0"):
        error_curve(preds, ys, 0.0)
    with pytest.raises(ValueError, match=r"^normalizer must be a finite number >= 0"):
        error_curve(preds, ys, -2.0)
    with pytest.raises(ValueError, match=r"^n_bootstrap must be a positive integer"):
        error_curve(preds, ys, 1.0, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"^level must lie in \[0, 1\]"):
        error_curve(preds, ys, 1.0, level=1.5)
    with pytest.raises(ValueError, match=r"^level must lie in \[0, 1\]"):
        bootstrap_band(squared_errors(preds, ys), level=-0.5)
    with pytest.raises(ValueError, match=r"xs must be a tensor of shape"):
        error_curves({"averaging": averaging}, preds, ys, 1.0)


def test_bootstrap_mean_is_the_mean_with_the_band_of_one_column():
    """bootstrap_mean(v) is (v.mean(), band) with the band bootstrap_band gives the
    column v[:, None] at the same resamples; the interval holds the mean, and a wider
    level gives a wider interval."""
    from icl_lib.evaluation import bootstrap_mean

    values = torch.randn(300, generator=torch.Generator().manual_seed(3)) ** 2
    mean, low, high = bootstrap_mean(values, n_bootstrap=800, seed=5)
    band_low, band_high = bootstrap_band(values[:, None], n_bootstrap=800, seed=5)
    assert mean == float(values.mean())
    assert (low, high) == (float(band_low[0]), float(band_high[0]))
    assert low < mean < high
    _, low99, high99 = bootstrap_mean(values, n_bootstrap=800, level=0.99, seed=5)
    assert low99 < low and high99 > high


def test_bootstrap_ratio_resamples_numerator_and_denominator_together_like_a_numpy_loop():
    """Against a plain loop: the same resampled rows (drawn as bootstrap_band draws
    them) for both means."""
    from icl_lib.evaluation import bootstrap_ratio

    g = torch.Generator().manual_seed(3)
    denominator = 1.0 + torch.rand(200, generator=g, dtype=torch.float64)
    numerator = 0.8 * denominator + 0.1 * torch.randn(
        200, generator=g, dtype=torch.float64
    )
    ratio, low, high = bootstrap_ratio(numerator, denominator, n_bootstrap=500, seed=4)
    rows = torch.randint(
        200, (500, 200), generator=torch.Generator().manual_seed(4)
    ).numpy()
    num, den = numerator.numpy(), denominator.numpy()
    draws = np.array([num[r].mean() / den[r].mean() for r in rows])
    np.testing.assert_allclose(
        [low, high], np.quantile(draws, [0.025, 0.975]), rtol=1e-12
    )
    assert ratio == pytest.approx(num.mean() / den.mean(), rel=1e-15)
    assert low < ratio < high
    # a numerator that follows the denominator closely gives a narrow interval around
    # 0.8
    assert 0.75 < low and high < 0.85


# The interval helpers against scipy: mean, standard error, normal and t intervals,
# paired differences.
def samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.gamma(2.0, 1.5, n)
    return a, 0.7 * a + rng.normal(0.0, 0.5, n)


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
@pytest.mark.parametrize("ddof", [0, 1])
def test_standard_error_is_scipys_sem_for_arrays_and_tensors(n, ddof):
    from icl_lib.evaluation import standard_error

    stats = pytest.importorskip("scipy.stats")
    values, _ = samples(n, n)
    expected = stats.sem(values, ddof=ddof)
    assert standard_error(values, ddof=ddof) == pytest.approx(expected, rel=1e-12)
    assert standard_error(torch.from_numpy(values), ddof=ddof) == pytest.approx(
        expected, rel=1e-12
    )
    # float32 tensors are read in float64; ints are numbers too
    assert standard_error(torch.from_numpy(values).float(), ddof=ddof) == pytest.approx(
        expected, rel=1e-6
    )
    assert isinstance(standard_error(values, ddof=ddof), float)


def test_standard_error_keeps_the_chapters_torch_and_numpy_numbers_bit_for_bit():
    from icl_lib.evaluation import standard_error

    values, _ = samples(1000, 1)
    tensor = torch.from_numpy(values)
    # chapter 2 (numpy, ddof 0) and chapter 6 (torch, ddof 1) computed them so
    assert standard_error(values, ddof=0) == values.std() / math.sqrt(1000)
    assert standard_error(tensor) == float(tensor.std() / math.sqrt(1000))
    assert standard_error(np.arange(5)) == pytest.approx(
        np.arange(5).std(ddof=1) / math.sqrt(5), rel=1e-15
    )


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 5, 10, 200])
def test_mean_interval_is_scipys_normal_and_t_interval(level, n):
    from icl_lib.evaluation import mean_interval

    stats = pytest.importorskip("scipy.stats")
    values, _ = samples(n, 100 + n)
    mean, sem = values.mean(), stats.sem(values)
    for method, expected in (
        ("normal", stats.norm.interval(level, loc=mean, scale=sem)),
        ("t", stats.t.interval(level, n - 1, loc=mean, scale=sem)),
    ):
        for given in (values, torch.from_numpy(values)):
            got = mean_interval(given, level=level, method=method)
            np.testing.assert_allclose(got, (mean, *expected), rtol=1e-12)
    # ddof=0: numpy's std
    _, low, high = mean_interval(values, level=level, ddof=0)
    assert high - low == pytest.approx(
        2 * stats.norm.ppf((1 + level) / 2) * values.std() / math.sqrt(n), rel=1e-12
    )


def test_the_normal_quantile_against_scipy():
    from icl_lib.evaluation import normal_quantile

    stats = pytest.importorskip("scipy.stats")
    for p in (1e-6, 0.025, 0.05, 0.3, 0.6, 0.975, 0.995, 0.9995, 1 - 1e-6):
        assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), rel=1e-13)


def test_t_interval_over_ten_seeds_is_chapter_3s():
    """Chapter 3's paired interval over 10 seeds: T_975 = scipy's t.ppf(0.975, 9), std
    with ddof 1."""
    from icl_lib.evaluation import paired_interval

    stats = pytest.importorskip("scipy.stats")
    a, b = samples(10, 3)
    differences = a - b
    half = stats.t.ppf(0.975, df=9) * differences.std(ddof=1) / math.sqrt(10)
    expected = (
        differences.mean(),
        differences.mean() - half,
        differences.mean() + half,
    )
    np.testing.assert_allclose(
        paired_interval(a, b, method="t"), expected, rtol=1e-14, atol=1e-15
    )


def test_paired_interval_is_the_interval_of_the_differences_and_narrower_than_unpaired():
    from icl_lib.evaluation import mean_interval, paired_interval

    stats = pytest.importorskip("scipy.stats")
    a, b = samples(400, 4)
    for method in ("normal", "t"):
        got = paired_interval(a, b, level=0.9, method=method)
        assert got == mean_interval(a - b, level=0.9, method=method)
        assert paired_interval(
            torch.from_numpy(a), torch.from_numpy(b), level=0.9, method=method
        ) == pytest.approx(got, rel=1e-12)
    mean, low, high = paired_interval(a, b)
    # a parameter is a tensor too
    weights = torch.nn.Parameter(torch.from_numpy(a))
    assert paired_interval(weights, torch.from_numpy(b)) == pytest.approx(
        (mean, low, high), rel=1e-12
    )
    np.testing.assert_allclose(
        (low, high),
        stats.norm.interval(0.95, loc=mean, scale=stats.sem(a - b)),
        rtol=1e-12,
    )
    # b follows a: the pairs' shared part cancels, so the paired interval is narrower
    # than the two means' widths
    _, low_a, high_a = mean_interval(a)
    _, low_b, high_b = mean_interval(b)
    assert high - low < 0.5 * ((high_a - low_a) + (high_b - low_b))


def test_mean_interval_covers_the_true_mean_at_its_level():
    from icl_lib.evaluation import mean_interval

    rng = np.random.default_rng(11)
    # 2000 experiments of 8 values: the t interval is exact
    draws = rng.normal(1.0, 2.0, (2000, 8))
    cover_t = np.mean(
        [
            low <= 1.0 <= high
            for _, low, high in (mean_interval(d, method="t") for d in draws)
        ]
    )
    cover_normal = np.mean(
        [low <= 1.0 <= high for _, low, high in (mean_interval(d) for d in draws)]
    )
    assert 0.93 <= cover_t <= 0.97, cover_t
    assert cover_normal < cover_t  # with 8 values the normal interval is too narrow


def test_bootstrap_band_is_a_percentile_bootstrap_like_a_numpy_loop_and_scipys():
    """bootstrap_band against a plain numpy loop over the same resampled rows, and
    against scipy.stats.bootstrap's percentile interval (other draws: agreement to a few
    percent of the width)."""
    stats = pytest.importorskip("scipy.stats")
    errors = squared_errors(*random_preds(300, 3, 12))
    low, high = bootstrap_band(errors, n_bootstrap=800, level=0.9, seed=5)
    rows = torch.randint(
        300, (800, 300), generator=torch.Generator().manual_seed(5)
    ).numpy()
    values = errors.numpy()
    means = np.stack([values[r].mean(0) for r in rows])
    np.testing.assert_allclose(low, np.quantile(means, 0.05, axis=0), rtol=1e-12)
    np.testing.assert_allclose(high, np.quantile(means, 0.95, axis=0), rtol=1e-12)
    for k in range(3):
        scipys = stats.bootstrap(
            (values[:, k],),
            np.mean,
            confidence_level=0.9,
            n_resamples=4000,
            method="percentile",
            rng=np.random.default_rng(k),
        ).confidence_interval
        width = scipys.high - scipys.low
        assert (
            abs(low[k] - scipys.low) < 0.1 * width
            and abs(high[k] - scipys.high) < 0.1 * width
        )


def test_interval_helpers_bad_input():
    from icl_lib.evaluation import (
        mean_interval,
        paired_interval,
        standard_error,
        t_quantile,
    )

    values = np.arange(4.0)
    with pytest.raises(
        ValueError,
        match=r"^values must have shape \(n,\) with n >= 2 \(ddof = 1\), got \(1,\)$",
    ):
        standard_error(np.ones(1))
    with pytest.raises(
        ValueError,
        match=r"^values must have shape \(n,\) with n >= 1 \(ddof = 0\), got \(0,\)$",
    ):
        mean_interval(torch.zeros(0), ddof=0)
    with pytest.raises(
        ValueError,
        match=r"^values must have shape \(n,\) with n >= 2 \(ddof = 1\), got \(2, 2\)$",
    ):
        standard_error(torch.ones(2, 2))
    with pytest.raises(
        ValueError,
        match=(
            r"^values must be a 1-d torch tensor or numpy array of numbers, got list$"
        ),
    ):
        standard_error([1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"^values must hold finite numbers, got 2 nan or inf entries$"
    ):
        mean_interval(np.array([1.0, np.nan, np.inf]))
    with pytest.raises(
        ValueError, match=r"^level must be a number in \(0, 1\), got 1.0$"
    ):
        mean_interval(values, level=1.0)
    with pytest.raises(
        ValueError, match=r"^level must be a number in \(0, 1\), got 95$"
    ):
        mean_interval(values, level=95)
    with pytest.raises(
        ValueError, match=r"^level must be a number in \(0, 1\), got '0.95'$"
    ):
        paired_interval(values, values, level="0.95")
    with pytest.raises(
        ValueError, match=r"^method must be one of 'normal', 't'; got 'bootstrap'$"
    ):
        mean_interval(values, method="bootstrap")
    with pytest.raises(
        ValueError, match=r"^ddof must be a non-negative integer \(>= 0\), got -1$"
    ):
        standard_error(values, ddof=-1)
    with pytest.raises(
        ValueError,
        match=r"^a and b must be two torch tensors or two numpy arrays of one shape",
    ):
        paired_interval(values, values[:3])
    with pytest.raises(
        ValueError,
        match=(
            r"^a and b must be two torch tensors or two numpy arrays .* ndarray \(4,\) "
            r"and Tensor \(4,\)$"
        ),
    ):
        paired_interval(values, torch.from_numpy(values))
    with pytest.raises(
        ValueError, match=r"^df must be a positive integer \(>= 1\), got 0$"
    ):
        t_quantile(0.9, 0)
    # the t interval needs two values even with ddof=0
    with pytest.raises(ValueError, match=r"^values must have shape \(n,\) with n >= 2"):
        mean_interval(np.ones(1), method="t", ddof=0)


def test_label_prefers_the_chapters_override_and_falls_back_to_the_style_table():
    overrides = {"lasso": "lasso (α = 0.1)"}
    assert evaluation.label("lasso", overrides) == "lasso (α = 0.1)"
    assert evaluation.label("least_squares", overrides) == STYLES["least_squares"].label
    assert evaluation.label("least_squares") == STYLES["least_squares"].label
