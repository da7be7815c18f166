"""Models: linear self-attention (Zhang, Frei, Bartlett), a linear transformer (von
Oswald et al.), a GPT-2-style decoder.

Plain torch, no Hugging Face. Every model maps a prompt ``xs: (batch, n_points, d)``,
``ys: (batch, n_points)`` to predictions ``(batch, P)``, where column j predicts ``ys[:,
n_points - P + j]``:

* :class:`GPT` predicts at every x position (``P = n_points``); its prediction for y_i
  sees x_1, y_1, ..., x_i only.
* :class:`LinearSelfAttention`, :class:`ReducedLSA` and :class:`LinearTransformer` read
  the last point as the query and the first ``N = n_points - 1`` as the context
  (``P = 1``); ``ys[:, -1]`` is never read.

The class attribute ``predicts_every_position`` tells which (and
:func:`predicts_every_position` of a spec's name, before the model is built).
:func:`make_model` builds a model from a config dict ``{"name": ..., **options}`` (as
``configs/*.toml`` spell it), so that checkpoints can rebuild what they store; the
book's model sizes are the presets of :data:`MODEL_PRESETS` (``{"preset": "laptop"}``).

:func:`without_causal_mask` copies a GPT without its causal mask, the bug that chapter 4
shows and catches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from icl_lib import checks
from icl_lib.prompts import (
    compact_tokens,
    interleaved_tokens,
    lsa_embedding,
    paired_tokens,
    x_positions,
)

# -------------------------------------------- Zhang-Frei-Bartlett linear self-attention


def default_theta(d: int) -> torch.Tensor:
    """The book's default Theta: d^(-1/4) I_d, so that Theta Theta^T = I_d / sqrt(d) has
    Frobenius norm 1."""
    d = checks.positive_int("d", d)
    return torch.eye(d, dtype=torch.float64) * d**-0.25


def zfb_init(
    d: int,
    sigma: float,
    theta: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang-Frei-Bartlett initialisation ``(W^KQ(0), W^PV(0))``, both ``(d + 1, d +
    1)``.

    W^PV(0) = sigma [[0, 0], [0, 1]] and W^KQ(0) = sigma [[Theta Theta^T, 0], [0, 0]],
    where ``theta: (d, m)`` (any m; default :func:`default_theta`) must satisfy ||Theta
    Theta^T||_F = 1. Then u(0) = sigma and U(0) = sigma Theta Theta^T in the reduced
    parameterisation (:class:`ReducedLSA`).
    """
    d, sigma, gram = check_lsa_options(d, sigma, theta)
    w_kq = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    w_kq[:d, :d] = sigma * gram
    w_pv = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    w_pv[d, d] = sigma
    return w_kq.to(dtype), w_pv.to(dtype)


def check_lsa_options(
    d: int, sigma: float = 0.1, theta: torch.Tensor | None = None
) -> tuple[int, float, torch.Tensor]:
    """Check the options of :class:`LinearSelfAttention` and :class:`ReducedLSA` (their
    constructors call this, and so does a config, without building a model); return
    ``(d, sigma, Theta Theta^T)``."""
    d = checks.positive_int("d", d)
    sigma = checks.positive_float("sigma", sigma)
    return d, sigma, _theta_gram(d, theta)


def _theta_gram(d: int, theta: torch.Tensor | None) -> torch.Tensor:
    """Theta Theta^T in float64, after checking ``theta: (d, m)`` and ||Theta
    Theta^T||_F = 1."""
    if theta is None:
        theta = default_theta(d)
    if not isinstance(theta, torch.Tensor):
        try:
            theta = torch.as_tensor(theta, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"theta must be a (d, m) matrix with d = {d}, got "
                f"{type(theta).__name__}"
            ) from None
    if theta.ndim != 2 or theta.shape[0] != d:
        raise ValueError(
            f"theta must have shape (d, m) with d = {d}, got {tuple(theta.shape)}"
        )
    gram = theta.to(torch.float64) @ theta.to(torch.float64).T
    norm = torch.linalg.matrix_norm(gram).item()
    if not abs(norm - 1.0) <= 1e-6:
        raise ValueError(
            "theta must satisfy ||theta theta^T||_F = 1 (Zhang-Frei-Bartlett), got "
            f"{norm:.6g}"
        )
    return gram


def _check_query_prompt(xs: torch.Tensor, ys: torch.Tensor, d: int) -> int:
    """Check a prompt whose last point is the query; return the number of context points
    N = n_points - 1."""
    _, n_points, got_d = checks.prompt_tensors(xs, ys)
    if got_d != d:
        raise ValueError(
            f"xs must have d = {d} coordinates (the model's n_dims), got {got_d}"
        )
    if n_points < 2:
        raise ValueError(
            "the prompt needs at least 2 points (N >= 1 examples and the query), got "
            f"n_points = {n_points}"
        )
    return n_points - 1


def _query_embedding(
    xs: torch.Tensor, ys: torch.Tensor, model: nn.Module
) -> torch.Tensor:
    """E: (batch, d + 1, N + 1) of the first N points and the query x_q = xs[:, -1] (its
    label is not read), in the dtype of ``model``'s weights (so that float64 prompts
    reach a float32 model, as they reach the GPT)."""
    return lsa_embedding(xs[:, :-1], ys[:, :-1], xs[:, -1]).to(
        next(model.parameters()).dtype
    )


class LinearSelfAttention(nn.Module):
    """Zhang-Frei-Bartlett LSA with full weights ``w_kq``, ``w_pv: (d + 1, d + 1)``.

    On the embedding E: (batch, d + 1, N + 1) of :func:`icl_lib.prompts.lsa_embedding`,
    f(E) = E + W^PV E (E^T W^KQ E) / N, and the prediction is entry (d + 1, N + 1) of
    f(E) (1-based). Initialised with :func:`zfb_init` (``sigma``, ``theta``).
    """

    predicts_every_position = False

    def __init__(
        self, d: int, *, sigma: float = 0.1, theta: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        w_kq, w_pv = zfb_init(d, sigma, theta)
        self.d = d
        self.w_kq = nn.Parameter(w_kq)
        self.w_pv = nn.Parameter(w_pv)

    @classmethod
    def from_weights(
        cls, w_kq: torch.Tensor, w_pv: torch.Tensor
    ) -> LinearSelfAttention:
        """An LSA with the given ``(d + 1, d + 1)`` weights (copied; dtype kept)."""
        for name, w in (("w_kq", w_kq), ("w_pv", w_pv)):
            if (
                not isinstance(w, torch.Tensor)
                or w.ndim != 2
                or w.shape[0] != w.shape[1]
                or w.shape[0] < 2
            ):
                got = (
                    tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
                )
                raise ValueError(
                    f"{name} must be a square (d + 1, d + 1) tensor with d >= 1, got "
                    f"{got}"
                )
        if w_kq.shape != w_pv.shape:
            raise ValueError(
                f"w_kq and w_pv must have the same shape, got {tuple(w_kq.shape)} and "
                f"{tuple(w_pv.shape)}"
            )
        model = cls(w_kq.shape[0] - 1)
        model.w_kq = nn.Parameter(w_kq.detach().clone())
        model.w_pv = nn.Parameter(w_pv.detach().clone())
        return model

    @property
    def product(self) -> torch.Tensor:
        """W^PV_{d+1,d+1} W^KQ_{11}: ``(d, d)``, the A = u U of the reduced form; its
        global minimum is Gamma^{-1}.

        The prediction depends on the other entries too unless they are zero, as they
        stay from the ZFB initialisation.
        """
        return self.w_pv[-1, -1] * self.w_kq[: self.d, : self.d]

    def transform(self, embedding: torch.Tensor) -> torch.Tensor:
        """f(E) = E + W^PV E (E^T W^KQ E) / N: ``(batch, d + 1, N + 1) -> (batch, d + 1,
        N + 1)``."""
        n = embedding.shape[2] - 1
        # (batch, N + 1, N + 1)
        scores = embedding.transpose(1, 2) @ self.w_kq @ embedding
        return embedding + self.w_pv @ embedding @ scores / n

    def predict(self, embedding: torch.Tensor) -> torch.Tensor:
        """Entry (d + 1, N + 1) of f(E), computed from the last column only: ``(batch,
        d + 1, N + 1) -> (batch,)``."""
        n = embedding.shape[2] - 1
        # (batch, N + 1, 1)
        query_scores = embedding.transpose(1, 2) @ (self.w_kq @ embedding[:, :, -1:])
        values = self.w_pv[-1] @ embedding  # (batch, N + 1): row d + 1 of W^PV E
        return embedding[:, -1, -1] + (values * query_scores[..., 0]).sum(-1) / n

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predict the last point's label from the others: ``(batch, n_points, d),
        (batch, n_points) -> (batch, 1)``."""
        _check_query_prompt(xs, ys, self.d)
        return self.predict(_query_embedding(xs, ys, self))[:, None]


class ReducedLSA(nn.Module):
    """The LSA in Zhang-Frei-Bartlett's reduced form: a scalar ``u`` and ``U: (d, d)``.

    It is :class:`LinearSelfAttention` with W^PV = [[0, 0], [0, u]] and W^KQ = [[U, 0],
    [0, 0]] (see :meth:`full_weights`); its prediction is u (1/N) sum_i y_i x_i^T U x_q.
    Initialised at u = sigma, U = sigma Theta Theta^T, as :func:`zfb_init`.
    """

    predicts_every_position = False

    def __init__(
        self, d: int, *, sigma: float = 0.1, theta: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        d, sigma, gram = check_lsa_options(d, sigma, theta)
        self.d = d
        self.u = nn.Parameter(torch.tensor(sigma, dtype=torch.float32))
        self.U = nn.Parameter((sigma * gram).to(torch.float32))

    @property
    def product(self) -> torch.Tensor:
        """A = u U: ``(d, d)``; its global minimum is Gamma^{-1}."""
        return self.u * self.U

    def full_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W^KQ, W^PV)``, both ``(d + 1, d + 1)``, of the equivalent full
        :class:`LinearSelfAttention`."""
        d = self.d
        w_kq = F.pad(self.U, (0, 1, 0, 1))  # U in the top-left block
        w_pv = F.pad(self.u.reshape(1, 1), (d, 0, d, 0))  # u in the bottom-right corner
        return w_kq, w_pv

    def predict(self, embedding: torch.Tensor) -> torch.Tensor:
        """u (1/N) sum_{i <= N} y_i x_i^T U x_q from E:
        ``(batch, d + 1, N + 1) -> (batch,)``."""
        n = embedding.shape[2] - 1
        xs, ys, x_query = (
            embedding[:, :-1, :-1],
            embedding[:, -1, :-1],
            embedding[:, :-1, -1],
        )
        moment = (xs * ys[:, None, :]).sum(-1) / n  # (batch, d): (1/N) sum_i y_i x_i
        return self.u * torch.einsum("bi,ij,bj->b", moment, self.U, x_query)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predict the last point's label from the others: ``(batch, n_points, d),
        (batch, n_points) -> (batch, 1)``."""
        _check_query_prompt(xs, ys, self.d)
        return self.predict(_query_embedding(xs, ys, self))[:, None]


# -------------------------------------------- von Oswald et al.'s linear transformer


class LinearAttentionLayer(nn.Module):
    """One residual linear self-attention layer with merged projections ``P``, ``Q: (d +
    1, d + 1)``.

    On tokens e_j (rows of ``(batch, N + 1, d + 1)``), e_j <- e_j + P (1/N) sum_{i <= N}
    e_i e_i^T Q e_j: every token, the query included, attends to the N context tokens
    only.
    """

    def __init__(self, d: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.randn(d + 1, d + 1) * init_std)
        self.Q = nn.Parameter(torch.randn(d + 1, d + 1) * init_std)

    def forward(self, tokens: torch.Tensor, n_context: int) -> torch.Tensor:
        """``(batch, N + 1, d + 1) -> (batch, N + 1, d + 1)``, the first ``n_context``
        rows being the context."""
        context = tokens[:, :n_context]
        # (batch, d + 1, d + 1): (1/N) sum_i e_i e_i^T
        moment = context.transpose(1, 2) @ context / n_context
        return tokens + tokens @ self.Q.T @ moment @ self.P.T


def check_linear_transformer_options(
    d: int, n_layers: int = 1, *, init_std: float = 0.02
) -> int:
    """Check the options of :class:`LinearTransformer` (its constructor calls this, and
    so does a config, without building a model); return ``d``."""
    d = checks.positive_int("d", d)
    checks.positive_int("n_layers", n_layers)
    checks.nonnegative_float("init_std", init_std)
    return d


class LinearTransformer(nn.Module):
    """von Oswald et al.'s stack of ``n_layers`` :class:`LinearAttentionLayer`s over
    (x_i, y_i) and (x_q, 0).

    The prediction is minus the query's y entry after the last layer (von Oswald et
    al.'s convention: a layer that performs a GD step subtracts the current prediction
    from every y entry, and the query's starts at 0). With P = [[0, 0], [0, -eta]] and
    Q = [[I, 0], [0, 0]] one layer is one GD step of size eta from w = 0 on (1/2N) sum_i
    (<w, x_i> - y_i)^2, and k such layers are k steps. ``layers[l].P``, ``layers[l].Q``
    are the weights of layer l.
    """

    predicts_every_position = False

    def __init__(self, d: int, n_layers: int = 1, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.d = check_linear_transformer_options(d, n_layers, init_std=init_std)
        self.layers = nn.ModuleList(
            LinearAttentionLayer(d, init_std) for _ in range(n_layers)
        )

    def transform(self, tokens: torch.Tensor, n_context: int) -> torch.Tensor:
        """Apply every layer: ``(batch, N + 1, d + 1) -> (batch, N + 1, d + 1)``."""
        for layer in self.layers:
            tokens = layer(tokens, n_context)
        return tokens

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predict the last point's label from the others: ``(batch, n_points, d),
        (batch, n_points) -> (batch, 1)``."""
        n_context = _check_query_prompt(xs, ys, self.d)
        # rows (x_i, y_i), last row (x_q, 0)
        tokens = _query_embedding(xs, ys, self).transpose(1, 2)
        return -self.transform(tokens, n_context)[:, -1, -1:]


# -------------------------------------------- GPT-2-style decoder (Garg et al.)

TOKEN_FORMATS = ("interleaved", "paired", "compact")
ATTENTION_KINDS = ("softmax", "momentum")


@dataclass(frozen=True)
class GPTConfig:
    """Size and prompt format of :class:`GPT`; the book's sizes are
    :data:`MODEL_PRESETS`.

    ``token_format``: ``"interleaved"`` (Garg et al.: x_i, then (y_i, 0, ..., 0)) or
    ``"paired"`` (the book's variant: (x_i, 0), then (x_i, y_i)) or ``"compact"`` (one
    token (x_i, x_{i-1}, y_{i-1}) per point: half the sequence); see
    :mod:`icl_lib.prompts`. ``n_points`` is the longest prompt. ``attention``:
    ``"softmax"`` (causal softmax attention) or ``"momentum"`` (Dai et al.'s momentum
    attention, softmax attention plus sum_{i<t} momentum^(t-i) v_i; see
    :func:`momentum_term`) with ``momentum`` in (0, 1).
    """

    n_dims: int
    n_points: int
    n_layers: int = 12
    width: int = 256
    n_heads: int = 8
    token_format: str = "interleaved"
    dropout: float = 0.0
    attention: str = "softmax"
    momentum: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_dims", "n_points", "n_layers", "width", "n_heads"):
            checks.positive_int(name, getattr(self, name))
        if self.width % self.n_heads:
            raise ValueError(
                f"width must be divisible by n_heads = {self.n_heads}, got width = "
                f"{self.width}"
            )
        checks.choice("token_format", self.token_format, TOKEN_FORMATS)
        dropout = checks.unit_interval("dropout", self.dropout)
        if dropout == 1:
            raise ValueError("dropout must lie in [0, 1), got 1")
        checks.choice("attention", self.attention, ATTENTION_KINDS)
        momentum = checks.unit_interval("momentum", self.momentum)
        if self.attention == "momentum" and not 0 < momentum < 1:
            raise ValueError(
                "momentum must lie in (0, 1) when attention = 'momentum', got "
                f"{self.momentum!r}"
            )
        if self.attention == "softmax" and momentum != 0:
            raise ValueError(
                "momentum must be 0 when attention = 'softmax' (it is unused), got "
                f"{self.momentum!r}"
            )

    @property
    def token_dim(self) -> int:
        """Size of a token: d (interleaved), d + 1 (paired) or 2 d + 1 (compact)."""
        return {
            "interleaved": self.n_dims,
            "paired": self.n_dims + 1,
            "compact": 2 * self.n_dims + 1,
        }[self.token_format]

    @property
    def tokens_per_point(self) -> int:
        """Tokens per example: 2 (interleaved, paired) or 1 (compact)."""
        return 1 if self.token_format == "compact" else 2


def momentum_term(values: torch.Tensor, momentum: float) -> torch.Tensor:
    """Dai et al.'s momentum term m_t = sum_{i<t} momentum^(t-i) v_i: ``(..., T,
    head_dim) -> (..., T, head_dim)``.

    Computed in linear time by the recursion m_1 = 0, m_t = momentum (m_{t-1} + v_{t-1})
    over the sequence axis (the second last); position t sees only values before it, so
    the term is causal.
    """
    steps = [torch.zeros_like(values[..., 0, :])]
    for t in range(1, values.shape[-2]):
        steps.append(momentum * (steps[-1] + values[..., t - 1, :]))
    return torch.stack(steps, dim=-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through
    ``F.scaled_dot_product_attention(is_causal=True)``.

    With ``config.attention == "momentum"`` each head's output gets Dai et al.'s
    momentum term sum_{i<t} eta^(t-i) v_i (:func:`momentum_term`, eta =
    ``config.momentum``) before the output projection.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # False only in the copies of without_causal_mask, the bug that chapter 4 shows
        self.causal = True
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.momentum = config.momentum if config.attention == "momentum" else 0.0
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(batch, T, width) -> (batch, T, width)``."""
        batch, length, width = h.shape
        q, k, v = self.qkv(h).split(width, dim=-1)
        q, k, v = (
            t.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)
            for t in (q, k, v)
        )
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        if self.momentum:
            out = out + momentum_term(v, self.momentum)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: h + attn(LN(h)), then h + MLP(LN(h)) with a 4x
    GELU MLP."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(batch, T, width) -> (batch, T, width)``."""
        h = h + self.dropout(self.attn(self.ln_1(h)))
        return h + self.dropout(self.mlp(self.ln_2(h)))


class GPT(nn.Module):
    """GPT-2-style decoder for in-context regression (Garg et al.): read-in, blocks,
    final LN, read-out.

    Read-in Linear(token_dim, width), learned positional embeddings for every token
    position, pre-LN blocks with causal attention, final LayerNorm, read-out
    Linear(width, 1) at the x positions. Weights are initialised as in GPT-2 (normal,
    std 0.02; residual projections 0.02 / sqrt(2 n_layers)) from torch's global
    generator, so build it under a seed (:func:`make_model` with ``seed``).
    """

    predicts_every_position = True

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.read_in = nn.Linear(config.token_dim, config.width)
        self.positions = nn.Embedding(
            config.tokens_per_point * config.n_points, config.width
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.width)
        self.read_out = nn.Linear(config.width, 1)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(
                    parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers)
                )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """The input sequence ``(batch, tokens_per_point * n_points, token_dim)``; xs
        with fewer than n_dims coordinates are zero-padded."""
        _, n_points, d = checks.prompt_tensors(xs, ys)
        if d > self.config.n_dims:
            raise ValueError(
                f"xs has d = {d} coordinates, more than the model's n_dims = "
                f"{self.config.n_dims}"
            )
        if n_points > self.config.n_points:
            raise ValueError(
                f"the prompt has {n_points} points, more than the model's n_points = "
                f"{self.config.n_points}"
            )
        if d < self.config.n_dims:
            xs = F.pad(xs, (0, self.config.n_dims - d))
        encode = {
            "interleaved": interleaved_tokens,
            "paired": paired_tokens,
            "compact": compact_tokens,
        }
        return encode[self.config.token_format](xs, ys)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions at every x position: ``(batch, n_points, d), (batch,
        n_points) -> (batch, n_points)``.

        ``preds[:, i]`` is read at the token of x_i and depends on x_1, y_1, ..., x_i
        only.
        """
        tokens = self.tokens(xs, ys)
        length = tokens.shape[1]
        h = (
            self.read_in(tokens.to(self.read_in.weight.dtype))
            + self.positions.weight[:length]
        )
        h = self.dropout(h)
        for block in self.blocks:
            h = block(h)
        if self.config.tokens_per_point == 2:
            h = h[:, x_positions(length // 2)]
        h = self.ln_f(h)
        return self.read_out(h)[..., 0]


# -------------------------------------------- building models from specs


def without_causal_mask(model: GPT) -> GPT:
    """A copy of the GPT ``model`` whose attention has no causal mask (each
    :class:`CausalSelfAttention` with ``causal = False``): the same parameters and
    state-dict keys, called the same way (``(xs (batch, n, d), ys (batch, n)) -> (batch,
    n)``), but every position sees the whole prompt, so the prediction at a position can
    read the labels after it. A bug, kept to show what it does and that
    :func:`icl_lib.evaluate.label_leak` catches it. ``model`` itself is left as it
    is."""
    if not isinstance(model, GPT):
        raise ValueError(
            f"model must be an icl_lib.models.GPT, got {type(model).__name__}"
        )
    unmasked = copy.deepcopy(model)
    for block in unmasked.blocks:
        block.attn.causal = False
    return unmasked


def gpt(
    n_dims: int,
    n_points: int,
    n_layers: int = 12,
    width: int = 256,
    n_heads: int = 8,
    token_format: str = "interleaved",
    dropout: float = 0.0,
    attention: str = "softmax",
    momentum: float = 0.0,
) -> GPT:
    """The :class:`GPT` of these options; :class:`GPTConfig` (same names and defaults)
    documents and checks them."""
    return GPT(
        GPTConfig(
            n_dims,
            n_points,
            n_layers,
            width,
            n_heads,
            token_format,
            dropout,
            attention,
            momentum,
        )
    )


# The kinds: each name's constructor. The GPT's takes the prompt shape (n_dims,
# n_points), those of the models that read the last point as the query take d = n_dims;
# their other parameters are the spec's options.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "gpt": gpt,
    "lsa": LinearSelfAttention,
    "reduced_lsa": ReducedLSA,
    "linear_transformer": LinearTransformer,
}
_PROMPT_SHAPE = ("n_dims", "n_points", "d")

# The book's model sizes (configs/README.md), named in a config's model table as
# ``preset = "laptop"``; other keys of the table override the preset's. ``laptop``: what
# learns dense regression on a CPU in minutes (about 150k parameters); ``laptop_deep``:
# the selection recipe's model, which learns sparse regression on a CPU; ``paper``: Garg
# et al.'s GPT-2 (about 9.5M parameters at d = 20), for a GPU.
MODEL_PRESETS: dict[str, dict] = {
    "laptop": {
        "name": "gpt",
        "n_layers": 3,
        "width": 64,
        "n_heads": 2,
        "token_format": "paired",
    },
    "laptop_deep": {
        "name": "gpt",
        "n_layers": 6,
        "width": 64,
        "n_heads": 4,
        "token_format": "paired",
    },
    "paper": {
        "name": "gpt",
        "n_layers": 12,
        "width": 256,
        "n_heads": 8,
        "token_format": "interleaved",
    },
}


def model_spec(spec: Mapping) -> dict:
    """The model table with its preset written out, as runs store it: ``{"preset":
    "laptop", "width": 32}`` is ``{"name": "gpt", "n_layers": 3, "width": 32, "n_heads":
    2, "token_format": "paired"}``; a table without a preset comes back as a copy."""
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"model must be a table with a 'name' or a 'preset', got {spec!r}"
        )
    spec = dict(spec)
    if "preset" not in spec:
        return spec
    preset = MODEL_PRESETS[
        checks.choice("model.preset", spec.pop("preset"), tuple(MODEL_PRESETS))
    ]
    if spec.setdefault("name", preset["name"]) != preset["name"]:
        raise ValueError(
            f"model.name must be {preset['name']!r} with a preset (or left out), got "
            f"{spec['name']!r}"
        )
    return {**preset, **spec}


# The largest model the library builds: 2^30 parameters (4 GiB of float32 weights, 16
# GiB with AdamW's state and the gradients), far above the paper preset's 9.5M; a larger
# width or depth is a typo, refused before allocating.
MAX_PARAMETERS = 2**30


def _check_size(options: Mapping, n_dims: int) -> None:
    """Refuse a model whose parameter count (a GPT's 12 L W^2 plus its read-in and
    read-out, or the query-reading models' few (d + 1, d + 1) matrices per layer) is
    beyond :data:`MAX_PARAMETERS`."""
    width, layers = options.get("width", n_dims + 1), options.get("n_layers", 1)
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0
        for v in (width, layers)
    ):
        return  # the kind's own checks name the bad value
    estimate = (
        12 * layers * width**2
        + 4 * width * (n_dims + 1)
        + 4 * layers * (n_dims + 1) ** 2
    )
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"model: width {width}, n_layers {layers} and n_dims {n_dims} give about "
            f"{estimate:.2e} parameters; at most {MAX_PARAMETERS:.2e} (2**30) are built"
        )


def predicts_every_position(name: str) -> bool:
    """Whether the model ``name`` of :data:`MODELS` predicts at every position (the GPT:
    ``P = n_points``) or reads the last point as the query (``P = 1``), known from its
    spec before it is built."""
    return name == "gpt"


def _check_values(name: str, options: Mapping, n_dims: int, n_points: int) -> None:
    """Check a spec's option values with the checks its constructor runs, without
    building it (no weights)."""
    if name == "gpt":
        GPTConfig(n_dims=n_dims, n_points=n_points, **options)
        return
    if n_points < 2:
        raise ValueError(
            f"n_points must be >= 2 for {name!r} (N >= 1 examples and a query), got "
            f"{n_points}"
        )
    if name == "linear_transformer":
        check_linear_transformer_options(n_dims, **options)
    else:
        check_lsa_options(n_dims, **options)


def check_model_spec(spec: Mapping, n_dims: int, n_points: int) -> tuple[str, dict]:
    """Validate a model table ``{"name": ..., **options}`` or ``{"preset": ...,
    **changes}`` for prompts of ``n_points`` points in ``n_dims`` dimensions; return
    ``(name, options)`` with the preset written out.

    The option names are checked by :func:`icl_lib.checks.spec_options`, the values by
    the kind's own checks (nothing is built); value errors name the field as
    ``model.<field>``.
    """
    name, options = checks.spec_options(
        MODELS, model_spec(spec), "model", _PROMPT_SHAPE
    )
    checks.positive_int("n_dims", n_dims)
    checks.positive_int("n_points", n_points)
    _check_size(options, n_dims)
    try:
        _check_values(name, options, n_dims, n_points)
    except ValueError as error:
        raise ValueError(f"model.{error}") from None
    return name, options


def make_model(
    spec: Mapping, n_dims: int, n_points: int, seed: int | None = None
) -> nn.Module:
    """Build the model a config describes, e.g. ``make_model({"preset": "laptop"}, 5,
    11, seed=0)`` or ``make_model({"name": "lsa", "sigma": 0.1}, 5, 21)``.

    With ``seed``, random initial weights come from torch's global generator seeded with
    it inside ``torch.random.fork_rng`` (the caller's global random state is left as it
    was). Built on the CPU.
    """
    name, options = check_model_spec(spec, n_dims, n_points)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            # the CPU generator only: models are built on the CPU
            torch.default_generator.manual_seed(seed)
        if predicts_every_position(name):
            return MODELS[name](n_dims, n_points, **options)
        return MODELS[name](n_dims, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
