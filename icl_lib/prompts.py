"""Prompt encodings: how a prompt (x_1, y_1, ..., x_n, y_n) becomes the input of a
model.

* ``interleaved_tokens(xs, ys)``: Garg et al.'s sequence x_1, (y_1, 0, ..., 0), x_2, ...
  of ``2 n`` tokens in R^d; the model predicts y_i at the position of x_i (even
  positions).
* ``paired_tokens(xs, ys)``: the book's "pair" variant, ``2 n`` tokens in R^(d+1):
  (x_i, 0) then (x_i, y_i). Prediction positions are the same; the y token repeats x_i,
  which removes the long loss plateau of the interleaved format at laptop scale
  (measured in ``configs/README.md``).
* ``compact_tokens(xs, ys)``: one token per point, ``n`` tokens in R^(2d+1): (x_i,
  x_{i-1}, y_{i-1}), with zeros for the example before the first. Token i holds its
  query x_i and the whole previous example, so a causal model reading at token i sees
  exactly (x_1, y_1, ..., x_{i-1}, y_{i-1}, x_i): half the sequence of the two formats
  above, for the same information.
* ``lsa_embedding(xs, ys, x_query)``: Zhang, Frei and Bartlett's matrix
  E = [[x_1 ... x_N x_q], [y_1 ... y_N 0]] in R^((d+1) x (N+1)).
"""

from __future__ import annotations

import torch

from icl_lib import checks


def interleaved_tokens(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s tokens: ``(batch, 2 n_points, d)``, x_i at position 2i, (y_i, 0,
    ..., 0) at 2i + 1."""
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    y_tokens = torch.zeros_like(xs)
    y_tokens[:, :, 0] = ys
    return torch.stack((xs, y_tokens), dim=2).reshape(batch, 2 * n_points, d)


def paired_tokens(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Pair-format tokens: ``(batch, 2 n_points, d + 1)``, (x_i, 0) at position 2i,
    (x_i, y_i) at 2i + 1."""
    batch, n_points, d = checks.prompt_tensors(xs, ys)
    x_tokens = torch.cat((xs, torch.zeros_like(ys)[..., None]), dim=-1)
    y_tokens = torch.cat((xs, ys[..., None]), dim=-1)
    return torch.stack((x_tokens, y_tokens), dim=2).reshape(batch, 2 * n_points, d + 1)


def compact_tokens(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """One token per point: ``(batch, n_points, 2 d + 1)``, token i = (x_i, x_{i-1},
    y_{i-1}), zeros before x_1.

    Called by :meth:`icl_lib.models.GPT.tokens`, which checks the prompt first."""
    # (batch, n_points - 1, d + 1)
    previous = torch.cat((xs, ys[..., None]), dim=-1)[:, :-1]
    # shifted right by one point
    previous = torch.cat((torch.zeros_like(previous[:, :1]), previous), dim=1)
    return torch.cat((xs, previous), dim=-1)


def x_positions(n_points: int) -> slice:
    """Positions of the x tokens in an interleaved or paired sequence of ``n_points``
    points, where predictions are read (``n_points`` comes from a prompt's shape, so it
    is not checked)."""
    return slice(0, 2 * n_points, 2)


def lsa_embedding(
    xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor
) -> torch.Tensor:
    """Zhang-Frei-Bartlett embedding ``E: (batch, d + 1, N + 1)`` of N examples and a
    query.

    ``xs: (batch, N, d)``, ``ys: (batch, N)``, ``x_query: (batch, d)``. Column i < N is
    (x_i, y_i); the last column is (x_q, 0). The model's prediction is entry (d + 1,
    N + 1) of its output. The LSA models build it from a prompt they have checked
    (:mod:`icl_lib.models`), so the shapes are not checked again here.
    """
    top = torch.cat((xs, x_query[:, None, :]), dim=1)  # (batch, N + 1, d)
    bottom = torch.cat((ys, torch.zeros_like(ys[:, :1])), dim=1)  # (batch, N + 1)
    return torch.cat((top, bottom[..., None]), dim=-1).transpose(1, 2)
