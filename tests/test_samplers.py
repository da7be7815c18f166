"""Covariate samplers and devices: covariances by Monte Carlo, determinism, argument
checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_lib import devices
from icl_lib.devices import make_generator
from icl_lib.samplers import cov_sqrt, exp_diagonal_cov, gaussian_xs


def empirical_cov(points: np.ndarray) -> np.ndarray:
    """Second moment of zero-mean rows (the samplers' mean is exactly 0, so no
    centring)."""
    return points.T @ points / points.shape[0]


# ---------------------------------------------------------------- devices


def test_generators_live_on_the_cpu_by_default():
    assert make_generator(0).device.type == "cpu"
    assert gaussian_xs(2, 3, 4, make_generator(0)).device.type == "cpu"
    assert devices.default_device().type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )


@pytest.mark.parametrize("seed", [1.5, "3", True, None])
def test_make_generator_rejects_non_integer_seeds(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        make_generator(seed)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_samples_and_different_seed_different_samples():
    a = gaussian_xs(4, 5, 3, make_generator(11))
    b = gaussian_xs(4, 5, 3, make_generator(11))
    c = gaussian_xs(4, 5, 3, make_generator(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(
        exp_diagonal_cov(3, 4, make_generator(5)),
        exp_diagonal_cov(3, 4, make_generator(5)),
    )
    assert not torch.equal(
        exp_diagonal_cov(3, 4, make_generator(5)),
        exp_diagonal_cov(3, 4, make_generator(6)),
    )


def test_shapes_and_dtype():
    xs = gaussian_xs(2, 7, 3, make_generator(0), dtype=torch.float64)
    assert xs.shape == (2, 7, 3) and xs.dtype == torch.float64
    assert gaussian_xs(2, 7, 3, make_generator(0)).dtype == torch.float32
    cov = exp_diagonal_cov(5, 3, make_generator(0))
    assert cov.shape == (5, 3, 3) and cov.dtype == torch.float32


# ---------------------------------------------------------------- covariances


def test_identity_covariance_by_default():
    xs = (
        gaussian_xs(200, 100, 3, make_generator(1), dtype=torch.float64)
        .reshape(-1, 3)
        .numpy()
    )
    np.testing.assert_allclose(empirical_cov(xs), np.eye(3), atol=0.03)
    np.testing.assert_allclose(xs.mean(0), 0.0, atol=0.02)


def test_shared_covariance_matches_monte_carlo():
    a = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, -0.4], [0.0, 0.3, 0.7]])
    cov = a @ a.T
    xs = gaussian_xs(
        400, 100, 3, make_generator(2), cov=torch.tensor(cov), dtype=torch.float64
    )
    np.testing.assert_allclose(empirical_cov(xs.reshape(-1, 3).numpy()), cov, atol=0.04)


def test_per_prompt_covariance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(3):
        a = rng.normal(size=(3, 3))
        covs.append(a @ a.T + 0.1 * np.eye(3))
    covs = np.stack(covs)
    xs = gaussian_xs(
        3, 40_000, 3, make_generator(3), cov=torch.tensor(covs), dtype=torch.float64
    ).numpy()
    for b in range(3):
        scale = np.abs(covs[b]).max()
        np.testing.assert_allclose(empirical_cov(xs[b]), covs[b], atol=0.04 * scale)
    # the prompts really have different covariances
    assert np.abs(covs[0] - covs[1]).max() > 0.5


def test_scale_multiplies_covariance_by_its_square():
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    c = 2.5
    plain = gaussian_xs(400, 100, 2, make_generator(4), cov=cov, dtype=torch.float64)
    scaled = gaussian_xs(
        400, 100, 2, make_generator(4), cov=cov, scale=c, dtype=torch.float64
    )
    # same generator state: the scaled sample is exactly c times the plain one
    torch.testing.assert_close(scaled, c * plain)
    np.testing.assert_allclose(
        empirical_cov(scaled.reshape(-1, 2).numpy()),
        c**2 * cov.numpy(),
        atol=0.04 * c**2 * 2.0,
    )


def test_exp_diagonal_cov_has_exp1_diagonal_and_zero_off_diagonal():
    covs = exp_diagonal_cov(20_000, 3, make_generator(5), dtype=torch.float64).numpy()
    diagonal = np.diagonal(covs, axis1=1, axis2=2)
    off = covs - np.stack([np.diag(row) for row in diagonal])
    assert np.all(off == 0.0)
    assert np.all(diagonal > 0)
    # Exp(1): mean 1, variance 1 (standard errors about 0.004 and 0.015 here)
    assert abs(diagonal.mean() - 1.0) < 0.03
    assert abs(diagonal.var() - 1.0) < 0.08
    # and P(X > 1) = e^-1
    assert abs((diagonal > 1).mean() - np.exp(-1)) < 0.01


def test_exp_diagonal_cov_feeds_gaussian_xs_per_prompt():
    g = make_generator(6)
    covs = exp_diagonal_cov(2, 3, g, dtype=torch.float64)
    xs = gaussian_xs(2, 40_000, 3, g, cov=covs, dtype=torch.float64).numpy()
    for b in range(2):
        np.testing.assert_allclose(
            empirical_cov(xs[b]), covs[b].numpy(), atol=0.04 * covs[b].max().item()
        )


def test_singular_covariance_puts_samples_in_the_subspace():
    v = np.array([1.0, 2.0, -1.0])
    cov = np.outer(v, v)  # rank 1
    xs = gaussian_xs(
        50, 100, 3, make_generator(7), cov=torch.tensor(cov), dtype=torch.float64
    )
    points = xs.reshape(-1, 3).numpy()
    unit = v / np.linalg.norm(v)
    residual = points - np.outer(points @ unit, unit)
    assert np.abs(residual).max() < 1e-10
    # variance along v is ||v||^2
    assert abs((points @ unit).var() / (v @ v) - 1.0) < 0.05


@pytest.mark.parametrize("d, rank", [(6, 2), (20, 5)])
def test_singular_float32_covariance_is_accepted(d, rank):
    # float32 is the library's default dtype; rounding gives a singular covariance
    # eigenvalues of about -1e-7
    g = make_generator(8)
    basis, _ = torch.linalg.qr(torch.randn(d, rank, generator=g))
    for cov in (basis @ basis.T, (basis * torch.arange(1.0, rank + 1)) @ basis.T):
        assert cov.dtype == torch.float32
        xs = gaussian_xs(20, 50, d, g, cov=cov)
        points = xs.reshape(-1, d).double().numpy()
        b = basis.double().numpy()
        residual = points - (points @ b) @ b.T
        # in the subspace up to the float32 rounding of cov, whose eigenvalues ~1e-7
        # become ~3e-4 in its root
        assert np.abs(residual).max() < 3e-3 * np.abs(points).max()
        np.testing.assert_allclose(
            empirical_cov(points @ b), b.T @ cov.double().numpy() @ b, atol=0.15 * rank
        )


def test_cov_sqrt_squares_back_to_the_covariance():
    a = np.array([[1.0, 0.3], [0.0, 2.0]])
    cov = a @ a.T
    root = cov_sqrt(torch.tensor(cov)).numpy()
    np.testing.assert_allclose(root, root.T, atol=1e-12)
    np.testing.assert_allclose(root @ root, cov, atol=1e-12)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch=0), "batch"),
        (dict(batch=-2), "batch"),
        (dict(n_points=0), "n_points"),
        (dict(d=-1), "d"),
        (dict(d=2.0), "d"),
    ],
)
def test_gaussian_xs_rejects_bad_sizes(kwargs, name):
    args = dict(batch=2, n_points=3, d=2) | kwargs
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        gaussian_xs(args["batch"], args["n_points"], args["d"], make_generator(0))


def test_exp_diagonal_cov_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"^batch must be a positive integer"):
        exp_diagonal_cov(0, 3, make_generator(0))
    with pytest.raises(ValueError, match=r"^d must be a positive integer"):
        exp_diagonal_cov(2, -3, make_generator(0))


def test_gaussian_xs_rejects_negative_scale():
    with pytest.raises(ValueError, match=r"scale must be a finite number >= 0"):
        gaussian_xs(2, 3, 2, make_generator(0), scale=-1.0)


ACCEPTED_COV = (
    r"^cov must be a tensor of shape \(d, d\) = \(2, 2\) or \(batch, d, d\) = \(4, 2, "
    r"2\), "
)


@pytest.mark.parametrize("shape", [(3, 3), (2, 2, 2), (5, 2, 2), (2,)])
def test_gaussian_xs_rejects_wrongly_shaped_cov(shape):
    # batch 4, d 2: accepted are (2, 2) and (4, 2, 2)
    with pytest.raises(ValueError, match=ACCEPTED_COV + r"got \("):
        gaussian_xs(4, 3, 2, make_generator(0), cov=torch.ones(shape))


def test_gaussian_xs_rejects_non_tensor_cov():
    with pytest.raises(ValueError, match=ACCEPTED_COV + "got list"):
        gaussian_xs(4, 3, 2, make_generator(0), cov=[[1.0, 0.0], [0.0, 1.0]])


def test_gaussian_xs_rejects_non_symmetric_cov():
    with pytest.raises(ValueError, match=r"cov must be symmetric"):
        gaussian_xs(
            2, 3, 2, make_generator(0), cov=torch.tensor([[1.0, 0.5], [0.0, 1.0]])
        )


def test_gaussian_xs_rejects_non_psd_cov():
    with pytest.raises(ValueError, match=r"cov must be positive semi-definite"):
        gaussian_xs(
            2, 3, 2, make_generator(0), cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]])
        )
    per_prompt = torch.stack([torch.eye(2), -torch.eye(2)])
    with pytest.raises(ValueError, match=r"cov must be positive semi-definite"):
        gaussian_xs(2, 3, 2, make_generator(0), cov=per_prompt)
