"""icl_lib.shifts against independent checks: numpy eigenvalues and ranks of empirical
covariances, explicit dot products and signs, labels recomputed from the sampled
weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_lib import shifts
from icl_lib.devices import make_generator
from icl_lib.tasks import DenseLinear, ReluNet


def standard(batch: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n, d, generator=make_generator(seed), dtype=torch.float64)


def empirical_cov(xs: torch.Tensor) -> np.ndarray:
    rows = xs.reshape(-1, xs.shape[-1]).numpy()
    return rows.T @ rows / rows.shape[0]


def test_skewed_covariance_has_the_one_over_i_spectrum_with_trace_d():
    d = 6
    xs = shifts.skewed_covariance(standard(4000, 10, d), make_generator(1))
    eigenvalues = np.sort(np.linalg.eigvalsh(empirical_cov(xs)))[::-1]
    expected = (1 / np.arange(1, d + 1)) * d / np.sum(1 / np.arange(1, d + 1))
    np.testing.assert_allclose(eigenvalues, expected, rtol=0.05)
    assert not np.allclose(
        empirical_cov(xs), np.diag(np.diag(empirical_cov(xs))), atol=0.1
    ), "basis should be random"


def test_half_subspace_has_rank_d_over_2_and_trace_d():
    d = 6
    xs = shifts.half_subspace(standard(2000, 5, d), make_generator(2))
    cov = empirical_cov(xs)
    assert np.linalg.matrix_rank(xs.reshape(-1, d).numpy(), tol=1e-8) == d // 2
    assert abs(np.trace(cov) - d) < 0.2


def test_opposite_orthant_puts_queries_in_the_opposite_orthant():
    xs = standard(50, 7, 4)
    examples, queries = shifts.opposite_orthant(xs, make_generator(3))
    signs = np.sign(examples.numpy())
    assert np.all(
        signs == signs[:, :1, :]
    ), "all examples of a prompt must share one orthant"
    assert np.all(np.sign(queries.numpy()) == -signs)
    np.testing.assert_allclose(examples.abs().numpy(), xs.abs().numpy())


def test_orthogonal_query_is_orthogonal_to_the_earlier_examples_and_keeps_its_norm():
    d = 5
    xs = standard(20, 8, d)
    queries = shifts.orthogonal_query(xs).numpy()
    x = xs.numpy()
    for b in range(20):
        for k in range(d):
            dots = x[b, :k] @ queries[b, k]
            assert np.allclose(
                dots, 0, atol=1e-9
            ), f"query {k} not orthogonal to the examples before it"
            assert np.isclose(np.linalg.norm(queries[b, k]), np.linalg.norm(x[b, k]))
        assert np.all(queries[b, d:] == 0)
    np.testing.assert_allclose(queries[:, 0], x[:, 0])


def test_label_shifts():
    ys = torch.zeros(4000, 3, dtype=torch.float64)
    noisy = shifts.noisy_labels(ys, make_generator(4), noise_std=0.5)
    assert abs(noisy.std().item() - 0.5) < 0.02
    assert torch.equal(
        shifts.scaled_outputs(torch.ones(2, 2), 3.0), torch.full((2, 2), 3.0)
    )
    assert torch.equal(
        shifts.scaled_inputs(torch.ones(1, 2, 2), 0.5), torch.full((1, 2, 2), 0.5)
    )


# the options without a default
REQUIRED = {"scaled_inputs": {"scale": 2.0}, "scaled_outputs": {"scale": 2.0}}


@pytest.mark.parametrize("name", list(shifts.SHIFTS))
def test_apply_labels_examples_and_queries_with_the_same_function(name):
    xs = standard(30, 6, 4)
    shifted = shifts.make_shift(name, **REQUIRED.get(name, {})).apply(
        xs, DenseLinear(), make_generator(5)
    )
    w = shifted.params["w"].numpy()
    clean = np.einsum("bnd,bd->bn", shifted.xs.numpy(), w)
    if name == "noisy_labels":
        assert np.abs(shifted.ys.numpy() - clean).mean() > 0.3
    else:
        scale = 2.0 if name == "scaled_outputs" else 1.0
        np.testing.assert_allclose(
            shifted.ys.numpy(), scale * clean, rtol=1e-10, atol=1e-10
        )
    if shifted.has_queries:
        np.testing.assert_allclose(
            shifted.query_ys.numpy(),
            np.einsum("bnd,bd->bn", shifted.query_xs.numpy(), w),
            atol=1e-10,
        )
    expected_variance = 4.0 if name in ("scaled_inputs", "scaled_outputs") else 1.0
    assert shifted.variance == expected_variance


def test_a_relu_net_task_keeps_its_params_through_a_shift():
    shifted = shifts.make_shift("opposite_orthant").apply(
        standard(3, 4, 2), ReluNet(hidden=5), make_generator(0)
    )
    assert shifted.params["first_layer"].shape == (
        3,
        2,
        5,
    ) and shifted.query_ys.shape == (3, 4)


def test_bad_names_and_options_raise_value_errors_naming_them():
    with pytest.raises(
        ValueError,
        match=r"shift\.name must be one of 'skewed_covariance', .*; got 'sideways'",
    ):
        shifts.make_shift("sideways")
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) \['scale'\] for shift 'noisy_labels'; accepted: "
        r"\['noise_std'\]",
    ):
        shifts.make_shift("noisy_labels", scale=2)
    with pytest.raises(
        ValueError, match=r"shift 'scaled_outputs' needs the option\(s\) \['scale'\]"
    ):
        shifts.make_shift("scaled_outputs")
    with pytest.raises(ValueError, match="scale"):
        shifts.make_shift("scaled_inputs", scale=-1.0)
    with pytest.raises(ValueError, match="noise_std"):
        shifts.make_shift("noisy_labels", noise_std=float("nan"))
    with pytest.raises(ValueError, match="xs must be"):
        shifts.orthogonal_query(torch.zeros(3, 3))
    assert (
        shifts.make_shift("scaled_inputs", scale=0.5).label
        == "scaled_inputs(scale=0.5)"
    )


def test_labels_show_the_required_options_and_those_off_their_default():
    labels = [
        shifts.make_shift(name, **options).label
        for name, options in [
            ("skewed_covariance", {}),
            ("skewed_covariance", {"decay": 2.0}),
            ("noisy_labels", {"noise_std": 0.5}),
            ("noisy_labels", {"noise_std": 1.0}),
            ("orthogonal_query", {}),
            ("scaled_outputs", {"scale": 2}),
        ]
    ]
    assert labels == [
        "skewed_covariance",
        "skewed_covariance(decay=2)",
        "noisy_labels(noise_std=0.5)",
        "noisy_labels",
        "orthogonal_query",
        "scaled_outputs(scale=2)",
    ]
