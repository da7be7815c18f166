"""Prompt encodings, checked element by element against explicit numpy constructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_lib.devices import make_generator
from icl_lib.prompts import (
    compact_tokens,
    interleaved_tokens,
    lsa_embedding,
    paired_tokens,
    x_positions,
)


def random_prompt(batch: int, n_points: int, d: int, seed: int = 0):
    g = make_generator(seed)
    xs = torch.randn(batch, n_points, d, generator=g, dtype=torch.float64)
    ys = torch.randn(batch, n_points, generator=g, dtype=torch.float64)
    return xs, ys


def np_interleaved(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    batch, n, d = xs.shape
    out = np.full((batch, 2 * n, d), np.nan)
    for b in range(batch):
        for i in range(n):
            out[b, 2 * i] = xs[b, i]
            out[b, 2 * i + 1] = 0.0
            out[b, 2 * i + 1, 0] = ys[b, i]
    return out


def np_paired(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    batch, n, d = xs.shape
    out = np.full((batch, 2 * n, d + 1), np.nan)
    for b in range(batch):
        for i in range(n):
            out[b, 2 * i, :d] = xs[b, i]
            out[b, 2 * i, d] = 0.0
            out[b, 2 * i + 1, :d] = xs[b, i]
            out[b, 2 * i + 1, d] = ys[b, i]
    return out


def np_lsa(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    batch, n, d = xs.shape
    out = np.full((batch, d + 1, n + 1), np.nan)
    for b in range(batch):
        top = np.column_stack([xs[b, i] for i in range(n)] + [x_query[b]])  # (d, N + 1)
        bottom = np.array([ys[b, i] for i in range(n)] + [0.0])  # (N + 1,)
        out[b] = np.vstack([top, bottom[None, :]])
    return out


# ---------------------------------------------------------------- encodings


def test_interleaved_tokens_element_by_element():
    xs, ys = random_prompt(3, 5, 4)
    tokens = interleaved_tokens(xs, ys)
    assert tokens.shape == (3, 10, 4) and tokens.dtype == xs.dtype
    np.testing.assert_array_equal(
        tokens.numpy(), np_interleaved(xs.numpy(), ys.numpy())
    )
    # spelled out for one position: x_2 at 4, (y_2, 0, 0, 0) at 5
    assert torch.equal(tokens[1, 4], xs[1, 2])
    assert tokens[1, 5, 0] == ys[1, 2] and torch.all(tokens[1, 5, 1:] == 0)


def test_paired_tokens_element_by_element():
    xs, ys = random_prompt(3, 5, 4, seed=1)
    tokens = paired_tokens(xs, ys)
    assert tokens.shape == (3, 10, 5)
    np.testing.assert_array_equal(tokens.numpy(), np_paired(xs.numpy(), ys.numpy()))
    assert torch.equal(tokens[2, 6, :4], xs[2, 3]) and tokens[2, 6, 4] == 0
    assert torch.equal(tokens[2, 7, :4], xs[2, 3]) and tokens[2, 7, 4] == ys[2, 3]


def test_compact_tokens_hold_the_query_and_the_previous_example():
    xs, ys = random_prompt(3, 5, 4, seed=2)
    tokens = compact_tokens(xs, ys)
    assert tokens.shape == (3, 5, 9) and tokens.dtype == xs.dtype
    x, y = xs.numpy(), ys.numpy()
    expected = np.zeros((3, 5, 9))
    for i in range(5):
        expected[:, i, :4] = x[:, i]
        if i > 0:
            expected[:, i, 4:8], expected[:, i, 8] = x[:, i - 1], y[:, i - 1]
    np.testing.assert_array_equal(tokens.numpy(), expected)


def test_lsa_embedding_matches_numpy_construction():
    xs, ys = random_prompt(2, 6, 3, seed=2)
    x_query = torch.randn(2, 3, generator=make_generator(3), dtype=torch.float64)
    embedding = lsa_embedding(xs, ys, x_query)
    assert embedding.shape == (2, 4, 7)
    np.testing.assert_array_equal(
        embedding.numpy(), np_lsa(xs.numpy(), ys.numpy(), x_query.numpy())
    )
    # the prediction slot (d + 1, N + 1), 1-based, starts at zero; the query sits above
    # it
    assert embedding[0, -1, -1] == 0
    assert torch.equal(embedding[1, :3, -1], x_query[1])


def test_x_positions_are_the_even_positions():
    tokens = interleaved_tokens(*random_prompt(2, 4, 3, seed=4))
    xs, _ = random_prompt(2, 4, 3, seed=4)
    assert x_positions(4) == slice(0, 8, 2)
    assert torch.equal(tokens[:, x_positions(4)], xs)
    assert list(range(8)[x_positions(4)]) == [0, 2, 4, 6]


@settings(max_examples=25)
@given(
    batch=st.integers(1, 3),
    n_points=st.integers(1, 6),
    d=st.integers(1, 5),
    seed=st.integers(0, 10**6),
)
def test_encodings_match_numpy_for_any_shape(batch, n_points, d, seed):
    xs, ys = random_prompt(batch, n_points, d, seed)
    np.testing.assert_array_equal(
        interleaved_tokens(xs, ys).numpy(), np_interleaved(xs.numpy(), ys.numpy())
    )
    np.testing.assert_array_equal(
        paired_tokens(xs, ys).numpy(), np_paired(xs.numpy(), ys.numpy())
    )
    x_query = torch.randn(
        batch, d, dtype=torch.float64, generator=make_generator(seed + 1)
    )
    np.testing.assert_array_equal(
        lsa_embedding(xs, ys, x_query).numpy(),
        np_lsa(xs.numpy(), ys.numpy(), x_query.numpy()),
    )


def test_encodings_do_not_modify_their_inputs():
    xs, ys = random_prompt(2, 3, 2)
    xs0, ys0 = xs.clone(), ys.clone()
    interleaved_tokens(xs, ys)[:] = 7.0
    paired_tokens(xs, ys)[:] = 7.0
    lsa_embedding(xs, ys, xs[:, 0])[:] = 7.0
    assert torch.equal(xs, xs0) and torch.equal(ys, ys0)


# ---------------------------------------------------------------- bad input


# the chapters call these two directly
@pytest.mark.parametrize("encode", [interleaved_tokens, paired_tokens])
def test_token_encodings_reject_bad_shapes(encode):
    xs, ys = random_prompt(2, 3, 4)
    with pytest.raises(
        ValueError,
        match=r"xs must be a tensor of shape \(batch, n_points, d\), got \(3, 4\)",
    ):
        encode(xs[0], ys)
    with pytest.raises(
        ValueError,
        match=(
            r"ys must be a tensor of shape \(batch, n_points\) = \(2, 3\).*got \(2, "
            r"2\)"
        ),
    ):
        encode(xs, ys[:, :2])
    with pytest.raises(
        ValueError,
        match=r"ys must be a tensor of shape \(batch, n_points\).*got \(2, 3, 1\)",
    ):
        encode(xs, ys[..., None])
    with pytest.raises(ValueError, match=r"xs must be a tensor .*got list"):
        encode(xs.tolist(), ys)
