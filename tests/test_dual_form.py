"""Dual form: the identity against explicit numpy sums, SGD on a linear layer, von
Oswald's GD construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_lib import dual_form
from icl_lib.baselines import gd_one_step
from icl_lib.devices import make_generator
from icl_lib.models import LinearTransformer


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=make_generator(seed), dtype=torch.float64)


def test_dual_form_identity_matches_numpy():
    w_k, w_v = randn(4, 6, seed=1), randn(3, 6, seed=2)
    demos, query_side, q = randn(5, 6, seed=3), randn(2, 6, seed=4), randn(1, 4, seed=5)
    tokens = torch.cat((demos, query_side))
    attention = dual_form.relaxed_linear_attention(w_k, w_v, tokens, q)[0].numpy()
    # numpy reference: W_V [X'; X]^T (W_K [X'; X]^T)^T q with tokens as columns
    t, wk, wv, qn = tokens.numpy().T, w_k.numpy(), w_v.numpy(), q[0].numpy()
    reference = wv @ t @ (wk @ t).T @ qn
    np.testing.assert_allclose(attention, reference, rtol=1e-12, atol=1e-12)
    w_zsl = dual_form.zero_shot_weights(w_k, w_v, query_side)
    delta = dual_form.icl_weight_update(w_k, w_v, demos)
    np.testing.assert_allclose(
        ((w_zsl + delta) @ q[0]).numpy(), reference, rtol=1e-12, atol=1e-12
    )
    explicit = sum(np.outer(wv @ x, wk @ x) for x in demos.numpy())
    np.testing.assert_allclose(delta.numpy(), explicit, rtol=1e-12, atol=1e-12)


def test_icl_update_rank_is_at_most_the_number_of_demonstrations():
    w_k, w_v = randn(8, 8, seed=1), randn(8, 8, seed=2)
    for m in (1, 3, 5):
        delta = dual_form.icl_weight_update(w_k, w_v, randn(m, 8, seed=m))
        assert torch.linalg.matrix_rank(delta).item() == m


def test_hand_computed_outer_product():
    w_k = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # key = first coordinate
    w_v = torch.tensor([[0.0, 2.0]], dtype=torch.float64)  # value = twice the second
    tokens = torch.tensor([[1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    # sum_j (2 t_j2)(t_j1) = 2*1*1 + 2*(-1)*3 = -4
    assert dual_form.outer_product_sum(w_k, w_v, tokens).item() == pytest.approx(-4.0)


def test_sgd_linear_layer_is_linear_attention_over_its_training_inputs():
    w0, inputs, targets = randn(3, 4, seed=1), randn(6, 4, seed=2), randn(6, 3, seed=3)
    weights, signals = dual_form.sgd_linear_layer(
        w0, inputs, targets, learning_rate=0.1
    )
    # numpy reference SGD on (1/2)||W x - t||^2
    w = w0.numpy().copy()
    for x, t in zip(inputs.numpy(), targets.numpy()):
        w -= 0.1 * np.outer(w @ x - t, x)
    np.testing.assert_allclose(weights.numpy(), w, rtol=1e-12, atol=1e-12)
    queries = randn(5, 4, seed=4)
    np.testing.assert_allclose(
        dual_form.linear_layer_as_attention(w0, inputs, signals, queries).numpy(),
        queries.numpy() @ w.T,
        rtol=1e-12,
        atol=1e-12,
    )


def test_one_gd_layer_equals_one_gd_step_of_baselines():
    xs, ys = randn(16, 9, 3, seed=1), randn(16, 9, seed=2)
    model = dual_form.gd_transformer(3, [0.7])
    got = model(xs, ys)[:, 0]
    # entry k uses the first k = 8 examples
    reference = gd_one_step(xs, ys, learning_rate=0.7)[:, -1].double()
    torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-12)


def test_k_gd_layers_equal_k_gd_steps_numpy():
    xs, ys = randn(8, 11, 4, seed=3), randn(8, 11, seed=4)
    a = randn(4, 4, seed=5)
    a = a @ a.T / 4 + torch.eye(4, dtype=torch.float64)
    rates = [0.5, 0.3, 0.2]
    got = dual_form.gd_transformer(4, rates, preconditioner=a)(xs, ys)[:, 0]
    x, y, xq = xs[:, :-1].numpy(), ys[:, :-1].numpy(), xs[:, -1].numpy()
    for b in range(8):
        w = np.zeros(4)
        for rate in rates:
            w = w - rate * a.numpy() @ (x[b].T @ (x[b] @ w - y[b]) / 10)
        assert got[b].item() == pytest.approx(w @ xq[b], rel=1e-10, abs=1e-12)
    torch.testing.assert_close(
        got, dual_form.gd_steps_prediction(xs, ys, rates, a), rtol=1e-12, atol=1e-12
    )


def test_gd_layer_weights_layout():
    p, q = dual_form.gd_layer_weights(2, 0.5)
    assert p[2, 2] == -0.5 and p.abs().sum() == 0.5
    torch.testing.assert_close(q[:2, :2], torch.eye(2, dtype=torch.float64))
    assert q[2].abs().sum() == 0 and q[:, 2].abs().sum() == 0
    assert isinstance(dual_form.gd_transformer(2, [0.1, 0.2]), LinearTransformer)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    w = randn(3, 4)
    with pytest.raises(
        ValueError, match=r"w_k must have shape \(d_k, d_in\), got \(3,\)"
    ):
        dual_form.zero_shot_weights(randn(3), w, randn(2, 4))
    with pytest.raises(
        ValueError,
        match=r"tokens must have shape \(n, d_in\) with d_in = 4, got \(2, 5\)",
    ):
        dual_form.icl_weight_update(w, w, randn(2, 5))
    with pytest.raises(
        ValueError,
        match=r"w_v must have shape \(d_v, d_in\) with d_in = 4, got \(3, 5\)",
    ):
        dual_form.relaxed_linear_attention(
            randn(3, 4), randn(3, 5), randn(2, 4), randn(1, 3)
        )
    with pytest.raises(
        ValueError,
        match=r"queries must have shape \(n_q, d_k\) with d_k = 3, got \(1, 4\)",
    ):
        dual_form.relaxed_linear_attention(w, w, randn(2, 4), randn(1, 4))
    with pytest.raises(
        ValueError,
        match=(
            r"signals must have shape \(m, d_out\) with m = 2, d_out = 3, got \(3, 3\)"
        ),
    ):
        dual_form.linear_layer_as_attention(w, randn(2, 4), randn(3, 3), randn(1, 4))
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        dual_form.sgd_linear_layer(w, randn(2, 4), randn(2, 3), learning_rate=0.0)
    with pytest.raises(
        ValueError,
        match=(
            r"targets must have shape \(m, d_out\) with m = 2, d_out = 3, got \(2, 2\)"
        ),
    ):
        dual_form.sgd_linear_layer(w, randn(2, 4), randn(2, 2), learning_rate=0.1)
    with pytest.raises(ValueError, match="preconditioner must have shape"):
        dual_form.gd_transformer(3, [0.1], preconditioner=torch.eye(2))
    with pytest.raises(ValueError, match="learning_rates must be a non-empty sequence"):
        dual_form.gd_transformer(3, [])
    with pytest.raises(ValueError, match="learning_rates must be a non-empty sequence"):
        dual_form.gd_steps_prediction(randn(1, 3, 2), randn(1, 3), 0.1)


def test_gdpp_transformer_equals_a_numpy_recursion_and_reduces_to_gd():
    xs = randn(6, 9, 4, seed=20)
    ys = randn(6, 9, seed=21)
    rates, gammas = [0.5, 0.8, 1.1], [0.3, 0.2, 0.1]
    # numpy reference: tokens (x_j, r_j), r_q = 0; each step uses the tokens before it
    x, r = xs.numpy().copy(), ys.numpy().copy()
    r[:, -1] = 0.0
    n = x.shape[1] - 1
    for eta, gamma in zip(rates, gammas):
        b = np.einsum("bn,bnd->bd", r[:, :-1], x[:, :-1]) / n
        s = np.einsum("bni,bnj->bij", x[:, :-1], x[:, :-1]) / n
        r, x = (
            r - eta * np.einsum("bd,bnd->bn", b, x),
            x - gamma * np.einsum("bij,bnj->bni", s, x),
        )
    model = dual_form.gdpp_transformer(4, rates, gammas)
    with torch.no_grad():
        np.testing.assert_allclose(
            model(xs, ys)[:, 0].numpy(), -r[:, -1], rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(
        dual_form.gdpp_steps_prediction(xs, ys, rates, gammas).numpy(),
        -r[:, -1],
        rtol=1e-10,
        atol=1e-12,
    )
    torch.testing.assert_close(
        dual_form.gdpp_steps_prediction(xs, ys, rates, [0.0] * 3),
        dual_form.gd_steps_prediction(xs, ys, rates),
    )
    p, q = dual_form.gdpp_layer_weights(4, 0.5, 0.3)
    assert (
        p[0, 0] == -0.3
        and p[4, 4] == -0.5
        and q[:4, :4].equal(torch.eye(4, dtype=torch.float64))
        and q[4, 4] == 0
    )
