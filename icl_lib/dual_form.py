"""Attention's dual form (Dai et al. 2023) and von Oswald et al.'s gradient-descent
construction.

Relaxed linear attention (softmax and its scaling dropped) of a query vector q over
tokens t_1, ..., t_n with key and value projections W_K: (d_k, d_in), W_V: (d_v, d_in)
is

    F(q) = sum_j (W_V t_j)(W_K t_j)^T q = W q,
    W = sum_j (W_V t_j)(W_K t_j)^T : (d_v, d_k).

Split the tokens into demonstrations x'_1..x'_m and query-side tokens x_1..x_n:
W = W_ZSL + Delta W_ICL with W_ZSL from the query side (:func:`zero_shot_weights`) and
Delta W_ICL = sum_i (W_V x'_i)(W_K x'_i)^T from the demonstrations
(:func:`icl_weight_update`). A linear layer trained by SGD has the same form
(:func:`sgd_linear_layer`, :func:`linear_layer_as_attention`).

von Oswald et al.'s construction (:func:`gd_layer_weights`) sets a
:class:`icl_lib.models.LinearTransformer` layer to one step of (preconditioned) gradient
descent on the in-context loss (1/2N) sum_i (<w, x_i> - y_i)^2;
:func:`gd_steps_prediction` is the reference it is checked against. Their GD++
(:func:`gdpp_layer_weights`, :func:`gdpp_transformer`, reference
:func:`gdpp_steps_prediction`) also transforms the inputs, x_j <- (I - gamma S) x_j with
S = (1/N) sum_i x_i x_i^T, a curvature correction that makes later steps approach least
squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from icl_lib import checks
from icl_lib.models import LinearTransformer


def _check_shapes(**tensors: tuple[object, str]) -> None:
    """Check ``name=(tensor, "m d_in")`` pairs: one size per named axis, a name being
    one size throughout; ``ValueError`` naming the first tensor that does not fit and
    the sizes the tensors before it fixed."""
    sizes: dict[str, int] = {}
    for name, (value, axes) in tensors.items():
        axes = axes.split()
        known = {axis: sizes[axis] for axis in axes if axis in sizes}
        if not (
            isinstance(value, torch.Tensor)
            and value.ndim == len(axes)
            and all(
                known.get(axis, size) == size for axis, size in zip(axes, value.shape)
            )
        ):
            got = (
                tuple(value.shape)
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            fixed = (
                " with " + ", ".join(f"{axis} = {size}" for axis, size in known.items())
                if known
                else ""
            )
            raise ValueError(
                f"{name} must have shape ({', '.join(axes)}){fixed}, got {got}"
            )
        sizes.update(zip(axes, value.shape))


def outer_product_sum(
    w_k: torch.Tensor, w_v: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """sum_j (W_V t_j)(W_K t_j)^T: ``w_k: (d_k, d_in)``, ``w_v: (d_v, d_in)``, ``tokens:
    (n, d_in) -> (d_v, d_k)``."""
    _check_shapes(
        w_k=(w_k, "d_k d_in"), w_v=(w_v, "d_v d_in"), tokens=(tokens, "n d_in")
    )
    return (tokens @ w_v.T).T @ (tokens @ w_k.T)


def zero_shot_weights(
    w_k: torch.Tensor, w_v: torch.Tensor, query_tokens: torch.Tensor
) -> torch.Tensor:
    """W_ZSL = W_V X (W_K X)^T from the query-side tokens ``(n, d_in)``: ``(d_v,
    d_k)``."""
    return outer_product_sum(w_k, w_v, query_tokens)


def icl_weight_update(
    w_k: torch.Tensor, w_v: torch.Tensor, demonstrations: torch.Tensor
) -> torch.Tensor:
    """Delta W_ICL = sum_i (W_V x'_i)(W_K x'_i)^T from the demonstration tokens ``(m,
    d_in)``: ``(d_v, d_k)``."""
    return outer_product_sum(w_k, w_v, demonstrations)


def relaxed_linear_attention(
    w_k: torch.Tensor, w_v: torch.Tensor, tokens: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """W_V T^T (W_K T^T)^T q for every query, computed as attention (scores, then
    weighted values).

    ``tokens: (n, d_in)`` (demonstrations and query side together), ``queries: (n_q,
    d_k)`` -> ``(n_q, d_v)``. Entry j of the scores is (W_K t_j)^T q: no softmax, no
    scaling (Dai et al.'s relaxation).
    """
    _check_shapes(
        w_k=(w_k, "d_k d_in"),
        w_v=(w_v, "d_v d_in"),
        tokens=(tokens, "n d_in"),
        queries=(queries, "n_q d_k"),
    )
    scores = queries @ (tokens @ w_k.T).T  # (n_q, n): (W_K t_j)^T q
    return scores @ (tokens @ w_v.T)  # (n_q, d_v)


def sgd_linear_layer(
    w0: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, learning_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD on a linear layer F(x) = W x, one step per example in order, on the loss
    (1/2)||W x_i - t_i||^2.

    ``w0: (d_out, d_in)``, ``inputs: (m, d_in)``, ``targets: (m, d_out)``. Step i adds
    e_i x_i^T with the error signal e_i = -learning_rate (W_{i-1} x_i - t_i). Returns
    ``(W_m, signals)``, ``signals: (m, d_out)`` holding the e_i, so that W_m = W_0 +
    sum_i e_i x_i^T (:func:`linear_layer_as_attention`).
    """
    _check_shapes(
        w0=(w0, "d_out d_in"), inputs=(inputs, "m d_in"), targets=(targets, "m d_out")
    )
    learning_rate = checks.positive_float("learning_rate", learning_rate)
    weights, signals = w0.clone(), []
    for x, t in zip(inputs, targets):
        signal = -learning_rate * (weights @ x - t)
        weights = weights + torch.outer(signal, x)
        signals.append(signal)
    return weights, torch.stack(signals)


def linear_layer_as_attention(
    w0: torch.Tensor, inputs: torch.Tensor, signals: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """W_0 q + sum_i e_i (x_i^T q): the trained layer as linear attention with keys x_i
    and values e_i.

    ``w0: (d_out, d_in)``, ``inputs: (m, d_in)``, ``signals: (m, d_out)``, ``queries:
    (n_q, d_in)`` -> ``(n_q, d_out)``.
    """
    _check_shapes(
        w0=(w0, "d_out d_in"),
        inputs=(inputs, "m d_in"),
        signals=(signals, "m d_out"),
        queries=(queries, "n_q d_in"),
    )
    return queries @ w0.T + (queries @ inputs.T) @ signals


# ----------------------------- von Oswald et al.: layers that take GD steps


def gd_layer_weights(
    d: int,
    learning_rate: float,
    preconditioner: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)``, both ``(d + 1, d + 1)``, of a
    :class:`icl_lib.models.LinearAttentionLayer` taking one GD step.

    P = [[0, 0], [0, -learning_rate]], Q = [[A, 0], [0, 0]] with A = ``preconditioner:
    (d, d)`` (identity if None). On tokens (x_i, r_i) the layer maps r_j to r_j -
    learning_rate (1/N) sum_i r_i x_i^T A x_j: the residuals of w + learning_rate A^T
    (1/N) sum_i r_i x_i, a preconditioned GD step (A symmetric).
    """
    d = checks.positive_int("d", d)
    learning_rate = checks.finite_float("learning_rate", learning_rate)
    if preconditioner is None:
        preconditioner = torch.eye(d, dtype=dtype)
    if not isinstance(preconditioner, torch.Tensor) or tuple(preconditioner.shape) != (
        d,
        d,
    ):
        got = (
            tuple(preconditioner.shape)
            if isinstance(preconditioner, torch.Tensor)
            else type(preconditioner).__name__
        )
        raise ValueError(f"preconditioner must have shape (d, d) = {(d, d)}, got {got}")
    p = torch.zeros(d + 1, d + 1, dtype=dtype)
    p[d, d] = -learning_rate
    q = torch.zeros(d + 1, d + 1, dtype=dtype)
    q[:d, :d] = preconditioner.to(dtype)
    return p, q


def _rates(name: str, values: Sequence[float]) -> list[float]:
    """A non-empty sequence of finite numbers, one per layer or step, as floats."""
    if (
        isinstance(values, (int, float))
        or not isinstance(values, Sequence)
        or len(values) < 1
    ):
        raise ValueError(
            f"{name} must be a non-empty sequence of numbers, got {values!r}"
        )
    return [checks.finite_float(name, v) for v in values]


def _rates_and_gammas(
    learning_rates: Sequence[float], gammas: Sequence[float], per: str
) -> list[tuple[float, float]]:
    """GD++'s (learning rate, gamma) pairs, one per ``per`` (layer or step)."""
    rates, gammas = _rates("learning_rates", learning_rates), _rates("gammas", gammas)
    if len(rates) != len(gammas):
        raise ValueError(
            f"learning_rates and gammas must have one entry per {per}, got "
            f"{len(rates)} and {len(gammas)}"
        )
    return list(zip(rates, gammas))


def gd_transformer(
    d: int, learning_rates: Sequence[float], preconditioner: torch.Tensor | None = None
) -> LinearTransformer:
    """A float64 :class:`LinearTransformer` whose layer l takes a GD step of size
    ``learning_rates[l]`` from w = 0."""
    rates = _rates("learning_rates", learning_rates)
    model = LinearTransformer(d, n_layers=len(rates)).double()
    with torch.no_grad():
        for layer, rate in zip(model.layers, rates):
            p, q = gd_layer_weights(d, rate, preconditioner)
            layer.P.copy_(p)
            layer.Q.copy_(q)
    return model


def gd_steps_prediction(
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rates: Sequence[float],
    preconditioner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prediction <w_K, x_q> after K steps w <- w - eta_k A grad L(w) from w = 0,
    L(w) = (1/2N) sum_i (<w, x_i> - y_i)^2.

    ``xs: (batch, N + 1, d)``, ``ys: (batch, N + 1)``: the last point is the query (its
    label is not read). Computed in float64 with explicit weight vectors (the reference
    for :func:`gd_transformer`). Returns ``(batch,)``.
    """
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    if n_points < 2:
        raise ValueError(
            f"the prompt needs N >= 1 examples and a query, got n_points = {n_points}"
        )
    rates = _rates("learning_rates", learning_rates)
    x, y = xs[:, :-1].double(), ys[:, :-1].double()
    a = (
        torch.eye(d, dtype=torch.float64)
        if preconditioner is None
        else preconditioner.double()
    )
    w = torch.zeros(batch, d, dtype=torch.float64)
    for rate in rates:
        residual = torch.einsum("bnd,bd->bn", x, w) - y
        gradient = torch.einsum("bn,bnd->bd", residual, x) / (n_points - 1)
        w = w - rate * gradient @ a.T
    return torch.einsum("bd,bd->b", w, xs[:, -1].double())


# ----------------------------- GD++: GD steps with a curvature correction of the inputs


def gdpp_layer_weights(
    d: int, learning_rate: float, gamma: float, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)``, both ``(d + 1, d + 1)``, of one GD++ layer (von Oswald et al. 2023,
    section 4).

    P = [[-gamma I_d, 0], [0, -learning_rate]], Q = [[I_d, 0], [0, 0]]. On tokens (x_j,
    r_j) the layer maps, from the tokens before it, r_j to r_j - learning_rate <b, x_j>
    with b = (1/N) sum_i r_i x_i (a GD step) and x_j to (I - gamma S) x_j with S = (1/N)
    sum_i x_i x_i^T (the inputs' curvature correction). gamma = 0 is
    :func:`gd_layer_weights`.
    """
    d = checks.positive_int("d", d)
    learning_rate = checks.finite_float("learning_rate", learning_rate)
    gamma = checks.finite_float("gamma", gamma)
    p = torch.zeros(d + 1, d + 1, dtype=dtype)
    p[:d, :d] = -gamma * torch.eye(d, dtype=dtype)
    p[d, d] = -learning_rate
    q = torch.zeros(d + 1, d + 1, dtype=dtype)
    q[:d, :d] = torch.eye(d, dtype=dtype)
    return p, q


def gdpp_transformer(
    d: int, learning_rates: Sequence[float], gammas: Sequence[float]
) -> LinearTransformer:
    """A float64 :class:`LinearTransformer` whose layer l is :func:`gdpp_layer_weights`
    with ``learning_rates[l]`` and ``gammas[l]`` (one of each per layer)."""
    steps = _rates_and_gammas(learning_rates, gammas, per="layer")
    model = LinearTransformer(d, n_layers=len(steps)).double()
    with torch.no_grad():
        for layer, (rate, gamma) in zip(model.layers, steps):
            p, q = gdpp_layer_weights(d, rate, gamma)
            layer.P.copy_(p)
            layer.Q.copy_(q)
    return model


def gdpp_steps_prediction(
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rates: Sequence[float],
    gammas: Sequence[float],
) -> torch.Tensor:
    """GD++ with explicit vectors (the reference for :func:`gdpp_transformer`): the
    prediction for the last point.

    ``xs: (batch, N + 1, d)``, ``ys: (batch, N + 1)`` (the query's label is not read).
    Residuals r_i = y_i, r_q = 0; step k, from the current inputs x and residuals r:
    b = (1/N) sum_i r_i x_i, S = (1/N) sum_i x_i x_i^T; then r_j <- r_j - eta_k <b, x_j>
    and x_j <- x_j - gamma_k S x_j for every point j, the query included. The prediction
    is -r_q. Float64. Returns ``(batch,)``.
    """
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    if n_points < 2:
        raise ValueError(
            f"the prompt needs N >= 1 examples and a query, got n_points = {n_points}"
        )
    steps = _rates_and_gammas(learning_rates, gammas, per="step")
    x = xs.double().clone()
    r = ys.double().clone()
    r[:, -1] = 0.0
    n = n_points - 1
    for rate, gamma in steps:
        b = torch.einsum("bn,bnd->bd", r[:, :-1], x[:, :-1]) / n
        s = torch.einsum("bni,bnj->bij", x[:, :-1], x[:, :-1]) / n
        r = r - rate * torch.einsum("bd,bnd->bn", b, x)
        x = x - gamma * torch.einsum("bij,bnj->bni", s, x)
    return -r[:, -1]
