"""The helpers chapter 2 measures with, against independent references: explicit numpy
sums and loops, icl_lib.baselines' least squares, the LSA at the theorem's weights, the
rate 2 sqrt(d) of the isotropic flow, and moments of directly sampled Gram matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icl_lib import baselines, evaluation, models, shifts, tasks, theory
from icl_lib.devices import make_generator


def prompts(batch: int, n_points: int, d: int, seed: int = 0):
    generator = make_generator(seed)
    xs = torch.randn(batch, n_points, d, generator=generator, dtype=torch.float64)
    return xs, tasks.DenseLinear().sample(xs, generator).ys


# ----------------------------------------------------- icl_lib.theory


def test_gd_prediction_is_the_explicit_preconditioned_step():
    xs, ys = prompts(7, 6, 3)
    preconditioner = np.array([[2.0, 0.5, 0.0], [0.1, 1.0, 0.3], [0.0, -0.4, 0.7]])
    x, y = xs.numpy(), ys.numpy()
    expected = [
        x[b, -1] @ preconditioner @ sum(y[b, i] * x[b, i] for i in range(5)) / 5
        for b in range(7)
    ]
    got = theory.gd_prediction(xs, ys, preconditioner)
    assert got.dtype == torch.float64 and got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_gd_prediction_with_gamma_inverse_is_the_lsa_at_the_theorem_weights():
    lam, n = np.diag([0.5, 1.0, 2.0]), 10
    w_kq, w_pv = (torch.from_numpy(w) for w in theory.optimal_weights(lam, n))
    exact = models.LinearSelfAttention.from_weights(w_kq, w_pv)
    xs, ys = prompts(50, 9, 3, seed=1)
    with torch.no_grad():
        layer = exact(xs, ys)[:, 0]
    np.testing.assert_allclose(
        theory.gd_prediction(xs, ys, theory.gamma_inverse(lam, n)).numpy(),
        layer.numpy(),
        rtol=1e-10,
        atol=1e-12,
    )


def test_linearised_rates_of_the_isotropic_flow():
    # Lambda = I: the excited rate is 2 sqrt(d) (the flow along U* ~ (1, ..., 1)), the
    # other d - 1 rates are u*^2 gamma, and u*^2 = sqrt(tr Gamma^-2)
    d, n = 4, 10
    rates, u2_star, lam_eigen, gamma_eigen = theory.linearised_flow_rates(np.eye(d), n)
    gamma_value = (n + d + 1) / n
    assert u2_star == pytest.approx(math.sqrt(d) / gamma_value, rel=1e-12)
    np.testing.assert_allclose(lam_eigen, np.ones(d))
    np.testing.assert_allclose(gamma_eigen, np.full(d, gamma_value), rtol=1e-12)
    np.testing.assert_allclose(
        rates, [u2_star * gamma_value] * (d - 1) + [2 * math.sqrt(d)], rtol=1e-12
    )


def test_linearised_rates_match_the_simulated_flow():
    lam, n = np.diag([0.5, 1.0, 2.0]), 5
    flow = theory.simulate_reduced_flow(lam, n, sigma=0.1, t_max=120.0, n_steps=12000)
    target = theory.gamma_inverse(lam, n)
    distance = np.linalg.norm(flow.product - target, axis=(1, 2))
    late = (distance > 1e-10) & (distance < 1e-5)
    measured = -np.polyfit(flow.times[late], np.log(distance[late]), 1)[0]
    rates = theory.linearised_flow_rates(lam, n).rates
    assert measured == pytest.approx(rates[0], rel=1e-3)
    np.testing.assert_allclose(
        theory.linearised_flow_rates(lam, n).gamma_eigen,
        np.linalg.eigvalsh(theory.gamma(lam, n)),
        rtol=1e-12,
    )


def test_wishart_second_moments_have_the_moments_of_sampled_gram_matrices():
    # S = (1/M) sum_i x_i x_i^T with x_i ~ N(0, I_d): E S = I, Var S_pp = 2/M, Var S_pq
    # = 1/M; and the draws depend on M only through their law
    d, m, n_prompts = 3, 8, 200_000
    s = theory.wishart_second_moments(m, n_prompts, d, np.random.default_rng(0))
    assert s.shape == (n_prompts, d, d)
    np.testing.assert_allclose(s, s.transpose(0, 2, 1), atol=1e-14)
    np.testing.assert_allclose(s.mean(0), np.eye(d), atol=0.01)
    variance = s.var(0)
    expected = np.full((d, d), 1 / m) + np.eye(d) / m
    np.testing.assert_allclose(variance, expected, rtol=0.03)
    x = np.random.default_rng(1).standard_normal((20_000, m, d))
    direct = np.einsum("bmi,bmj->bij", x, x) / m
    np.testing.assert_allclose(direct.var(0), expected, rtol=0.05)


def test_lsa_product_and_off_block_size_read_the_weights():
    w_kq, w_pv = (torch.from_numpy(w) for w in theory.optimal_weights(np.eye(3), 10))
    model = models.LinearSelfAttention.from_weights(w_kq, w_pv)
    np.testing.assert_allclose(
        theory.lsa_product(model), theory.gamma_inverse(np.eye(3), 10), rtol=1e-12
    )
    assert theory.off_block_size(model) == 0.0
    with torch.no_grad():
        model.w_kq[1, -1] = -0.25  # the query's label slot, which flow keeps at 0
        model.w_pv[0, 2] = 0.125
    assert theory.off_block_size(model) == 0.25


# ----------------------------------------------------- icl_lib.shifts


def test_axis_orthogonal_query_keeps_the_rest_of_the_prompt():
    xs, _ = prompts(5, 4, 3)
    shifted = shifts.axis_orthogonal_query(xs)
    assert torch.equal(shifted[:, :-1, :-1], xs[:, :-1, :-1])
    assert torch.equal(shifted[:, -1, -1], xs[:, -1, -1])
    assert not shifted[:, :-1, -1].any() and not shifted[:, -1, :-1].any()
    assert xs[:, :-1, -1].all(), "the input must not change"


def test_least_squares_at_query_is_the_baseline_at_its_last_position():
    for n_points in (3, 8):  # under- and over-determined, d = 4
        xs, ys = prompts(16, n_points, 4, seed=n_points)
        torch.testing.assert_close(
            shifts.least_squares_at_query(xs, ys),
            baselines.least_squares(xs, ys)[:, -1],
            rtol=0,
            atol=1e-10,
        )


def test_prediction_at_query_is_the_model_at_the_query():
    model = models.LinearSelfAttention(3, sigma=0.5)
    xs, ys = prompts(6, 5, 3)
    with torch.no_grad():
        direct = model(xs.float(), ys.float())[:, -1].double()
    got = shifts.prediction_at_query(model, xs, ys)
    assert got.dtype == torch.float64 and got.shape == (6,)
    torch.testing.assert_close(got, direct)
    torch.testing.assert_close(got, evaluation.as_predictor(model)(xs, ys)[:, -1])


def test_slope_and_normalised_error_against_numpy():
    generator = np.random.default_rng(3)
    truth = generator.standard_normal(500)
    preds = 0.7 * truth + 0.2 * generator.standard_normal(500)
    slope = np.linalg.lstsq(truth[:, None], preds, rcond=None)[0][0]
    assert evaluation.regression_slope(
        torch.from_numpy(preds), torch.from_numpy(truth)
    ) == pytest.approx(slope, rel=1e-12)
    error = np.sum((preds - truth) ** 2) / np.sum(truth**2)
    assert evaluation.normalised_error(
        torch.from_numpy(preds), torch.from_numpy(truth)
    ) == pytest.approx(error, rel=1e-12)
    zero = torch.zeros(500, dtype=torch.float64)
    assert evaluation.normalised_error(zero, torch.from_numpy(truth)) == 1.0
    # numpy arrays are scored by numpy, to the same numbers
    assert evaluation.regression_slope(preds, truth) == pytest.approx(slope, rel=1e-12)
    assert evaluation.normalised_error(preds, truth) == pytest.approx(error, rel=1e-12)
