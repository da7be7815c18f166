"""Baselines against independent references: numpy least squares and ridge, scikit-learn
lasso, k-NN and linear regression, explicit loops for averaging and one-step GD, a
brute-force Bayes posterior for the dense + sparse mixture and a numpy loop for the
posterior mean over a finite pool of tasks (dMMSE). Every reference fits one prompt and
one prefix length k at a time."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LinearRegression
from sklearn.neighbors import KNeighborsRegressor

from icl_lib import baselines
from icl_lib.baselines import (
    averaging,
    bayes_dense_sparse_mixture,
    bayes_linear,
    dense_sparse_posterior_probability,
    dmmse,
    gd_one_step,
    knn,
    lasso,
    least_squares,
    oracle_least_squares,
    ridge,
)
from icl_lib.devices import make_generator
from icl_lib.samplers import gaussian_xs
from icl_lib.tasks import DenseLinear, FinitePoolLinear, SparseLinear


# ===================== data


def noisy_linear_prompts(batch: int, n_points: int, d: int, noise: float, seed: int):
    """Dense linear prompts with N(0, noise^2) label noise, float64."""
    g = make_generator(seed)
    xs = torch.randn(batch, n_points, d, generator=g, dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    ys = torch.einsum("bnd,bd->bn", xs, w) + noise * torch.randn(
        batch, n_points, generator=g, dtype=torch.float64
    )
    return xs, ys


def sparse_prompts(batch: int, n_points: int, d: int, k: int, noise: float, seed: int):
    g = make_generator(seed)
    xs = gaussian_xs(batch, n_points, d, g, dtype=torch.float64)
    sample = SparseLinear(k=k).sample(xs, g)
    ys = sample.ys + noise * torch.randn(
        batch, n_points, generator=g, dtype=torch.float64
    )
    return xs, ys, sample.params["support"]


def mixture_prompts(
    batch: int, n_points: int, d: int, k_sparse: int, noise: float, seed: int
):
    """Half the prompts dense, half k_sparse-sparse (alternating), with label noise."""
    g = make_generator(seed)
    xs = gaussian_xs(batch, n_points, d, g, dtype=torch.float64)
    dense = DenseLinear().sample(xs, g).ys
    sparse = SparseLinear(k=k_sparse).sample(xs, g).ys
    is_sparse = (torch.arange(batch) % 2 == 1)[:, None]
    ys = torch.where(is_sparse, sparse, dense) + noise * torch.randn(
        batch, n_points, generator=g, dtype=torch.float64
    )
    return xs, ys


# ===================== independent references (one prompt, one k)


def per_prefix(xs: torch.Tensor, ys: torch.Tensor, fit_predict) -> np.ndarray:
    """``preds[b, k] = fit_predict(X_k, y_k, x_k)`` for k >= 1 and 0 for k = 0, by
    explicit loops."""
    x, y = xs.double().numpy(), ys.double().numpy()
    preds = np.zeros(y.shape)
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            preds[b, k] = fit_predict(x[b, :k], y[b, :k], x[b, k])
    return preds


def ref_least_squares(X, y, q):
    return q @ np.linalg.lstsq(X, y, rcond=None)[0]


def ref_pinv(X, y, q):
    return q @ (np.linalg.pinv(X) @ y)


def ref_ridge(penalty):
    def fit_predict(X, y, q):
        return q @ np.linalg.solve(X.T @ X + penalty * np.eye(X.shape[1]), X.T @ y)

    return fit_predict


def ref_gd(learning_rate, preconditioner=None):
    def fit_predict(X, y, q):
        gradient_direction = np.zeros(X.shape[1])
        for i in range(X.shape[0]):
            gradient_direction += y[i] * X[i]
        gradient_direction /= X.shape[0]
        P = np.eye(X.shape[1]) if preconditioner is None else preconditioner
        return q @ (learning_rate * (P @ gradient_direction))

    return fit_predict


def ref_knn(n_neighbors):
    def fit_predict(X, y, q):
        model = KNeighborsRegressor(n_neighbors=min(n_neighbors, X.shape[0])).fit(X, y)
        return model.predict(q[None, :])[0]

    return fit_predict


def ref_lasso_at(xs: torch.Tensor, ys: torch.Tensor, alpha: float, ks) -> np.ndarray:
    x, y = xs.numpy(), ys.numpy()
    preds = np.zeros((x.shape[0], len(ks)))
    for b in range(x.shape[0]):
        for j, k in enumerate(ks):
            model = Lasso(
                alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**6
            ).fit(x[b, :k], y[b, :k])
            preds[b, j] = x[b, k] @ model.coef_
    return preds


def ref_oracle(xs, ys, support) -> np.ndarray:
    x, y, s = xs.numpy(), ys.numpy(), support.numpy()
    preds = np.zeros(y.shape)
    for b in range(x.shape[0]):
        columns = np.flatnonzero(s[b])
        for k in range(1, x.shape[1]):
            X, q = x[b, :k][:, columns], x[b, k, columns]
            if k >= len(columns):  # determined: ordinary least squares on the support
                coef = LinearRegression(fit_intercept=False).fit(X, y[b, :k]).coef_
            else:  # under-determined: the minimum-norm solution
                coef = np.linalg.lstsq(X, y[b, :k], rcond=None)[0]
            preds[b, k] = q @ coef
    return preds


def log_gaussian(y: np.ndarray, cov: np.ndarray) -> float:
    """log N(y; 0, cov), in full: slogdet and solve of the k x k covariance."""
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (
        len(y) * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)
    )


def ref_dense_sparse(xs, ys, p_sparse, k_sparse, noise_std):
    """Brute-force posterior over {dense} and every support of size k_sparse: (preds,
    P(sparse))."""
    x, y = xs.numpy(), ys.numpy()
    batch, n_points, d = x.shape
    supports = [np.arange(d)] + [
        np.array(s) for s in itertools.combinations(range(d), k_sparse)
    ]
    n_sparse = len(supports) - 1
    with np.errstate(divide="ignore"):
        log_prior = np.array(
            [np.log(1 - p_sparse)] + [np.log(p_sparse / n_sparse)] * n_sparse
        )
    preds = np.zeros((batch, n_points))
    probability = np.full((batch, n_points), float(p_sparse))
    for b in range(batch):
        for k in range(1, n_points):
            X, target, q = x[b, :k], y[b, :k], x[b, k]
            log_post, model_preds = [], []
            for S in supports:
                XS = X[:, S]
                cov = XS @ XS.T + noise_std**2 * np.eye(k)
                log_post.append(log_gaussian(target, cov))
                # posterior mean of the weights on S
                mean = XS.T @ np.linalg.solve(cov, target)
                model_preds.append(q[S] @ mean)
            log_post = np.array(log_post) + log_prior
            finite = np.isfinite(log_post)
            post = np.zeros_like(log_post)
            post[finite] = np.exp(log_post[finite] - log_post[finite].max())
            post /= post.sum()
            preds[b, k] = post @ np.array(model_preds)
            probability[b, k] = post[1:].sum()
    return preds, probability


# ===================== least squares, ridge, Bayes linear


def test_least_squares_matches_lstsq_and_pinv_per_prefix():
    xs, ys = noisy_linear_prompts(5, 12, 4, noise=0.3, seed=1)
    preds = least_squares(xs, ys).numpy()
    np.testing.assert_allclose(
        preds, per_prefix(xs, ys, ref_least_squares), rtol=1e-8, atol=1e-8
    )
    np.testing.assert_allclose(
        preds, per_prefix(xs, ys, ref_pinv), rtol=1e-8, atol=1e-8
    )


def test_min_norm_least_squares_error_is_one_minus_k_over_d_below_d_and_zero_above():
    d, batch = 5, 3000
    xs, ys = noisy_linear_prompts(batch, 9, d, noise=0.0, seed=2)
    errors = ((least_squares(xs, ys) - ys) ** 2 / d).numpy()  # normalised by E[y^2] = d
    mean = errors.mean(0)
    standard_error = errors.std(0) / math.sqrt(batch)
    for k in range(d):
        expected = (d - k) / d
        assert abs(mean[k] - expected) < max(4 * standard_error[k], 1e-12), (
            k,
            mean[k],
            expected,
        )
        assert abs(mean[k] - expected) < 0.06
    assert errors[:, d:].max() < 1e-8


def test_ridge_matches_closed_form():
    xs, ys = noisy_linear_prompts(4, 10, 3, noise=0.5, seed=3)
    for penalty in (0.01, 0.7, 25.0):
        np.testing.assert_allclose(
            ridge(xs, ys, penalty).numpy(),
            per_prefix(xs, ys, ref_ridge(penalty)),
            rtol=1e-9,
            atol=1e-10,
        )


def test_bayes_linear_is_ridge_with_noise_to_prior_ratio_and_least_squares_without_noise():
    xs, ys = noisy_linear_prompts(4, 10, 3, noise=0.5, seed=4)
    np.testing.assert_allclose(
        bayes_linear(xs, ys, noise_std=0.5, prior_std=2.0).numpy(),
        per_prefix(xs, ys, ref_ridge((0.5 / 2.0) ** 2)),
        rtol=1e-9,
        atol=1e-10,
    )
    np.testing.assert_allclose(
        bayes_linear(xs, ys, noise_std=0.0).numpy(),
        per_prefix(xs, ys, ref_least_squares),
        rtol=1e-8,
        atol=1e-8,
    )


def test_ridge_with_vanishing_penalty_approaches_least_squares():
    xs, ys = noisy_linear_prompts(4, 10, 3, noise=0.5, seed=5)
    # the gap is of order penalty / sigma_min(X_k)^2 (sigma_min about 0.05 here at
    # k = d = 3)
    np.testing.assert_allclose(
        ridge(xs, ys, 1e-9).numpy(), least_squares(xs, ys).numpy(), atol=1e-4
    )
    assert (
        np.abs(ridge(xs, ys, 1.0).numpy() - least_squares(xs, ys).numpy()).max() > 1e-2
    )


# ===================== lasso


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_lasso_matches_scikit_learn_on_several_prefixes(alpha):
    d = 5
    xs, ys, _ = sparse_prompts(3, 12, d, k=2, noise=0.1, seed=6)
    ks = [1, 2, 3, 4, 5, 6, 8, 11]  # k < d, k = d and k > d
    preds = lasso(xs, ys, alpha=alpha).numpy()
    np.testing.assert_allclose(
        preds[:, ks], ref_lasso_at(xs, ys, alpha, ks), atol=1e-4, rtol=0
    )
    assert np.all(preds[:, 0] == 0)


def lasso_weights(xs: torch.Tensor, ys: torch.Tensor, alpha: float) -> np.ndarray:
    """``w[b, k]: (d,)``, read through the public API: the prediction at k for the query
    e_j is w_k[j].

    One prompt per (b, k, j): row k replaced by e_j, which changes no prefix before k
    (causality is tested below) and makes the prediction at k the j-th weight fitted on
    the first k examples.
    """
    batch, n_points, d = xs.shape
    # (batch, k, j, n_points, d)
    probes = xs[:, None, None].repeat(1, n_points, d, 1, 1)
    for k in range(n_points):
        probes[:, k, :, k, :] = torch.eye(d, dtype=xs.dtype)
    labels = ys[:, None, None].expand(-1, n_points, d, -1)
    preds = lasso(
        probes.reshape(-1, n_points, d), labels.reshape(-1, n_points), alpha
    ).reshape(batch, n_points, d, n_points)
    # (batch, k, j)
    return torch.diagonal(preds, dim1=1, dim2=3).permute(0, 2, 1).numpy()


def lasso_objective(X, y, w, alpha):
    return 0.5 * np.sum((y - X @ w) ** 2) / len(y) + alpha * np.abs(w).sum()


@settings(max_examples=20)
@given(
    seed=st.integers(0, 10**6),
    n_points=st.integers(2, 9),
    d=st.integers(1, 5),
    alpha=st.sampled_from([0.005, 0.05, 0.3, 1.0]),
    scale=st.sampled_from([0.01, 1.0, 100.0]),
)
# A path on which a coordinate leaves the active set and rounding let it re-join at once
# with its old sign: the solution at k = d = 3 then had w_3 < 0 with gradient +alpha
# (fixed by clamping the join gaps at 0).
@example(seed=0, n_points=6, d=3, alpha=0.005, scale=100.0)
def test_lasso_is_optimal_on_random_problems(seed, n_points, d, alpha, scale):
    """Every prefix (k below and above d), several scales: the KKT conditions hold, the
    objective is no worse than scikit-learn's, and the predictions agree with
    scikit-learn wherever it reports convergence (at tiny alpha and k < d its coordinate
    descent can stall even after 10^6 iterations; the KKT check covers those)."""
    xs, ys = noisy_linear_prompts(2, n_points, d, noise=0.2, seed=seed)
    # alpha is in the units of x y, so this moves it along the path too
    xs, ys = (scale * xs, scale * ys)
    preds = lasso(xs, ys, alpha=alpha).numpy()
    weights = lasso_weights(xs, ys, alpha)
    x, y = xs.numpy(), ys.numpy()
    tolerance = 1e-9 * max(1.0, scale**2)
    for b in range(x.shape[0]):
        for k in range(1, n_points):
            X, target, w = x[b, :k], y[b, :k], weights[b, k]
            assert preds[b, k] == pytest.approx(
                x[b, k] @ w, rel=1e-9, abs=1e-9 * max(1.0, scale**2)
            )
            # KKT: |g_j| <= alpha, and g_j = alpha sign(w_j) where w_j != 0
            gradient = X.T @ (target - X @ w) / k
            assert np.all(np.abs(gradient) <= alpha + tolerance), (k, gradient)
            nonzero = w != 0
            np.testing.assert_allclose(
                gradient[nonzero], alpha * np.sign(w[nonzero]), atol=tolerance, rtol=0
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                reference = Lasso(
                    alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**5
                ).fit(X, target)
            assert (
                lasso_objective(X, target, w, alpha)
                <= lasso_objective(X, target, reference.coef_, alpha) + 1e-12
            )
            if not any(issubclass(c.category, ConvergenceWarning) for c in caught):
                assert preds[b, k] == pytest.approx(
                    x[b, k] @ reference.coef_, abs=1e-4 * max(1.0, scale)
                )


@pytest.mark.parametrize("s", [1e-6, 1e-3, 1e3])
def test_lasso_is_scale_equivariant(s):
    # (1/2k)||s y - s X w||^2 + s^2 alpha ||w||_1 is s^2 times the original objective:
    # same w, predictions times s
    xs, ys = noisy_linear_prompts(3, 9, 4, noise=0.1, seed=24)
    for alpha in (0.005, 0.1):
        np.testing.assert_allclose(
            lasso(s * xs, s * ys, alpha * s**2).numpy() / s,
            lasso(xs, ys, alpha).numpy(),
            rtol=1e-7,
            atol=1e-9,
        )


def test_lasso_reports_a_path_cut_short():
    xs, ys = noisy_linear_prompts(2, 10, 5, noise=0.1, seed=23)
    with pytest.raises(
        RuntimeError, match=r"lasso path did not reach alpha = 0.001 in max_steps = 1"
    ):
        lasso(xs, ys, alpha=0.001, max_steps=1)


def test_lasso_with_large_alpha_predicts_zero():
    xs, ys = noisy_linear_prompts(3, 8, 4, noise=0.1, seed=7)
    # alpha above max_j |X^T y|_j / k everywhere: all coefficients are exactly zero
    assert np.all(lasso(xs, ys, alpha=1e6).numpy() == 0)


# ===================== oracle, k-NN, averaging, one-step GD


def test_oracle_matches_linear_regression_on_the_true_support():
    xs, ys, support = sparse_prompts(4, 9, 6, k=3, noise=0.2, seed=8)
    np.testing.assert_allclose(
        oracle_least_squares(xs, ys, support).numpy(),
        ref_oracle(xs, ys, support),
        rtol=1e-8,
        atol=1e-8,
    )


def test_oracle_recovers_noiseless_sparse_functions_from_k_examples():
    xs, ys, support = sparse_prompts(20, 9, 6, k=3, noise=0.0, seed=9)
    errors = (oracle_least_squares(xs, ys, support) - ys).abs().numpy()
    # exact from k = 3 examples on, long before k = d = 6
    assert errors[:, 3:].max() < 1e-8
    assert errors[:, 1:3].max() > 1e-3


@pytest.mark.parametrize("n_neighbors", [1, 3, 5])
def test_knn_matches_scikit_learn_per_prefix(n_neighbors):
    xs, ys = noisy_linear_prompts(4, 12, 3, noise=0.1, seed=10)
    np.testing.assert_allclose(
        knn(xs, ys, n_neighbors=n_neighbors).numpy(),
        per_prefix(xs, ys, ref_knn(n_neighbors)),
        rtol=1e-12,
        atol=1e-12,
    )


def test_knn_default_is_three_neighbours():
    xs, ys = noisy_linear_prompts(3, 8, 2, noise=0.1, seed=11)
    np.testing.assert_allclose(
        knn(xs, ys).numpy(), per_prefix(xs, ys, ref_knn(3)), atol=1e-12
    )


def test_averaging_is_the_mean_of_y_x_applied_to_the_query():
    xs, ys = noisy_linear_prompts(4, 10, 3, noise=0.1, seed=12)
    np.testing.assert_allclose(
        averaging(xs, ys).numpy(),
        per_prefix(xs, ys, ref_gd(1.0)),
        rtol=1e-10,
        atol=1e-12,
    )


def test_gd_one_step_with_and_without_preconditioner():
    xs, ys = noisy_linear_prompts(4, 10, 3, noise=0.1, seed=13)
    np.testing.assert_allclose(
        gd_one_step(xs, ys, learning_rate=0.37).numpy(),
        per_prefix(xs, ys, ref_gd(0.37)),
        rtol=1e-10,
        atol=1e-12,
    )
    # a non-symmetric preconditioner catches a transposed application
    P = np.array([[1.0, 0.5, 0.0], [-0.2, 2.0, 0.3], [0.4, 0.0, 0.5]])
    preds = gd_one_step(
        xs, ys, learning_rate=0.37, preconditioner=torch.tensor(P)
    ).numpy()
    np.testing.assert_allclose(
        preds, per_prefix(xs, ys, ref_gd(0.37, P)), rtol=1e-10, atol=1e-12
    )
    assert np.abs(preds - per_prefix(xs, ys, ref_gd(0.37, P.T))).max() > 1e-3
    # float32 preconditioner with float64 prompts works too
    np.testing.assert_allclose(
        gd_one_step(xs, ys, 0.37, torch.tensor(P, dtype=torch.float32)).numpy(),
        per_prefix(xs, ys, ref_gd(0.37, P.astype(np.float32).astype(np.float64))),
        rtol=1e-10,
        atol=1e-12,
    )


# ===================== Bayes for the dense + sparse mixture


@pytest.mark.parametrize("noise_std", [0.1, 0.01])
@pytest.mark.parametrize("p_sparse", [0.5, 0.2])
def test_dense_sparse_mixture_matches_brute_force_posterior(noise_std, p_sparse):
    d, k_sparse = 4, 2
    xs, ys = mixture_prompts(4, 8, d, k_sparse, noise=noise_std, seed=14)
    expected_preds, expected_probability = ref_dense_sparse(
        xs, ys, p_sparse, k_sparse, noise_std
    )
    preds = bayes_dense_sparse_mixture(xs, ys, p_sparse, k_sparse, noise_std).numpy()
    probability = dense_sparse_posterior_probability(
        xs, ys, p_sparse, k_sparse, noise_std
    ).numpy()
    np.testing.assert_allclose(preds, expected_preds, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(probability, expected_probability, rtol=1e-7, atol=1e-9)
    assert np.all(probability[:, 0] == p_sparse)
    # the posterior moves towards the truth (odd rows are sparse), decisively when the
    # noise is small
    assert np.all(probability[1::2, -1] > p_sparse) and np.all(
        probability[0::2, -1] < p_sparse
    )
    if noise_std == 0.01:
        assert np.all(probability[1::2, -1] > 0.9) and np.all(
            probability[0::2, -1] < 0.1
        )


def test_dense_sparse_mixture_with_only_sparse_prior_matches_brute_force():
    xs, ys = mixture_prompts(2, 7, 4, 1, noise=0.1, seed=15)
    expected_preds, expected_probability = ref_dense_sparse(xs, ys, 1.0, 1, 0.1)
    np.testing.assert_allclose(
        bayes_dense_sparse_mixture(xs, ys, 1.0, 1, 0.1).numpy(),
        expected_preds,
        rtol=1e-7,
        atol=1e-8,
    )
    np.testing.assert_allclose(
        dense_sparse_posterior_probability(xs, ys, 1.0, 1, 0.1).numpy(),
        1.0,
        rtol=0,
        atol=1e-12,
    )
    np.testing.assert_allclose(expected_probability, 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise_std", [0.1, 0.01])
def test_dense_sparse_mixture_without_sparse_prior_is_bayes_dense(noise_std):
    xs, ys = mixture_prompts(4, 9, 4, 2, noise=noise_std, seed=16)
    preds = bayes_dense_sparse_mixture(xs, ys, 0.0, 2, noise_std).numpy()
    np.testing.assert_allclose(
        preds, per_prefix(xs, ys, ref_ridge(noise_std**2)), rtol=1e-8, atol=1e-10
    )
    assert np.all(
        dense_sparse_posterior_probability(xs, ys, 0.0, 2, noise_std).numpy() == 0.0
    )


def test_dense_sparse_mixture_on_nearly_noiseless_sparse_data_is_close_to_the_oracle():
    d, k_sparse, noise_std = 5, 2, 1e-3
    xs, ys, support = sparse_prompts(12, 10, d, k=k_sparse, noise=noise_std, seed=17)
    preds = bayes_dense_sparse_mixture(xs, ys, 0.5, k_sparse, noise_std).numpy()
    oracle = ref_oracle(xs, ys, support)
    later = slice(k_sparse + 2, None)
    assert np.abs(preds[:, later] - oracle[:, later]).max() < 1e-3
    # and, measured against the labels, it is as good as the oracle: error of order
    # noise_std
    assert np.abs(preds[:, later] - ys.numpy()[:, later]).max() < 2e-2
    # while between k_sparse + 2 and d a dense fit (least squares) is still far off
    between = slice(k_sparse + 2, d)
    assert (
        np.abs(least_squares(xs, ys).numpy()[:, between] - ys.numpy()[:, between]).max()
        > 0.1
    )


# ===================== dMMSE: the posterior mean over a finite pool


def np_dmmse(
    xs: np.ndarray, ys: np.ndarray, pool: np.ndarray, noise_std: float
) -> np.ndarray:
    """The posterior mean over the pool, one prompt and one prefix at a time, with
    Python loops over the tasks."""
    batch, n_points, _ = xs.shape
    preds = np.zeros((batch, n_points))
    for b in range(batch):
        for k in range(n_points):
            logs = []
            for w in pool:
                residuals = [ys[b, i] - float(np.dot(xs[b, i], w)) for i in range(k)]
                logs.append(-sum(r * r for r in residuals) / (2 * noise_std**2))
            logs = np.array(logs)
            weights = np.exp(logs - logs.max())
            weights /= weights.sum()
            preds[b, k] = sum(
                p * float(np.dot(xs[b, k], w)) for p, w in zip(weights, pool)
            )
    return preds


def pool_prompts(
    batch: int,
    n_points: int,
    d: int,
    pool_size: int,
    noise_std: float,
    draw: str,
    seed: int,
):
    task = FinitePoolLinear(
        pool_size=pool_size, pool_seed=seed + 1, noise_std=noise_std, draw=draw
    )
    g = make_generator(seed)
    xs = gaussian_xs(batch, n_points, d, g, dtype=torch.float64)
    sample = task.sample(xs, g)
    return (
        xs,
        sample.ys,
        task.pool(d),
        torch.einsum("bnd,bd->bn", xs, sample.params["w"]),
    )


@pytest.mark.parametrize(
    "pool_size, noise_std, draw",
    [(1, 0.5, "pool"), (5, 0.5, "pool"), (7, 0.1, "gaussian"), (12, 2.0, "gaussian")],
)
def test_dmmse_matches_a_numpy_loop_over_prompts_prefixes_and_tasks(
    pool_size, noise_std, draw
):
    xs, ys, pool, _ = pool_prompts(4, 9, 3, pool_size, noise_std, draw, seed=31)
    expected = np_dmmse(xs.numpy(), ys.numpy(), pool.numpy(), noise_std)
    np.testing.assert_allclose(
        dmmse(xs, ys, pool, noise_std).numpy(), expected, rtol=1e-10, atol=1e-12
    )
    # in small chunks of prompts, the same numbers
    np.testing.assert_allclose(
        dmmse(xs, ys, pool, noise_std, max_elements=1).numpy(),
        expected,
        rtol=1e-10,
        atol=1e-12,
    )


def test_dmmse_without_examples_predicts_the_pool_mean_and_with_one_task_that_task():
    xs, ys, pool, _ = pool_prompts(3, 5, 4, 6, 0.5, "pool", seed=32)
    np.testing.assert_allclose(
        dmmse(xs, ys, pool, 0.5)[:, 0].numpy(),
        xs[:, 0].numpy() @ pool.numpy().mean(0),
        rtol=1e-12,
    )
    one = pool[:1]
    np.testing.assert_allclose(
        dmmse(xs, ys, one, 0.5).numpy(),
        (xs.numpy() @ one.numpy()[0]),
        rtol=1e-12,
        atol=1e-12,
    )


def test_dmmse_is_stable_when_the_likelihoods_are_far_apart():
    """With noise_std = 1e-3 the log-likelihoods differ by about 1e6: a naive exp
    underflows to 0/0, log-sum-exp does not. The posterior then sits on the prompt's own
    task, so the prediction is that task's value from k = 1 on."""
    task = FinitePoolLinear(pool_size=50, pool_seed=3, noise_std=1e-3)
    g = make_generator(33)
    xs = gaussian_xs(20, 6, 4, g, dtype=torch.float64)
    sample = task.sample(xs, g)
    preds = dmmse(xs, sample.ys, task.pool(4), 1e-3)
    assert torch.all(torch.isfinite(preds))
    clean = torch.einsum("bnd,bd->bn", xs, sample.params["w"])
    assert (preds[:, 1:] - clean[:, 1:]).abs().max() < 1e-9


def test_dmmse_of_a_large_pool_is_ridge_with_the_bayes_penalty_at_small_k():
    """For tasks fresh from N(0, I), the pool's empirical prior tends to the Gaussian
    (the chapter's theorem), so for M = 2^16 the posterior mean over the pool is ridge
    with penalty sigma^2 / 1 up to Monte Carlo error. At k = 1 and k = 2 the posterior
    is broad enough for the pool to cover it: the mean squared gap is below 2% of
    ridge's own squared error, while for a pool of 16 tasks it is of the order of that
    error."""
    noise_std, d = 0.5, 8
    # fresh tasks (no pool used)
    xs, ys, _, clean = pool_prompts(400, 3, d, 1, noise_std, "gaussian", seed=34)
    ridge_preds = bayes_linear(xs, ys, noise_std)
    ridge_error = ((ridge_preds - clean) ** 2).mean(0)
    for pool_size, bound in ((2**16, 0.02), (16, None)):
        pool = FinitePoolLinear(pool_size=pool_size, pool_seed=35).pool(d)
        gap = ((dmmse(xs, ys, pool, noise_std) - ridge_preds) ** 2).mean(0)
        ratio = (gap[1:] / ridge_error[1:]).numpy()
        if bound is not None:
            assert np.all(
                ratio < bound
            ), f"M = {pool_size}: gap / ridge error at k = 1, 2 = {ratio}"
        else:
            assert np.all(
                ratio > 0.1
            ), f"M = {pool_size}: a small pool should differ from ridge, got {ratio}"


def test_dmmse_gap_to_ridge_falls_like_one_over_the_pool_size():
    """The theorem, numerically: at fixed k the mean squared gap between dMMSE and ridge
    on fresh tasks falls with M, asymptotically like 1 / M (a self-normalised
    importance-sampling error). At k = 1 and k = 2 it falls over each factor of 16 in M
    by more than 2 and from M = 2^4 to 2^16 by more than 200 (measured over three seeds:
    factors of 3.3 to 19 per step, the smallest at k = 2 below M = 2^8, before the 1 / M
    regime; 600 to 20000 overall)."""
    noise_std, d = 0.5, 8
    xs, ys, _, _ = pool_prompts(400, 3, d, 1, noise_std, "gaussian", seed=36)
    ridge_preds = bayes_linear(xs, ys, noise_std)
    gaps = np.array(
        [
            (
                (
                    dmmse(
                        xs,
                        ys,
                        FinitePoolLinear(pool_size=2**e, pool_seed=37).pool(d),
                        noise_std,
                    )
                    - ridge_preds
                )
                ** 2
            )
            .mean(0)[1:]
            .numpy()
            for e in (4, 8, 12, 16)
        ]
    )
    factors = gaps[:-1] / gaps[1:]
    assert np.all(factors > 2) and np.all(
        gaps[0] / gaps[-1] > 200
    ), f"gap to ridge at k = 1, 2 for M = 2^4, 2^8, 2^12, 2^16: {gaps.tolist()}"


# ===================== every baseline: k = 0, dtype, causality


BASELINES = {
    "least squares": least_squares,
    "ridge": lambda xs, ys: ridge(xs, ys, 0.5),
    "Bayes linear": lambda xs, ys: bayes_linear(xs, ys, 0.2),
    "Bayes linear noiseless": lambda xs, ys: bayes_linear(xs, ys, 0.0),
    "lasso": lambda xs, ys: lasso(xs, ys, 0.05),
    "oracle": lambda xs, ys: oracle_least_squares(xs, ys, fixed_support(xs)),
    "k-NN": knn,
    "1-NN": lambda xs, ys: knn(xs, ys, n_neighbors=1),
    "averaging": averaging,
    "one-step GD": lambda xs, ys: gd_one_step(
        xs, ys, 0.3, torch.eye(xs.shape[-1], dtype=xs.dtype) + 0.1
    ),
    "Bayes mixture": lambda xs, ys: bayes_dense_sparse_mixture(xs, ys, 0.5, 1, 0.1),
    "P(sparse)": lambda xs, ys: dense_sparse_posterior_probability(xs, ys, 0.5, 1, 0.1),
    "dMMSE": lambda xs, ys: dmmse(
        xs,
        ys,
        torch.randn(7, xs.shape[-1], generator=make_generator(5), dtype=torch.float64),
        0.3,
    ),
}


def fixed_support(xs: torch.Tensor) -> torch.Tensor:
    support = torch.zeros(xs.shape[0], xs.shape[-1], dtype=torch.bool)
    support[:, 0] = True
    return support


@pytest.mark.parametrize(
    "name", [n for n in BASELINES if n not in ("P(sparse)", "dMMSE")]
)
def test_every_baseline_predicts_zero_without_examples_and_keeps_dtype(name):
    xs, ys = noisy_linear_prompts(3, 6, 3, noise=0.1, seed=18)
    preds = BASELINES[name](xs, ys)
    assert preds.shape == ys.shape and preds.dtype == torch.float64
    assert torch.all(preds[:, 0] == 0)
    assert torch.all(torch.isfinite(preds))
    preds32 = BASELINES[name](xs.float(), ys.float())
    assert preds32.dtype == torch.float32
    np.testing.assert_allclose(preds32.numpy(), preds.numpy(), rtol=1e-3, atol=1e-3)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 10**6),
    n_points=st.integers(2, 8),
    d=st.integers(1, 4),
    data=st.data(),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_prediction_at_k_uses_only_the_first_k_examples(
    seed, n_points, d, data, magnitude
):
    """Changing y_j, ..., y_{n-1} and x_{j+1}, ... never changes preds[:, :j + 1], for
    every baseline."""
    j = data.draw(st.integers(0, n_points - 1), label="j")
    xs, ys = noisy_linear_prompts(2, n_points, d, noise=0.1, seed=seed)
    g = make_generator(seed + 1)
    xs2, ys2 = xs.clone(), ys.clone()
    ys2[:, j:] = magnitude * torch.randn(
        2, n_points - j, generator=g, dtype=torch.float64
    )
    xs2[:, j + 1 :] = magnitude * torch.randn(
        2, n_points - j - 1, d, generator=g, dtype=torch.float64
    )
    for name, predict in BASELINES.items():
        before, after = predict(xs, ys)[:, : j + 1], predict(xs2, ys2)[:, : j + 1]
        assert torch.equal(after, before), (name, (after - before).abs().max().item())


@settings(max_examples=20)
@given(
    seed=st.integers(0, 10**6),
    n_points=st.integers(3, 9),
    d=st.integers(1, 4),
    data=st.data(),
)
def test_permuting_earlier_examples_leaves_predictions_unchanged(
    seed, n_points, d, data
):
    """Permuting examples 0 .. j-1 changes no prediction from j examples on (it is the
    same set)."""
    j = data.draw(st.integers(2, n_points - 1), label="j")
    permutation = data.draw(st.permutations(range(j)), label="permutation")
    xs, ys = noisy_linear_prompts(2, n_points, d, noise=0.3, seed=seed)
    order = list(permutation) + list(range(j, n_points))
    xs2, ys2 = xs[:, order], ys[:, order]
    for name in (
        "least squares",
        "ridge",
        "Bayes linear",
        "averaging",
        "one-step GD",
        "k-NN",
        "lasso",
        "Bayes mixture",
        "dMMSE",
    ):
        before, after = BASELINES[name](xs, ys)[:, j:], BASELINES[name](xs2, ys2)[:, j:]
        torch.testing.assert_close(after, before, rtol=1e-7, atol=1e-7, msg=name)


# ===================== bad input


ALL_PREDICTORS = [n for n in BASELINES if n != "oracle"]


@pytest.mark.parametrize("name", ALL_PREDICTORS)
def test_baselines_reject_wrongly_shaped_xs_and_ys(name):
    xs, ys = noisy_linear_prompts(2, 5, 3, noise=0.1, seed=19)
    with pytest.raises(
        ValueError,
        match=r"xs must be a tensor of shape \(batch, n_points, d\), got \(5, 3\)",
    ):
        BASELINES[name](xs[0], ys)
    with pytest.raises(
        ValueError,
        match=(
            r"ys must be a tensor of shape \(batch, n_points\) = \(2, 5\).*got \(2, "
            r"4\)"
        ),
    ):
        BASELINES[name](xs, ys[:, :4])
    with pytest.raises(
        ValueError,
        match=r"ys must be a tensor of shape \(batch, n_points\).*got \(10,\)",
    ):
        BASELINES[name](xs, ys.reshape(-1))


def test_oracle_rejects_bad_support():
    xs, ys = noisy_linear_prompts(2, 5, 3, noise=0.1, seed=20)
    message = r"support must be a boolean tensor of shape \(batch, d\) = \(2, 3\)"
    with pytest.raises(ValueError, match=message):
        oracle_least_squares(xs, ys, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=message):
        oracle_least_squares(xs, ys, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=message):
        oracle_least_squares(xs, ys, torch.ones(2, 3))  # float, not boolean
    with pytest.raises(ValueError, match=r"xs must be a tensor of shape"):
        oracle_least_squares(xs[0], ys, torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(3,), (2, 2), (3, 4), (1, 3, 3)])
def test_gd_one_step_rejects_bad_preconditioner(shape):
    xs, ys = noisy_linear_prompts(2, 5, 3, noise=0.1, seed=21)
    with pytest.raises(
        ValueError,
        match=r"preconditioner must be a tensor of shape \(d, d\) = \(3, 3\)",
    ):
        gd_one_step(xs, ys, 0.1, preconditioner=torch.ones(shape, dtype=torch.float64))


def test_gd_one_step_rejects_a_preconditioner_that_is_not_a_tensor():
    xs, ys = noisy_linear_prompts(2, 5, 3, noise=0.1, seed=21)
    with pytest.raises(
        ValueError,
        match=r"preconditioner must be a tensor of shape \(d, d\) = \(3, 3\), got list",
    ):
        gd_one_step(xs, ys, 0.1, preconditioner=np.eye(3).tolist())


def test_size_and_hyperparameter_checks():
    xs, ys = noisy_linear_prompts(2, 5, 3, noise=0.1, seed=22)
    cases = [
        (
            lambda: knn(xs, ys, n_neighbors=0),
            r"^n_neighbors must be a positive integer",
        ),
        (
            lambda: knn(xs, ys, n_neighbors=-3),
            r"^n_neighbors must be a positive integer",
        ),
        (lambda: ridge(xs, ys, 0.0), r"^penalty must be a finite number > 0"),
        (lambda: ridge(xs, ys, -1.0), r"^penalty must be a finite number >= 0"),
        (lambda: lasso(xs, ys, 0.0), r"^alpha must be a finite number > 0"),
        (
            lambda: lasso(xs, ys, 0.1, max_steps=0),
            r"^max_steps must be a positive integer",
        ),
        (
            lambda: bayes_linear(xs, ys, -0.1),
            r"^noise_std must be a finite number >= 0",
        ),
        (
            lambda: bayes_linear(xs, ys, 0.1, prior_std=0.0),
            r"^prior_std must be a finite number > 0",
        ),
        (
            lambda: gd_one_step(xs, ys, -0.1),
            r"^learning_rate must be a finite number >= 0",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, 0.5, 4, 0.1),
            r"^k_sparse must be at most d = 3, got 4",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, 0.5, 0, 0.1),
            r"^k_sparse must be a positive integer",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, 1.5, 1, 0.1),
            r"^p_sparse must lie in \[0, 1\]",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, -0.5, 1, 0.1),
            r"^p_sparse must lie in \[0, 1\]",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, 0.5, 1, -0.1),
            r"^noise_std must be a finite number >= 0",
        ),
        (
            lambda: bayes_dense_sparse_mixture(xs, ys, 0.5, 1, 0.0),
            r"^noise_std must be a finite number > 0",
        ),
        (
            lambda: dense_sparse_posterior_probability(xs, ys, 0.5, 5, 0.1),
            r"^k_sparse must be at most d = 3",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_module_exports_the_documented_baselines():
    for name in (
        "least_squares",
        "ridge",
        "bayes_linear",
        "oracle_least_squares",
        "averaging",
        "gd_one_step",
        "knn",
        "lasso",
        "bayes_dense_sparse_mixture",
        "dense_sparse_posterior_probability",
        "dmmse",
    ):
        assert callable(getattr(baselines, name))


# ===================== two-layer ReLU network fitted by GD


def _relu_net_reference(xs, ys, hidden, steps, learning_rate, seed):
    """One network per prompt and prefix k, each an nn.Sequential trained by its own
    torch.optim.Adam, in a loop."""
    batch, n_points, d = xs.shape
    init = baselines.relu_net_init(
        batch, n_points, d, hidden, torch.Generator().manual_seed(seed)
    )
    preds = torch.zeros(batch, n_points)
    for b in range(batch):
        for k in range(1, n_points):
            net = torch.nn.Sequential(
                torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
            )
            with torch.no_grad():
                net[0].weight.copy_(init["first"][b, k].T)
                net[0].bias.copy_(init["first_bias"][b, k])
                net[2].weight.copy_(init["second"][b, k][None, :])
                net[2].bias.copy_(init["second_bias"][b, k][None])
            optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
            for _ in range(steps):
                optimizer.zero_grad()
                loss = ((net(xs[b, :k].float())[:, 0] - ys[b, :k].float()) ** 2).mean()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                preds[b, k] = net(xs[b, k : k + 1].float())[0, 0]
    return preds


def test_relu_net_gd_matches_one_network_per_prompt_and_prefix_trained_in_a_loop():
    g = make_generator(11)
    xs = torch.randn(3, 5, 2, generator=g)
    ys = torch.sin(xs.sum(-1)) + torch.randn(3, 5, generator=g) * 0.1
    got = baselines.relu_net_gd(xs, ys, hidden=8, steps=30, learning_rate=0.05, seed=4)
    expected = _relu_net_reference(
        xs, ys, hidden=8, steps=30, learning_rate=0.05, seed=4
    )
    assert torch.all(got[:, 0] == 0), "with no example the prediction must be 0"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_relu_net_gd_uses_only_the_examples_before_each_query():
    g = make_generator(12)
    xs = torch.randn(2, 6, 3, generator=g)
    ys = torch.randn(2, 6, generator=g)
    base = baselines.relu_net_gd(xs, ys, hidden=4, steps=5, seed=0)
    changed = ys.clone()
    changed[:, 3:] += 10.0  # labels from position 3 on: predictions 0..3 must not move
    torch.testing.assert_close(
        baselines.relu_net_gd(xs, changed, hidden=4, steps=5, seed=0)[:, :4],
        base[:, :4],
    )


def test_relu_net_gd_fits_its_examples_and_rejects_bad_options():
    g = make_generator(13)
    xs = torch.randn(4, 6, 2, generator=g)
    ys = torch.relu(xs[..., 0]) - torch.relu(-xs[..., 1])
    # Fitting (the query appended as an extra example, i.e. repeated) drives the error
    # at the query down.
    doubled_xs, doubled_ys = (
        xs.repeat_interleave(2, dim=1),
        ys.repeat_interleave(2, dim=1),
    )
    fit = baselines.relu_net_gd(
        doubled_xs, doubled_ys, hidden=32, steps=100, learning_rate=0.05
    )
    seen = ((fit[:, 1::2] - doubled_ys[:, 1::2]) ** 2)[:, 2:].mean()
    assert (
        seen < 0.05 * (ys**2).mean()
    ), f"a network fitted to the query's own label should recover it, error {seen:.4f}"
    with pytest.raises(ValueError, match="hidden"):
        baselines.relu_net_gd(xs, ys, hidden=0)
    with pytest.raises(ValueError, match="learning_rate"):
        baselines.relu_net_gd(xs, ys, learning_rate=-1.0)


# ===================== grid-Bayes predictors for linear functions and sinusoids (d = 1)
def np_wave_posterior(xs, ys, groups, freqs, phases, noise_std):
    """One prompt and one prefix at a time: for every hypothesis (a, b, omega, phi) the
    residual y - b sin(.) is N(0, sigma^2 I + a^2 x x^T), evaluated with numpy's slogdet
    and solve; E[w | y] = a x^T C^-1 r."""
    batch, n_points = ys.shape
    freqs, phases = zip(*itertools.product(freqs, phases))
    preds = np.zeros((batch, n_points))
    for b_ in range(batch):
        x, y = xs[b_, :, 0], ys[b_]
        for k in range(n_points):
            logits, values = [], []
            for log_prior, a, b, on_grid in groups:
                grid = list(zip(freqs, phases)) if on_grid else [(0.0, 0.0)]
                for omega, phi in grid:
                    wave = np.sin(omega * x + phi) if on_grid else np.zeros_like(x)
                    r = y[:k] - b * wave[:k]
                    cov = noise_std**2 * np.eye(k) + a**2 * np.outer(x[:k], x[:k])
                    _, logdet = np.linalg.slogdet(cov) if k else (1.0, 0.0)
                    quad = r @ np.linalg.solve(cov, r) if k else 0.0
                    w_mean = a * x[:k] @ np.linalg.solve(cov, r) if k else 0.0
                    logits.append(
                        log_prior - math.log(len(grid)) - 0.5 * (quad + logdet)
                    )
                    values.append(b * wave[k] + a * w_mean * x[k])
            weights = np.exp(np.array(logits) - max(logits))
            preds[b_, k] = weights @ np.array(values) / weights.sum()
    return preds


def wave_prompts(batch, n_points, alpha, noise_std, seed):
    from icl_lib.tasks import ConvexCombination, Sinusoid

    g = make_generator(seed)
    xs = gaussian_xs(batch, n_points, 1, g, dtype=torch.float64)
    task = ConvexCombination(first=DenseLinear(), second=Sinusoid(), alpha=alpha)
    ys = task.sample(xs, g).ys
    return xs, ys + noise_std * torch.randn(ys.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_bayes_convex_sinusoid_matches_a_numpy_loop_over_prompts_prefixes_and_grid_points(
    alpha,
):
    xs, ys = wave_prompts(3, 6, alpha, 0.2, seed=40)
    freqs, phases = baselines._wave_grid(0.5, 2.0, 4, 5)
    expected = np_wave_posterior(
        xs.numpy(),
        ys.numpy(),
        [(0.0, alpha, 1 - alpha, True)],
        freqs.numpy(),
        phases.numpy(),
        0.2,
    )
    got = baselines.bayes_convex_sinusoid(xs, ys, alpha, 0.2, n_freq=4, n_phase=5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    # in chunks of one prompt, the same numbers
    chunked = baselines.bayes_convex_sinusoid(
        xs, ys, alpha, 0.2, n_freq=4, n_phase=5, max_elements=1
    )
    np.testing.assert_allclose(chunked.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("p_linear", [0.0, 0.5, 0.9])
def test_bayes_linear_sinusoid_mixture_matches_a_numpy_loop(p_linear):
    xs, ys = wave_prompts(3, 6, 0.5, 0.3, seed=41)
    freqs, phases = baselines._wave_grid(0.5, 2.0, 3, 4)
    groups = [
        (math.log(p), a, b, grid)
        for p, a, b, grid in (
            (p_linear, 1.0, 0.0, False),
            (1 - p_linear, 0.0, 1.0, True),
        )
        if p > 0
    ]
    expected = np_wave_posterior(
        xs.numpy(), ys.numpy(), groups, freqs.numpy(), phases.numpy(), 0.3
    )
    got = baselines.bayes_linear_sinusoid_mixture(
        xs, ys, p_linear, 0.3, n_freq=3, n_phase=4
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_grid_bayes_on_linear_functions_is_bayesian_linear_regression():
    """alpha = 1 and p_linear = 1 leave only w ~ N(0, 1): the posterior mean is ridge
    with penalty sigma^2, here numpy's closed form (sum x y) / (sum x^2 + sigma^2) per
    prefix."""
    xs, ys = wave_prompts(5, 8, 1.0, 0.1, seed=42)
    x, y = xs[..., 0].numpy(), ys.numpy()
    sxy = np.concatenate([np.zeros((5, 1)), np.cumsum(x * y, 1)[:, :-1]], 1)
    sxx = np.concatenate([np.zeros((5, 1)), np.cumsum(x * x, 1)[:, :-1]], 1)
    expected = x * sxy / (sxx + 0.1**2)
    for preds in (
        baselines.bayes_convex_sinusoid(xs, ys, 1.0, 0.1),
        baselines.bayes_linear_sinusoid_mixture(xs, ys, 1.0, 0.1),
    ):
        np.testing.assert_allclose(preds.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_grid_bayes_recovers_a_noiseless_sinusoid_and_tells_the_classes_apart():
    """On noiseless sinusoids the grid posterior (noise_std = 0.05, above the default
    grid's residual) predicts within a small fraction of E f^2 = 1/2 from k = 4; on
    noiseless lines the mixture's posterior is the linear class's."""
    g = make_generator(43)
    xs = gaussian_xs(200, 10, 1, g, dtype=torch.float64)
    from icl_lib.tasks import Sinusoid

    sines = Sinusoid().sample(xs, g).ys
    lines = DenseLinear().sample(xs, g).ys
    for preds in (
        baselines.bayes_convex_sinusoid(xs, sines, 0.0, 0.05),
        baselines.bayes_linear_sinusoid_mixture(xs, sines, 0.5, 0.05),
    ):
        error = ((preds - sines) ** 2).mean(0) / 0.5
        assert (
            error[4:].max() < 0.02 and error[0] > 0.9
        ), f"normalised error by k: {error.numpy().round(4)}"
    on_lines = baselines.bayes_linear_sinusoid_mixture(xs, lines, 0.5, 0.05)
    linear_only = baselines.bayes_linear_sinusoid_mixture(xs, lines, 1.0, 0.05)
    assert ((on_lines - linear_only)[:, 4:] ** 2).mean() < 1e-3 * (lines**2).mean()
