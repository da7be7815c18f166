"""In-context learning versus fine-tuning in the book's GPT: predictions, attention traces, Dai et al.'s metrics.

For a prompt of k demonstrations (x_i, y_i) and a query x_q (``xs: (batch, k + 1, d)``, ``ys: (batch, k + 1)``, the
last point being the query; its label is never read), with a trained :class:`icl_lib.models.GPT`:

* **ICL**: the model reads the prompt as it is (:func:`icl_tokens`).
* **ZSL** (zero-shot): the same sequence with every label replaced by 0 (:func:`zero_shot_tokens`): the model sees
  the inputs x_i but no label, so it has no information about the task.
* **FT** (fine-tuning): starting from the model, one SGD step per demonstration in order, each on the squared error
  of the zero-shot prediction at x_i against y_i, updating only the key and value rows of every layer's fused
  ``qkv`` projection (weights and biases); then the zero-shot prompt is read by the fine-tuned model
  (:func:`finetune_key_value`). Each prompt is its own task, with its own fine-tuned weights.

:func:`trace` runs the GPT with explicit softmax attention and records, per layer, the attention output
h = softmax(q K^T / sqrt(d_head)) V of every head (concatenated, before the output projection) and the attention
maps. The metrics (:func:`rec2ftp`, :func:`sim_aou`, :func:`sim_am`, :func:`kendall_tau`) are plain functions of
these tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icl_lib import checks
from icl_lib.models import GPT, momentum_term
from icl_lib.prompts import x_positions

# ---------------------------------------------------------------- prompts and an explicit forward pass


def _check_gpt(model: object) -> GPT:
    if not isinstance(model, GPT):
        raise ValueError(f"model must be an icl_lib.models.GPT, got {type(model).__name__}")
    return model


def icl_tokens(model: GPT, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The ICL input: the model's tokens of the whole prompt, ``(batch, 2 n_points, token_dim)``."""
    return _check_gpt(model).tokens(xs, ys)


def zero_shot_tokens(model: GPT, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The zero-shot input: the prompt's tokens with every label set to 0, ``(batch, 2 n_points, token_dim)``."""
    return _check_gpt(model).tokens(xs, torch.zeros_like(ys))


@dataclass(frozen=True)
class KeyValueDelta:
    """Per-prompt changes of one layer's key and value projections: ``weight: (batch, 2 width, width)`` (key rows
    first, then value rows) and ``bias: (batch, 2 width)``."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass(frozen=True)
class Trace:
    """What :func:`trace` records: ``predictions: (batch, n_points)`` at the x positions; per layer,
    ``attention_outputs[l]: (batch, T, width)`` (all heads' softmax(q K^T / sqrt(d_head)) V, concatenated, before
    the output projection) and ``attention_maps[l]: (batch, n_heads, T, T)`` (row t: token t's weights)."""

    predictions: torch.Tensor
    attention_outputs: list[torch.Tensor]
    attention_maps: list[torch.Tensor]


def trace(model: GPT, tokens: torch.Tensor, deltas: Sequence[KeyValueDelta] | None = None) -> Trace:
    """The GPT's forward pass on ``tokens: (batch, T, token_dim)`` with explicit attention, optionally with per-prompt
    key/value changes ``deltas`` (one :class:`KeyValueDelta` per layer). Equals ``model(xs, ys)`` (dropout off)."""
    model = _check_gpt(model)
    config = model.config
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[2] != config.token_dim:
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must have shape (batch, T, token_dim = {config.token_dim}), got {got}")
    if deltas is not None and len(deltas) != config.n_layers:
        raise ValueError(f"deltas must hold one KeyValueDelta per layer ({config.n_layers}), got {len(deltas)}")
    batch, length, _ = tokens.shape
    width, heads = config.width, config.n_heads
    head_dim = width // heads
    h = model.read_in(tokens.to(model.read_in.weight.dtype)) + model.positions.weight[:length]
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    outputs, maps = [], []
    for index, block in enumerate(model.blocks):
        attn = block.attn
        x = block.ln_1(h)
        qkv = attn.qkv(x)  # (batch, T, 3 width)
        if deltas is not None:
            delta = deltas[index]
            kv = torch.einsum("btw,bow->bto", x, delta.weight) + delta.bias[:, None, :]
            qkv = qkv + F.pad(kv, (width, 0))
        q, k, v = (t.view(batch, length, heads, head_dim).transpose(1, 2) for t in qkv.split(width, dim=-1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (batch, heads, T, T)
        out = weights @ v
        if attn.momentum:
            out = out + momentum_term(v, attn.momentum)
        out = out.transpose(1, 2).reshape(batch, length, width)
        outputs.append(out)
        maps.append(weights)
        h = h + attn.proj(out)
        h = h + block.mlp(block.ln_2(h))
    h = model.ln_f(h[:, x_positions(length // 2)])
    return Trace(model.read_out(h)[..., 0], outputs, maps)


def zero_deltas(model: GPT, batch: int) -> list[KeyValueDelta]:
    """No change: one zero :class:`KeyValueDelta` per layer for ``batch`` prompts."""
    model = _check_gpt(model)
    batch = checks.positive_int("batch", batch)
    width = model.config.width
    like = model.read_in.weight
    return [KeyValueDelta(like.new_zeros(batch, 2 * width, width), like.new_zeros(batch, 2 * width))
            for _ in model.blocks]


def finetune_key_value(model: GPT, xs: torch.Tensor, ys: torch.Tensor, learning_rate: float) -> list[KeyValueDelta]:
    """Fine-tune the key and value projections on each prompt's demonstrations: one SGD step per demonstration.

    ``xs: (batch, k + 1, d)``, ``ys: (batch, k + 1)``; the last point is the query and is not used. Step i (in order
    i = 1..k) descends (f_i - y_i)^2, where f_i is the prediction at x_i of the fine-tuned-so-far model on the
    zero-shot prompt (labels 0), with respect to the key/value rows (weights and biases) of every layer. Prompts are
    independent tasks: each has its own delta. Returns the final deltas (detached).
    """
    model = _check_gpt(model)
    batch, n_points, _ = checks.prompt_tensors(xs, ys)
    if n_points < 2:
        raise ValueError(f"the prompt needs k >= 1 demonstrations and a query, got n_points = {n_points}")
    learning_rate = checks.nonnegative_float("learning_rate", learning_rate)
    tokens = zero_shot_tokens(model, xs, ys)
    deltas = zero_deltas(model, batch)
    for i in range(n_points - 1):
        params = [t.requires_grad_() for delta in deltas for t in (delta.weight, delta.bias)]
        predictions = trace(model, tokens, deltas).predictions
        loss = (predictions[:, i] - ys[:, i].to(predictions)).pow(2).sum()
        grads = torch.autograd.grad(loss, params)
        stepped = [(p - learning_rate * g).detach() for p, g in zip(params, grads)]
        deltas = [KeyValueDelta(stepped[2 * j], stepped[2 * j + 1]) for j in range(len(deltas))]
    return deltas


def random_deltas_like(deltas: Sequence[KeyValueDelta], generator: torch.Generator) -> list[KeyValueDelta]:
    """The random-update control: Gaussian directions with each prompt's and layer's Frobenius norms of the given
    weight and bias changes (so the update has the fine-tuning update's size, not its direction)."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    def like(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)
        dims = tuple(range(1, t.ndim))
        scale = t.norm(dim=dims, keepdim=True) / noise.norm(dim=dims, keepdim=True).clamp_min(1e-30)
        return noise * scale

    return [KeyValueDelta(like(d.weight), like(d.bias)) for d in deltas]


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """ZSL, ICL and FT (and the random-update control) on one batch of prompts, read at the query.

    ``labels``, ``zsl``, ``icl``, ``ft``, ``random``: ``(batch,)`` label and predictions. ``h_*``: ``(batch, n_layers,
    width)`` attention outputs at the query's token. ``map_*``: ``(batch, n_layers, n_heads, q + 1)`` the query token's
    attention over positions 0..q (q = the query's position; the first q are the demonstrations' tokens).
    """

    labels: torch.Tensor
    zsl: torch.Tensor
    icl: torch.Tensor
    ft: torch.Tensor
    random: torch.Tensor
    h_zsl: torch.Tensor
    h_icl: torch.Tensor
    h_ft: torch.Tensor
    h_random: torch.Tensor
    map_zsl: torch.Tensor
    map_icl: torch.Tensor
    map_ft: torch.Tensor


def _at_query(result: Trace, query: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = torch.stack([out[:, query] for out in result.attention_outputs], dim=1)
    maps = torch.stack([m[:, :, query, : query + 1] for m in result.attention_maps], dim=1)
    return result.predictions[:, -1], h, maps


@torch.no_grad()
def _read(model: GPT, tokens: torch.Tensor, deltas: Sequence[KeyValueDelta] | None, query: int):
    return _at_query(trace(model, tokens, deltas), query)


def compare(
    model: GPT, xs: torch.Tensor, ys: torch.Tensor, learning_rate: float, generator: torch.Generator
) -> Comparison:
    """Zero-shot, ICL, fine-tuned (:func:`finetune_key_value`) and randomly updated model on each prompt's query."""
    model = _check_gpt(model)
    _, n_points, _ = checks.prompt_tensors(xs, ys)
    query = 2 * (n_points - 1)  # position of the query's x token
    deltas = finetune_key_value(model, xs, ys, learning_rate)
    blank = zero_shot_tokens(model, xs, ys)
    zsl, h_zsl, map_zsl = _read(model, blank, None, query)
    icl, h_icl, map_icl = _read(model, icl_tokens(model, xs, ys), None, query)
    ft, h_ft, map_ft = _read(model, blank, deltas, query)
    rnd, h_rnd, _ = _read(model, blank, random_deltas_like(deltas, generator), query)
    return Comparison(ys[:, -1], zsl, icl, ft, rnd, h_zsl, h_icl, h_ft, h_rnd, map_zsl, map_icl, map_ft)


def finetuning_accuracy(model: GPT, xs: torch.Tensor, ys: torch.Tensor, learning_rate: float) -> float:
    """Share of prompts whose query the fine-tuned model classifies right (sign of the prediction = label)."""
    deltas = finetune_key_value(model, xs, ys, learning_rate)
    query = 2 * (xs.shape[1] - 1)
    ft, _, _ = _read(model, zero_shot_tokens(model, xs, ys), deltas, query)
    return accuracy(ft, ys[:, -1])


# ---------------------------------------------------------------- metrics


def correct(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right/wrong for +-1 labels: sign(prediction) == label, with sign(0) read as +1. ``(n,), (n,) -> (n,)`` bool."""
    if not isinstance(predictions, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("predictions and labels must be tensors")
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions and labels must have the same shape, got {tuple(predictions.shape)} "
                         f"and {tuple(labels.shape)}")
    return torch.where(predictions >= 0, 1.0, -1.0) == labels.to(predictions.dtype)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of :func:`correct` predictions."""
    return correct(predictions, labels).double().mean().item()


def _bool_vector(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.ndim != 1:
        got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a 1-d bool tensor (right = True), got {got}")
    return value


def rec2ftp(zsl_correct: torch.Tensor, icl_correct: torch.Tensor, ft_correct: torch.Tensor) -> float:
    """Dai et al.'s recall to fine-tuning predictions: among the examples that fine-tuning gets right and zero-shot
    gets wrong, the share that ICL also gets right. Arguments: ``(n,)`` bool. NaN if there is no such example."""
    zsl, icl, ft = (_bool_vector(n, v) for n, v in
                    (("zsl_correct", zsl_correct), ("icl_correct", icl_correct), ("ft_correct", ft_correct)))
    if not zsl.shape == icl.shape == ft.shape:
        raise ValueError(f"zsl_correct, icl_correct and ft_correct must have one shape, got "
                         f"{tuple(zsl.shape)}, {tuple(icl.shape)}, {tuple(ft.shape)}")
    recovered = ft & ~zsl
    count = int(recovered.sum())
    return float("nan") if count == 0 else int((recovered & icl).sum()) / count


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle between the last-axis vectors of ``a`` and ``b``: ``(..., n), (..., n) -> (...)``.

    A zero vector has cosine 0 with everything.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim < 1:
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (a, b)]
        raise ValueError(f"a and b must be tensors of one shape (..., n), got {got}")
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    dots = (a * b).sum(-1)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(dots))


def sim_aou(h_zsl: torch.Tensor, h_icl: torch.Tensor, h_other: torch.Tensor) -> float:
    """SimAOU: mean cosine between the updates h_ICL - h_ZSL and h_other - h_ZSL of the attention outputs.

    Shapes ``(..., width)`` (for the book's GPT ``(batch, n_layers, width)``); the mean runs over all leading axes.
    ``h_other`` is the fine-tuned model's output, or the randomly updated one for the control.
    """
    return cosine_similarity(h_icl - h_zsl, h_other - h_zsl).mean().item()


def sim_am(map_a: torch.Tensor, map_b: torch.Tensor) -> float:
    """SimAM: mean cosine between attention maps ``(..., positions)`` (for the book's GPT ``(batch, n_layers,
    n_heads, q + 1)``), the mean running over all leading axes. Before: ICL vs ZSL; after: ICL vs FT."""
    return cosine_similarity(map_a, map_b).mean().item()


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between ``a`` and ``b`` along the last axis: ``(..., n), (..., n) -> (...)``.

    tau_b = (C - D) / sqrt((P - T_a)(P - T_b)) over the P = n (n - 1) / 2 pairs, with C concordant and D discordant
    pairs and T_a, T_b the pairs tied in a, in b (scipy's default). NaN where a or b is constant.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim < 1:
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (a, b)]
        raise ValueError(f"a and b must be tensors of one shape (..., n), got {got}")
    if a.shape[-1] < 2:
        raise ValueError(f"kendall_tau needs n >= 2 values along the last axis, got {a.shape[-1]}")
    sign_a = torch.sign(a[..., :, None] - a[..., None, :])
    sign_b = torch.sign(b[..., :, None] - b[..., None, :])
    upper = torch.ones(a.shape[-1], a.shape[-1], dtype=torch.bool, device=a.device).triu(1)
    concordance = (sign_a * sign_b)[..., upper].sum(-1).double()  # C - D
    untied_a = (sign_a != 0)[..., upper].sum(-1).double()  # P - T_a
    untied_b = (sign_b != 0)[..., upper].sum(-1).double()
    denominator = (untied_a * untied_b).sqrt()
    return torch.where(denominator > 0, concordance / denominator.clamp_min(1e-300),
                       torch.full_like(concordance, float("nan")))


def demonstration_attention(maps: torch.Tensor) -> torch.Tensor:
    """The query's attention to the demonstrations' tokens (all positions but the query's own), averaged over layers
    and heads: ``(batch, n_layers, n_heads, q + 1) -> (batch, q)``."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[-1] < 3:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must have shape (batch, n_layers, n_heads, q + 1) with q >= 2, got {got}")
    return maps[..., :-1].mean(dim=(1, 2))
