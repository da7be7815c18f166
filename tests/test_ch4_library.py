"""Chapter 4's library code: the GPT without its causal mask (the pitfall's bug) against
attention written out by hand, and the label-leak check against predictors whose leak
is known."""

from __future__ import annotations

import math

import pytest
import torch

from icl_lib.devices import make_generator
from icl_lib.evaluate import label_leak
from icl_lib.samplers import gaussian_xs
from icl_lib.models import (
    CausalSelfAttention,
    GPTConfig,
    make_model,
    without_causal_mask,
)


def tiny_gpt(seed: int = 0):
    spec = {"name": "gpt", "n_layers": 2, "width": 8, "n_heads": 2}
    return make_model({**spec, "token_format": "paired"}, 3, 6, seed=seed).double()


def attention_by_hand(attention: CausalSelfAttention, h: torch.Tensor, masked: bool):
    """softmax(q k^T / sqrt(head width)) v per head, with or without the causal mask,
    written with explicit matrix products: ``(batch, T, width) -> (batch, T,
    width)``."""
    batch, length, width = h.shape
    head = width // attention.n_heads
    q, k, v = attention.qkv(h).split(width, dim=-1)
    outputs = []
    for i in range(attention.n_heads):
        columns = slice(i * head, (i + 1) * head)
        scores = q[..., columns] @ k[..., columns].transpose(1, 2) / math.sqrt(head)
        if masked:
            later = torch.ones(length, length, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(later, float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v[..., columns])
    return attention.proj(torch.cat(outputs, dim=-1))


@pytest.mark.parametrize("masked", [True, False])
def test_attention_with_and_without_the_mask_matches_the_formula(masked):
    config = GPTConfig(n_dims=3, n_points=6, n_layers=1, width=8, n_heads=2)
    torch.manual_seed(0)
    attention = CausalSelfAttention(config).double()
    if not masked:
        attention.causal = False
    h = torch.randn(4, 7, 8, generator=make_generator(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            attention(h),
            attention_by_hand(attention, h, masked),
            rtol=1e-10,
            atol=1e-12,
        )


def test_without_causal_mask_copies_the_weights_and_leaves_the_model_alone():
    model = tiny_gpt()
    unmasked = without_causal_mask(model)
    assert unmasked is not model
    assert list(unmasked.state_dict()) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(unmasked.state_dict()[name], tensor), name
    assert all(block.attn.causal for block in model.blocks)
    assert not any(block.attn.causal for block in unmasked.blocks)


def test_label_leak_is_zero_for_a_causal_model_and_not_without_the_mask():
    model = tiny_gpt().float()
    assert label_leak(model, n_dims=3, n_points=6) == 0.0
    assert label_leak(without_causal_mask(model), n_dims=3, n_points=6) > 0


def test_label_leak_of_predictors_with_a_known_leak():
    # ignores the labels: no leak
    assert label_leak(lambda xs, ys: torch.zeros_like(ys)) == 0.0
    # predicts at position 0 the last label: it moves by the 10 of the check
    assert label_leak(lambda xs, ys: ys.roll(1, dims=1)) == pytest.approx(10.0)
    # reads each label before it only (shifted right): causal
    assert label_leak(lambda xs, ys: torch.nn.functional.pad(ys, (1, 0))[:, :-1]) == 0


def test_label_leak_draws_dense_linear_prompts_from_its_seed():
    # moves every prediction by 10 times the query's first coordinate
    def first_coordinate_times_last_label(xs, ys):
        return xs[..., 0] * ys[:, -1:]

    xs = gaussian_xs(7, 4, 2, make_generator(11))
    expected = 10 * xs[..., 0].abs().max().item()
    leak = label_leak(
        first_coordinate_times_last_label, n_dims=2, n_points=4, n_prompts=7, seed=11
    )
    assert leak == pytest.approx(expected, rel=1e-5)
