"""In-context learning versus fine-tuning in the book's GPT: predictions, attention
traces, Dai et al.'s metrics.

For a prompt of k demonstrations (x_i, y_i) and a query x_q (``xs: (batch, k + 1, d)``,
``ys: (batch, k + 1)``, the last point being the query; its label is never read), with a
trained :class:`icl_lib.models.GPT`:

* **ICL**: the model reads the prompt as it is (:func:`icl_tokens`).
* **ZSL** (zero-shot): the same sequence with every label replaced by 0
  (:func:`zero_shot_tokens`): the model sees the inputs x_i but no label, so it has no
  information about the task.
* **FT** (fine-tuning): starting from the model, one SGD step per demonstration in
  order, each on the squared error of the zero-shot prediction at x_i against y_i,
  updating only the key and value rows of every layer's fused ``qkv`` projection
  (weights and biases); then the zero-shot prompt is read by the fine-tuned model
  (:func:`finetune_key_value`). Each prompt is its own task, with its own fine-tuned
  weights.

:func:`trace` runs the GPT with explicit softmax attention and records, per layer, the
attention output h = softmax(q K^T / sqrt(d_head)) V of every head (concatenated, before
the output projection) and the attention maps. The metrics (:func:`rec2ftp`,
:func:`sim_aou`, :func:`sim_am`, :func:`kendall_tau`) are plain functions of these
tensors.

Dai et al.'s public code (microsoft/LMOps, ``understand_icl/icl_ft/compute_sim.py`` and
``compute_training_example_attn.py``) measures some of them differently; the pieces it
needs are re-implemented here: the attention output after the output projection and the
raw (pre-softmax) scores (:class:`Trace`), per-vector normalisation before SimAOU
(``sim_aou(..., normalize=True)``), and the fine-tuning side's "attention to the
training tokens", a softmax of dot products between the fine-tuned model's query vector
and the query vectors recorded on the training tokens during fine-tuning
(:func:`finetune_key_value_recorded`, :func:`training_token_attention`,
:func:`context_attention`, :func:`example_level`).

``layer_causal=True`` (:func:`finetune_key_value`) is Deutch et al.'s layer-causal
gradient descent (LCGD): every block's input is detached and each block's read-out
(final LayerNorm and read-out head applied to that block's output) has its own loss, so
a layer's update uses the layers below it only, as in-context learning does.

:func:`dual_form_metrics` computes every metric of chapter 3 for one model, the book's
way and Dai et al.'s, with the controls: FT's learning rate chosen on validation tasks,
the rest on held-out ones (:func:`rec2ftp_excess`: Rec2FTP minus its base rate, with a
bootstrap interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from icl_lib import checks
from icl_lib.devices import check_seed, make_generator
from icl_lib.evaluation import mean_interval
from icl_lib.models import GPT, momentum_term
from icl_lib.prompts import x_positions

# ---------------------------------------- prompts and an explicit forward pass


# The public functions below check their arguments once, at the top; the helpers they
# call do not check again.


def _shape_of(value: object) -> tuple[int, ...] | str:
    """For an error message: a tensor's shape, or the type of what came instead."""
    return (
        tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    )


def _check_gpt(model: object) -> GPT:
    if not isinstance(model, GPT):
        raise ValueError(
            f"model must be an icl_lib.models.GPT, got {type(model).__name__}"
        )
    return model


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_one_shape(names: str, shape: str, *tensors: object) -> None:
    """``ValueError`` unless ``tensors`` are tensors of one shape, at least 1-d
    (``names`` and ``shape`` name them)."""
    if (
        not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors)
        or len({t.shape for t in tensors}) > 1
    ):
        raise ValueError(
            f"{names} must be tensors of one shape {shape}, got "
            f"{[_shape_of(t) for t in tensors]}"
        )


def icl_tokens(model: GPT, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The ICL input: the model's tokens of the whole prompt, ``(batch, 2 n_points,
    token_dim)``."""
    return model.tokens(xs, ys)


def zero_shot_tokens(model: GPT, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The zero-shot input: the prompt's tokens with every label set to 0, ``(batch, 2
    n_points, token_dim)``."""
    return _check_gpt(model).tokens(xs, torch.zeros_like(ys))


@dataclass(frozen=True)
class KeyValueDelta:
    """Per-prompt changes of one layer's key and value projections: ``weight: (batch, 2
    width, width)`` (key rows first, then value rows) and ``bias: (batch, 2 width)``."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass(frozen=True)
class Trace:
    """What :func:`trace` records: ``predictions: (batch, n_points)`` at the x
    positions; per layer, ``attention_outputs[l]: (batch, T, width)`` (all heads'
    softmax(q K^T / sqrt(d_head)) V, concatenated, before the output projection),
    ``attention_maps[l]: (batch, n_heads, T, T)`` (row t: token t's weights),
    ``projected_outputs[l]: (batch, T, width)`` (the attention output after the output
    projection, what Dai et al.'s code records), ``queries[l]: (batch, T, width)``
    (every head's query vector, concatenated, scaled by 1 / sqrt(d_head) as in fairseq),
    ``scores[l]: (batch, n_heads, T, T)`` (the raw scores q K^T / sqrt(d_head) before
    the causal mask and the softmax) and ``layer_predictions[l]: (batch, n_points)``
    (the read-out of block l's output: final LayerNorm and read-out head; the last
    equals ``predictions``)."""

    predictions: torch.Tensor
    attention_outputs: list[torch.Tensor]
    attention_maps: list[torch.Tensor]
    projected_outputs: list[torch.Tensor]
    queries: list[torch.Tensor]
    scores: list[torch.Tensor]
    layer_predictions: list[torch.Tensor]


def trace(
    model: GPT,
    tokens: torch.Tensor,
    deltas: Sequence[KeyValueDelta] | None = None,
    *,
    layer_causal: bool = False,
) -> Trace:
    """The GPT's forward pass on ``tokens: (batch, T, token_dim)`` with explicit
    attention, optionally with per-prompt key/value changes ``deltas`` (one
    :class:`KeyValueDelta` per layer). Equals ``model(xs, ys)`` (dropout off).

    ``layer_causal``: detach every block's input (the values are unchanged; gradients of
    ``layer_predictions[l]`` then reach block l's parameters only, as Deutch et al.'s
    layer-causal GD needs)."""
    config = _check_gpt(model).config
    _check_flag("layer_causal", layer_causal)
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.ndim != 3
        or tokens.shape[2] != config.token_dim
    ):
        raise ValueError(
            f"tokens must have shape (batch, T, token_dim = {config.token_dim}), got "
            f"{_shape_of(tokens)}"
        )
    if deltas is not None and len(deltas) != config.n_layers:
        raise ValueError(
            f"deltas must hold one KeyValueDelta per layer ({config.n_layers}), got "
            f"{len(deltas)}"
        )
    batch, length, _ = tokens.shape
    width, heads = config.width, config.n_heads
    head_dim = width // heads
    h = (
        model.read_in(tokens.to(model.read_in.weight.dtype))
        + model.positions.weight[:length]
    )
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    outputs, maps, projected, queries, raw_scores, layer_predictions = (
        [],
        [],
        [],
        [],
        [],
        [],
    )
    positions = x_positions(length // 2)
    for index, block in enumerate(model.blocks):
        attn = block.attn
        if layer_causal:
            h = h.detach()
        x = block.ln_1(h)
        qkv = attn.qkv(x)  # (batch, T, 3 width)
        if deltas is not None:
            delta = deltas[index]
            kv = torch.einsum("btw,bow->bto", x, delta.weight) + delta.bias[:, None, :]
            qkv = qkv + F.pad(kv, (width, 0))
        q, k, v = (
            t.view(batch, length, heads, head_dim).transpose(1, 2)
            for t in qkv.split(width, dim=-1)
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        # (batch, heads, T, T)
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out = weights @ v
        if attn.momentum:
            out = out + momentum_term(v, attn.momentum)
        out = out.transpose(1, 2).reshape(batch, length, width)
        outputs.append(out)
        maps.append(weights)
        queries.append(
            (q / math.sqrt(head_dim)).transpose(1, 2).reshape(batch, length, width)
        )
        raw_scores.append(scores)
        projected.append(attn.proj(out))
        h = h + projected[-1]
        h = h + block.mlp(block.ln_2(h))
        layer_predictions.append(model.read_out(model.ln_f(h[:, positions]))[..., 0])
    return Trace(
        layer_predictions[-1],
        outputs,
        maps,
        projected,
        queries,
        raw_scores,
        layer_predictions,
    )


def zero_deltas(model: GPT, batch: int) -> list[KeyValueDelta]:
    """No change: one zero :class:`KeyValueDelta` per layer for ``batch`` prompts."""
    width = model.config.width
    like = model.read_in.weight
    return [
        KeyValueDelta(
            like.new_zeros(batch, 2 * width, width), like.new_zeros(batch, 2 * width)
        )
        for _ in model.blocks
    ]


@dataclass(frozen=True)
class FineTuneRecord:
    """What :func:`finetune_key_value_recorded` returns: the final ``deltas`` (one
    :class:`KeyValueDelta` per layer) and ``training_queries: (batch, n_layers, 2 k,
    width)``, the query vectors (as in :class:`Trace`) of demonstration i's two tokens
    recorded in the forward pass of fine-tuning step i (Dai et al.'s "attention queries
    of the training tokens")."""

    deltas: list[KeyValueDelta]
    training_queries: torch.Tensor


def finetune_key_value_recorded(
    model: GPT,
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rate: float,
    *,
    layer_causal: bool = False,
) -> FineTuneRecord:
    """:func:`finetune_key_value`, also recording the training tokens' query vectors
    (:class:`FineTuneRecord`)."""
    model = _check_gpt(model)
    batch, n_points, _ = checks.prompt_tensors(xs, ys)
    if n_points < 2:
        raise ValueError(
            "the prompt needs k >= 1 demonstrations and a query, got n_points = "
            f"{n_points}"
        )
    if model.config.tokens_per_point != 2:
        raise ValueError(
            f"fine-tuning reads paired or interleaved tokens, got token_format "
            f"{model.config.token_format!r}"
        )
    learning_rate = checks.nonnegative_float("learning_rate", learning_rate)
    _check_flag("layer_causal", layer_causal)
    tokens = zero_shot_tokens(model, xs, ys)
    deltas = zero_deltas(model, batch)
    recorded = []
    for i in range(n_points - 1):
        params = [
            t.requires_grad_() for delta in deltas for t in (delta.weight, delta.bias)
        ]
        result = trace(model, tokens, deltas, layer_causal=layer_causal)
        target = ys[:, i].to(result.predictions)
        # every block's read-out has its own loss; detached inputs keep the layers apart
        if layer_causal:
            loss = sum(
                (p[:, i] - target).pow(2).sum() for p in result.layer_predictions
            )
        else:
            loss = (result.predictions[:, i] - target).pow(2).sum()
        grads = torch.autograd.grad(loss, params)
        stepped = [(p - learning_rate * g).detach() for p, g in zip(params, grads)]
        deltas = [
            KeyValueDelta(stepped[2 * j], stepped[2 * j + 1])
            for j in range(len(deltas))
        ]
        recorded.append(
            torch.stack(
                [q[:, 2 * i : 2 * i + 2].detach() for q in result.queries], dim=1
            )
        )
    return FineTuneRecord(deltas, torch.cat(recorded, dim=2))


def finetune_key_value(
    model: GPT,
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rate: float,
    *,
    layer_causal: bool = False,
) -> list[KeyValueDelta]:
    """Fine-tune the key and value projections on each prompt's demonstrations: one SGD
    step per demonstration.

    ``xs: (batch, k + 1, d)``, ``ys: (batch, k + 1)``; the last point is the query and
    is not used. Step i (in order i = 1..k) descends (f_i - y_i)^2, where f_i is the
    prediction at x_i of the fine-tuned-so-far model on the zero-shot prompt (labels 0),
    with respect to the key/value rows (weights and biases) of every layer. Prompts are
    independent tasks: each has its own delta. Returns the final deltas (detached).

    ``layer_causal=True``: Deutch et al.'s layer-causal GD: the loss is the sum over
    blocks l of (f_i^(l) - y_i)^2, f_i^(l) the read-out of block l's output, with every
    block's input detached, so that layer l's update comes from its own read-out through
    layer l alone.
    """
    return finetune_key_value_recorded(
        model, xs, ys, learning_rate, layer_causal=layer_causal
    ).deltas


def random_deltas_like(
    deltas: Sequence[KeyValueDelta], generator: torch.Generator
) -> list[KeyValueDelta]:
    """The random-update control: Gaussian directions with each prompt's and layer's
    Frobenius norms of the given weight and bias changes (so the update has the
    fine-tuning update's size, not its direction)."""

    def like(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(
            t.shape, generator=generator, dtype=t.dtype, device=t.device
        )
        dims = tuple(range(1, t.ndim))
        scale = t.norm(dim=dims, keepdim=True) / noise.norm(
            dim=dims, keepdim=True
        ).clamp_min(1e-30)
        return noise * scale

    return [KeyValueDelta(like(d.weight), like(d.bias)) for d in deltas]


# ---------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """ZSL, ICL and FT (and the random-update control) on one batch of prompts, read at
    the query.

    ``labels``, ``zsl``, ``icl``, ``ft``, ``random``: ``(batch,)`` label and
    predictions. ``h_*``: ``(batch, n_layers, width)`` attention outputs at the query's
    token. ``map_*``: ``(batch, n_layers, n_heads, q + 1)`` the query token's attention
    over positions 0..q (q = the query's position; the first q are the demonstrations'
    tokens).

    For Dai et al.'s own definitions: ``zsl_alone: (batch,)`` the prediction from the
    query alone (their zero-shot input has no demonstrations) and ``ft_alone: (batch,)``
    the fine-tuned model's, read on the query alone too (their FTZS setting, ``k=0`` in
    LMOps ``understand_icl/run.sh``); ``hp_*: (batch, n_layers, width)`` the attention
    outputs after the output projection (``hp_random``: the random-update control's);
    ``scores_*: (batch, n_layers, n_heads, q + 1)`` the query token's raw scores q K^T /
    sqrt(d_head); ``q_ft: (batch, n_layers, width)`` the fine-tuned model's query vector
    at the query token and ``training_queries: (batch, n_layers, 2 k, width)`` those
    recorded on the training tokens during fine-tuning (:class:`FineTuneRecord`).
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
    zsl_alone: torch.Tensor
    hp_zsl: torch.Tensor
    hp_icl: torch.Tensor
    hp_ft: torch.Tensor
    hp_random: torch.Tensor
    scores_zsl: torch.Tensor
    scores_icl: torch.Tensor
    scores_ft: torch.Tensor
    q_ft: torch.Tensor
    training_queries: torch.Tensor
    ft_alone: torch.Tensor


@dataclass(frozen=True)
class _Reading:
    prediction: torch.Tensor
    h: torch.Tensor
    maps: torch.Tensor
    h_projected: torch.Tensor
    scores: torch.Tensor
    query_vector: torch.Tensor


def _at_query(result: Trace, query: int) -> _Reading:
    def stack(per_layer: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t[:, query] for t in per_layer], dim=1)

    maps = torch.stack(
        [m[:, :, query, : query + 1] for m in result.attention_maps], dim=1
    )
    scores = torch.stack([m[:, :, query, : query + 1] for m in result.scores], dim=1)
    return _Reading(
        result.predictions[:, -1],
        stack(result.attention_outputs),
        maps,
        stack(result.projected_outputs),
        scores,
        stack(result.queries),
    )


@torch.no_grad()
def _read(
    model: GPT, tokens: torch.Tensor, deltas: Sequence[KeyValueDelta] | None, query: int
) -> _Reading:
    return _at_query(trace(model, tokens, deltas), query)


def compare(
    model: GPT,
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rate: float,
    generator: torch.Generator,
    *,
    layer_causal: bool = False,
) -> Comparison:
    """Zero-shot, ICL, fine-tuned (:func:`finetune_key_value`, layer-causal if
    ``layer_causal``) and randomly updated model on each prompt's query."""
    checks.generator("generator", generator)
    record = finetune_key_value_recorded(
        model, xs, ys, learning_rate, layer_causal=layer_causal
    )  # checks the rest
    deltas = record.deltas
    query = 2 * (xs.shape[1] - 1)  # position of the query's x token
    blank = zero_shot_tokens(model, xs, ys)
    zsl = _read(model, blank, None, query)
    icl = _read(model, icl_tokens(model, xs, ys), None, query)
    ft = _read(model, blank, deltas, query)
    rnd = _read(model, blank, random_deltas_like(deltas, generator), query)
    alone_tokens = zero_shot_tokens(model, xs[:, -1:], ys[:, -1:])
    alone = _read(model, alone_tokens, None, 0)
    ft_alone = _read(model, alone_tokens, deltas, 0)
    return Comparison(
        ys[:, -1],
        zsl.prediction,
        icl.prediction,
        ft.prediction,
        rnd.prediction,
        zsl.h,
        icl.h,
        ft.h,
        rnd.h,
        zsl.maps,
        icl.maps,
        ft.maps,
        alone.prediction,
        zsl.h_projected,
        icl.h_projected,
        ft.h_projected,
        rnd.h_projected,
        zsl.scores,
        icl.scores,
        ft.scores,
        ft.query_vector,
        record.training_queries,
        ft_alone.prediction,
    )


def finetuning_accuracy(
    model: GPT,
    xs: torch.Tensor,
    ys: torch.Tensor,
    learning_rate: float,
    *,
    layer_causal: bool = False,
) -> float:
    """Share of prompts whose query the fine-tuned model classifies right (sign of the
    prediction = label)."""
    deltas = finetune_key_value(model, xs, ys, learning_rate, layer_causal=layer_causal)
    query = 2 * (xs.shape[1] - 1)
    ft = _read(model, zero_shot_tokens(model, xs, ys), deltas, query)
    return accuracy(ft.prediction, ys[:, -1])


# ---------------------------------------- metrics


def correct(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right/wrong for +-1 labels: sign(prediction) == label, with sign(0) read as +1.
    ``(n,), (n,) -> (n,)`` bool."""
    _check_one_shape("predictions and labels", "(n,)", predictions, labels)
    return torch.where(predictions >= 0, 1.0, -1.0) == labels.to(predictions.dtype)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of :func:`correct` predictions."""
    return correct(predictions, labels).double().mean().item()


def _check_correct(
    zsl_correct: object, icl_correct: object, ft_correct: object
) -> None:
    """``ValueError`` unless the three are 1-d bool tensors of one shape (right =
    True)."""
    for name, value in (
        ("zsl_correct", zsl_correct),
        ("icl_correct", icl_correct),
        ("ft_correct", ft_correct),
    ):
        if (
            not isinstance(value, torch.Tensor)
            or value.dtype != torch.bool
            or value.ndim != 1
        ):
            got = (
                (tuple(value.shape), value.dtype)
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise ValueError(
                f"{name} must be a 1-d bool tensor (right = True), got {got}"
            )
    _check_one_shape(
        "zsl_correct, icl_correct and ft_correct",
        "(n,)",
        zsl_correct,
        icl_correct,
        ft_correct,
    )


def rec2ftp(
    zsl_correct: torch.Tensor, icl_correct: torch.Tensor, ft_correct: torch.Tensor
) -> float:
    """Dai et al.'s recall to fine-tuning predictions: among the examples that
    fine-tuning gets right and zero-shot gets wrong, the share that ICL also gets right.
    Arguments: ``(n,)`` bool. NaN if there is no such example."""
    _check_correct(zsl_correct, icl_correct, ft_correct)
    recovered = ft_correct & ~zsl_correct
    count = int(recovered.sum())
    return float("nan") if count == 0 else int((recovered & icl_correct).sum()) / count


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle between the last-axis vectors of ``a`` and ``b``: ``(..., n),
    (..., n) -> (...)``.

    A zero vector has cosine 0 with everything.
    """
    _check_one_shape("a and b", "(..., n)", a, b)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    dots = (a * b).sum(-1)
    return torch.where(
        norms > 0,
        dots / norms.clamp_min(torch.finfo(norms.dtype).tiny),
        torch.zeros_like(dots),
    )


def update_cosines(
    h_zsl: torch.Tensor,
    h_icl: torch.Tensor,
    h_other: torch.Tensor,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """cos(h_ICL - h_ZSL, h_other - h_ZSL) for every leading index: ``(..., width)``
    three times -> ``(...)``.

    ``normalize``: first divide every vector by its length, as Dai et al.'s
    ``compute_sim.py`` does (``norm_hidden``)."""
    _check_flag("normalize", normalize)
    _check_one_shape("h_zsl, h_icl and h_other", "(..., width)", h_zsl, h_icl, h_other)
    if normalize:
        h_zsl, h_icl, h_other = (
            t / t.norm(dim=-1, keepdim=True).clamp_min(1e-20)
            for t in (h_zsl, h_icl, h_other)
        )
    return cosine_similarity(h_icl - h_zsl, h_other - h_zsl)


def sim_aou(
    h_zsl: torch.Tensor,
    h_icl: torch.Tensor,
    h_other: torch.Tensor,
    *,
    normalize: bool = False,
) -> float:
    """SimAOU: mean cosine between the updates h_ICL - h_ZSL and h_other - h_ZSL of the
    attention outputs.

    Shapes ``(..., width)`` (for the book's GPT ``(batch, n_layers, width)``); the mean
    runs over all leading axes. ``h_other`` is the fine-tuned model's output, or the
    randomly updated one for the control. ``normalize``: unit vectors first (Dai et
    al.'s code; :func:`update_cosines`).
    """
    return update_cosines(h_zsl, h_icl, h_other, normalize=normalize).mean().item()


def sim_am(map_a: torch.Tensor, map_b: torch.Tensor) -> float:
    """SimAM: mean cosine between attention maps ``(..., positions)`` (for the book's
    GPT ``(batch, n_layers, n_heads, q + 1)``), the mean running over all leading axes.
    Before: ICL vs ZSL; after: ICL vs FT."""
    return cosine_similarity(map_a, map_b).mean().item()


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between ``a`` and ``b`` along the last axis: ``(..., n), (...,
    n) -> (...)``.

    tau_b = (C - D) / sqrt((P - T_a)(P - T_b)) over the P = n (n - 1) / 2 pairs, with C
    concordant and D discordant pairs and T_a, T_b the pairs tied in a, in b (scipy's
    default). NaN where a or b is constant.
    """
    _check_one_shape("a and b", "(..., n)", a, b)
    if a.shape[-1] < 2:
        raise ValueError(
            f"kendall_tau needs n >= 2 values along the last axis, got {a.shape[-1]}"
        )
    sign_a = torch.sign(a[..., :, None] - a[..., None, :])
    sign_b = torch.sign(b[..., :, None] - b[..., None, :])
    upper = torch.ones(
        a.shape[-1], a.shape[-1], dtype=torch.bool, device=a.device
    ).triu(1)
    concordance = (sign_a * sign_b)[..., upper].sum(-1).double()  # C - D
    untied_a = (sign_a != 0)[..., upper].sum(-1).double()  # P - T_a
    untied_b = (sign_b != 0)[..., upper].sum(-1).double()
    denominator = (untied_a * untied_b).sqrt()
    return torch.where(
        denominator > 0,
        concordance / denominator.clamp_min(1e-300),
        torch.full_like(concordance, float("nan")),
    )


def demonstration_attention(maps: torch.Tensor) -> torch.Tensor:
    """The query's attention to the demonstrations' tokens (all positions but the
    query's own), averaged over layers and heads:
    ``(batch, n_layers, n_heads, q + 1) -> (batch, q)``."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[-1] < 3:
        raise ValueError(
            "maps must have shape (batch, n_layers, n_heads, q + 1) with q >= 2, got "
            f"{_shape_of(maps)}"
        )
    return maps[..., :-1].mean(dim=(1, 2))


# ---------------------------------------- Dai et al.'s attention to the training tokens


def training_token_attention(
    query: torch.Tensor, training_queries: torch.Tensor
) -> torch.Tensor:
    """The fine-tuning side's attention to the training tokens in Dai et al.'s code
    (``compute_training_example_attn.py``): softmax over tokens j of <q, q_j>, the
    fine-tuned model's query vector against the query vectors recorded on the training
    tokens during fine-tuning.

    ``query: (batch, n_layers, width)``, ``training_queries: (batch, n_layers, n_tokens,
    width)`` -> ``(batch, n_layers, n_tokens)``.
    """
    if (
        not isinstance(query, torch.Tensor)
        or not isinstance(training_queries, torch.Tensor)
        or query.ndim != 3
        or training_queries.ndim != 4
        or training_queries.shape[:2] != query.shape[:2]
        or training_queries.shape[3] != query.shape[2]
    ):
        raise ValueError(
            "query must be (batch, n_layers, width) and training_queries (batch, "
            "n_layers, n_tokens, width), got "
            f"{[_shape_of(query), _shape_of(training_queries)]}"
        )
    return torch.einsum("blw,bltw->blt", query, training_queries).softmax(dim=-1)


def context_attention(scores: torch.Tensor, n_context: int) -> torch.Tensor:
    """The ICL side in Dai et al.'s code: the query token's raw scores summed over
    heads, kept on the first ``n_context`` positions (the demonstrations' tokens) and
    softmaxed over them.

    ``scores: (batch, n_layers, n_heads, positions)`` -> ``(batch, n_layers,
    n_context)``.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 4:
        raise ValueError(
            "scores must have shape (batch, n_layers, n_heads, positions), got "
            f"{_shape_of(scores)}"
        )
    n_context = checks.positive_int("n_context", n_context)
    if n_context > scores.shape[-1]:
        raise ValueError(
            f"n_context must be at most the number of positions ({scores.shape[-1]}), "
            f"got {n_context}"
        )
    return scores.sum(dim=2)[..., :n_context].softmax(dim=-1)


def example_level(attention: torch.Tensor, tokens_per_example: int) -> torch.Tensor:
    """Attention summed over each example's tokens (Dai et al.'s ``level='example'``):
    ``(..., n_examples * tokens_per_example) -> (..., n_examples)``."""
    tokens_per_example = checks.positive_int("tokens_per_example", tokens_per_example)
    if (
        not isinstance(attention, torch.Tensor)
        or attention.ndim < 1
        or attention.shape[-1] % tokens_per_example
    ):
        raise ValueError(
            "attention's last axis must be a multiple of tokens_per_example = "
            f"{tokens_per_example}, got {_shape_of(attention)}"
        )
    return attention.unflatten(-1, (-1, tokens_per_example)).sum(-1)


# ---------------------------------------- chapter 3's metrics of one model


def rec2ftp_excess(
    zsl_correct: torch.Tensor,
    icl_correct: torch.Tensor,
    ft_correct: torch.Tensor,
    n_bootstrap: int = 4000,
    seed: int = 9,
) -> tuple[float, float, float]:
    """Rec2FTP minus its base rate, with a 95% percentile interval from resampling the
    tasks: ``(value, low, high)``.

    Arguments ``(n,)`` bool, right = True. The value is ICL's accuracy among the tasks
    that FT gets right and ZSL wrong (:func:`rec2ftp`) minus ICL's accuracy among all
    the tasks ZSL gets wrong (Rec2FTP if FT's successes were a random subset of them);
    NaN where either set is empty. The interval: the 2.5% and 97.5% quantiles of the
    value over ``n_bootstrap`` resamples of the n tasks with replacement, drawn by
    ``numpy.random.default_rng(seed)``.
    """
    _check_correct(zsl_correct, icl_correct, ft_correct)
    n_bootstrap = checks.positive_int("n_bootstrap", n_bootstrap)
    seed = checks.nonnegative_int("seed", seed)
    zsl, icl, ft = (t.cpu().numpy() for t in (zsl_correct, icl_correct, ft_correct))

    def excess(rows: np.ndarray) -> float:
        z, i, f = zsl[rows], icl[rows], ft[rows]
        return i[f & ~z].mean() - i[~z].mean()

    rng = np.random.default_rng(seed)
    draws = [excess(rng.integers(0, len(zsl), len(zsl))) for _ in range(n_bootstrap)]
    low, high = np.quantile(draws, [0.025, 0.975]).tolist()
    return float(excess(np.arange(len(zsl)))), low, high


def _check_classification_prompts(
    model: GPT, xs_name: str, ys_name: str, xs: object, ys: object
) -> None:
    """``ValueError`` unless ``xs: (batch, k + 1, d)`` with k >= 2 demonstrations fits
    ``model`` and ``ys: (batch, k + 1)`` holds labels -1 and +1."""
    config = model.config
    if (
        not isinstance(xs, torch.Tensor)
        or xs.ndim != 3
        or not 3 <= xs.shape[1] <= config.n_points
        or not 1 <= xs.shape[2] <= config.n_dims
    ):
        raise ValueError(
            f"{xs_name} must be a tensor of shape (batch, k + 1, d) with 2 <= k <= "
            f"n_points - 1 = {config.n_points - 1} and 1 <= d <= n_dims = "
            f"{config.n_dims}, got {_shape_of(xs)}"
        )
    if not isinstance(ys, torch.Tensor) or ys.shape != xs.shape[:2]:
        raise ValueError(
            f"{ys_name} must be a tensor of shape (batch, k + 1) = "
            f"{tuple(xs.shape[:2])} matching {xs_name}, got {_shape_of(ys)}"
        )
    others = int(((ys != 1) & (ys != -1)).sum())
    if others:
        raise ValueError(
            f"{ys_name} must hold labels -1 and +1 only, got {others} other values"
        )


def dual_form_metrics(
    model: GPT,
    name: str,
    val_xs: torch.Tensor,
    val_ys: torch.Tensor,
    test_xs: torch.Tensor,
    test_ys: torch.Tensor,
    rates: Sequence[float],
    *,
    layer_causal: bool = False,
    random_seed: int = 7,
    uniform_seed: int = 8,
    n_bootstrap: int = 4000,
    bootstrap_seed: int = 9,
) -> dict:
    """Dai et al.'s metrics of ``model``, the book's way and their code's way, with the
    controls (chapter 3).

    FT's learning rate is the one of ``rates`` with the best FT accuracy
    (:func:`finetuning_accuracy`) on the validation tasks ``val_xs: (n_val, k + 1, d)``,
    ``val_ys: (n_val, k + 1)`` (ties: the smaller rate); every other number comes from
    :func:`compare` on the held-out tasks ``test_xs: (n, k + 1, d)``, ``test_ys: (n, k +
    1)`` (labels -1, +1; k >= 2). ``name`` labels the result; ``layer_causal``: LCGD in
    place of FT (:func:`finetune_key_value`). The seeds: ``random_seed`` the random
    update (:func:`compare`), ``uniform_seed`` Dai's uniform [0, 1) controls,
    ``bootstrap_seed`` and ``n_bootstrap`` :func:`rec2ftp_excess`.

    Returns a dict:

    * ``"model"``: ``name``; ``"learning rate"``: the chosen rate; ``"validation FT
      accuracy"``: ``{rate: accuracy}``; ``"comparison"``: the :class:`Comparison`.
    * ``"ZSL accuracy"``, ``"ICL accuracy"``, ``"FT accuracy"``, ``"Dai FT accuracy"``
      (FT read on the query alone): shares of held-out tasks right.
    * counts of tasks: ``"FT right, ZSL wrong"``, ``"Dai FT right, ZSL wrong"`` (both
      read on the query alone), ``"Dai ICL right among them"``, ``"random right, ZSL
      wrong"`` (the random update in FT's place).
    * ``"Rec2FTP"``, ``"Rec2FTP random"``, ``"Dai Rec2FTP"`` (:func:`rec2ftp`), their
      base rates ``"Rec2FTP base rate"``, ``"Dai Rec2FTP base rate"`` (ICL's accuracy
      where ZSL is wrong) and ``"Rec2FTP excess"``, ``"Dai Rec2FTP excess"``: ``(value,
      low, high)`` (:func:`rec2ftp_excess`).
    * per-task metrics (those defined per layer averaged over layers), each the mean
      over the tasks (NaN left out) with ``key + " CI"`` its 95% normal interval ``(low,
      high)``: ``"SimAOU"`` and its controls ``"SimAOU random"`` (same-norm random
      update), ``"SimAOU uniform"``; ``"Dai SimAOU"`` (projected, normalised) and
      ``"Dai SimAOU random"``, ``"Dai SimAOU uniform"``, ``"Dai SimAOU centred"``
      (uniform minus 0.5), ``"Dai SimAOU mean part"`` (sqrt(3)/2 times the ICL update's
      mean over its root mean square: what the uniform control measures); ``"SimAM
      before"``, ``"SimAM after"`` (softmax maps), ``"Dai SimAM before"``, ``"Dai SimAM
      after"`` (raw scores); ``"Kendall"``, ``"Kendall ZSL"``, ``"Kendall uniform"``
      (the query's attention to the demonstrations' tokens) and ``"Dai Kendall"``,
      ``"Dai Kendall example"``, ``"Dai Kendall uniform"`` (Dai's attention to the
      training tokens, :func:`training_token_attention`).
    * ``"per task"``: ``{metric: (n,)}`` for those metrics; ``"per layer"``: ``{metric:
      (n_layers,)}``, the mean over tasks, for all of them but the book's Kendall three.
    """
    model = _check_gpt(model)
    _check_classification_prompts(model, "val_xs", "val_ys", val_xs, val_ys)
    _check_classification_prompts(model, "test_xs", "test_ys", test_xs, test_ys)
    if (
        isinstance(rates, (str, bytes))
        or not isinstance(rates, Sequence)
        or len(rates) == 0
    ):
        raise ValueError(
            f"rates must be a non-empty sequence of learning rates (numbers >= 0), got "
            f"{rates!r}"
        )
    for index, rate in enumerate(rates):
        checks.nonnegative_float(f"rates[{index}]", rate)
    _check_flag("layer_causal", layer_causal)
    check_seed("random_seed", random_seed)
    check_seed("uniform_seed", uniform_seed)
    checks.positive_int("n_bootstrap", n_bootstrap)
    checks.nonnegative_int("bootstrap_seed", bootstrap_seed)
    k_demos = test_xs.shape[1] - 1
    val_accuracy = {
        rate: finetuning_accuracy(
            model, val_xs, val_ys, rate, layer_causal=layer_causal
        )
        for rate in rates
    }
    rate = max(rates, key=lambda r: (val_accuracy[r], -r))
    c = compare(
        model,
        test_xs,
        test_ys,
        rate,
        make_generator(random_seed),
        layer_causal=layer_causal,
    )
    right = {
        key: correct(getattr(c, key), c.labels)
        for key in ("zsl", "icl", "ft", "random", "zsl_alone", "ft_alone")
    }
    dai_recovered = right["ft_alone"] & ~right["zsl_alone"]  # FT right, ZSL wrong (Dai)
    # Dai et al.'s controls: uniform [0, 1) vectors and maps
    uniform = make_generator(uniform_seed)

    def rand_like(t: torch.Tensor) -> torch.Tensor:
        return torch.rand(t.shape, generator=uniform, dtype=t.dtype)

    def unit(h: torch.Tensor) -> torch.Tensor:
        return h / h.norm(dim=-1, keepdim=True)

    # (tasks, 2k), the book's
    icl_attention = demonstration_attention(c.map_icl)
    # (tasks, layers, 2k), Dai's ICL side
    icl_context = context_attention(c.scores_icl, 2 * k_demos)
    # Dai's FT side
    ft_training = training_token_attention(c.q_ft, c.training_queries)
    dai_icl_update = unit(c.hp_icl) - unit(c.hp_zsl)
    per_layer = {  # (tasks, layers)
        "SimAOU": update_cosines(c.h_zsl, c.h_icl, c.h_ft),
        "SimAOU random": update_cosines(c.h_zsl, c.h_icl, c.h_random),
        "SimAOU uniform": cosine_similarity(c.h_icl - c.h_zsl, rand_like(c.h_icl)),
        "Dai SimAOU": update_cosines(c.hp_zsl, c.hp_icl, c.hp_ft, normalize=True),
        "Dai SimAOU random": update_cosines(
            c.hp_zsl, c.hp_icl, c.hp_random, normalize=True
        ),
        "Dai SimAOU uniform": cosine_similarity(
            dai_icl_update, rand_like(dai_icl_update)
        ),
        # what the uniform control measures: a U[0, 1) vector has cosine about
        # sqrt(3)/2 with the all-ones direction
        "Dai SimAOU mean part": math.sqrt(3)
        / 2
        * dai_icl_update.mean(-1)
        / dai_icl_update.pow(2).mean(-1).sqrt(),
        "Dai SimAOU centred": cosine_similarity(
            dai_icl_update, rand_like(dai_icl_update) - 0.5
        ),
        "SimAM before": cosine_similarity(c.map_icl, c.map_zsl).mean(-1),
        "SimAM after": cosine_similarity(c.map_icl, c.map_ft).mean(-1),
        "Dai SimAM before": cosine_similarity(c.scores_icl, c.scores_zsl).mean(-1),
        "Dai SimAM after": cosine_similarity(c.scores_icl, c.scores_ft).mean(-1),
        "Dai Kendall": kendall_tau(icl_context, ft_training),
        "Dai Kendall example": kendall_tau(
            example_level(icl_context, 2), example_level(ft_training, 2)
        ),
        "Dai Kendall uniform": kendall_tau(icl_context, rand_like(icl_context)),
    }
    per_task = {key: value.mean(1) for key, value in per_layer.items()}
    per_task["Kendall"] = kendall_tau(icl_attention, demonstration_attention(c.map_ft))
    per_task["Kendall ZSL"] = kendall_tau(
        icl_attention, demonstration_attention(c.map_zsl)
    )
    per_task["Kendall uniform"] = kendall_tau(icl_attention, rand_like(icl_attention))
    result = {
        "model": name,
        "learning rate": rate,
        "validation FT accuracy": val_accuracy,
        "ZSL accuracy": right["zsl"].double().mean().item(),
        "ICL accuracy": right["icl"].double().mean().item(),
        "FT accuracy": right["ft"].double().mean().item(),
        # Dai's FT accuracy: the fine-tuned model read on the query alone (FTZS)
        "Dai FT accuracy": right["ft_alone"].double().mean().item(),
        "FT right, ZSL wrong": int((right["ft"] & ~right["zsl"]).sum()),
        "Dai FT right, ZSL wrong": int(dai_recovered.sum()),
        "Dai ICL right among them": int((dai_recovered & right["icl"]).sum()),
        "random right, ZSL wrong": int((right["random"] & ~right["zsl"]).sum()),
        "Rec2FTP": rec2ftp(right["zsl"], right["icl"], right["ft"]),
        "Rec2FTP random": rec2ftp(right["zsl"], right["icl"], right["random"]),
        # Dai et al.'s way: ZSL and FT both read on the query alone (k=0 in run.sh)
        "Dai Rec2FTP": rec2ftp(right["zsl_alone"], right["icl"], right["ft_alone"]),
        # the base rate: ICL's accuracy on every task ZSL gets wrong (Rec2FTP if FT's
        # successes were a random subset)
        "Rec2FTP base rate": right["icl"][~right["zsl"]].double().mean().item(),
        "Dai Rec2FTP base rate": right["icl"][~right["zsl_alone"]]
        .double()
        .mean()
        .item(),
        # Rec2FTP minus its base rate, with a 95% bootstrap interval over the tasks
        "Rec2FTP excess": rec2ftp_excess(
            right["zsl"], right["icl"], right["ft"], n_bootstrap, bootstrap_seed
        ),
        "Dai Rec2FTP excess": rec2ftp_excess(
            right["zsl_alone"],
            right["icl"],
            right["ft_alone"],
            n_bootstrap,
            bootstrap_seed,
        ),
        "per task": per_task,
        "per layer": {key: value.mean(0) for key, value in per_layer.items()},
        "comparison": c,
    }
    for key, values in per_task.items():
        result[key] = values.nanmean().item()
        # a 95% normal interval of the mean over the held-out tasks
        result[key + " CI"] = mean_interval(values[~values.isnan()])[1:]
    return result
