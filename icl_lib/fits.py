"""In-context fits: what a model predicts at every point of a grid, given one fixed set
of examples.

A trained in-context learner is a map from (examples, query) to a prediction. Holding
the examples fixed and moving the query over a grid draws the function the model has
"fitted" in context, which can be plotted against the true function (chapter 5 does so
for sinusoids inside and outside the pretraining range).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def query_prompts(
    xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt per query: the examples followed by the query (label slot 0).

    ``xs: (k, d)`` and ``ys: (k,)`` are the examples, ``queries: (m, d)``; returns ``(m,
    k + 1, d)`` inputs and ``(m, k + 1)`` labels whose last column is 0 (a causal model
    never reads it for its own prediction). :func:`in_context_fit` checks the shapes.
    """
    (k, d), m = xs.shape, queries.shape[0]
    prompt_xs = torch.cat([xs.expand(m, k, d), queries[:, None, :].to(xs.dtype)], dim=1)
    prompt_ys = torch.cat(
        [ys.expand(m, k), torch.zeros(m, 1, dtype=ys.dtype, device=ys.device)], dim=1
    )
    return prompt_xs, prompt_ys


def in_context_fit(
    predict: Predictor, xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """The prediction at each query from the same examples: ``(m,)``.

    ``predict`` maps prompts ``(batch, n, d), (batch, n)`` to predictions ``(batch, n)``
    where entry i uses the first i examples (a trained model, or a baseline of
    :mod:`icl_lib.baselines`); ``xs: (k, d)``, ``ys: (k,)``, ``queries: (m, d)``. Runs
    without gradients.
    """
    arguments = {"xs": xs, "ys": ys, "queries": queries}
    if not (
        all(isinstance(t, torch.Tensor) for t in arguments.values())
        and xs.ndim == 2
        and ys.shape == xs.shape[:1]
        and queries.ndim == 2
        and queries.shape[1] == xs.shape[1]
    ):
        got = ", ".join(
            f"{name} "
            f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            for name, t in arguments.items()
        )
        raise ValueError(
            "in_context_fit takes xs: (k, d), ys: (k,) and queries: (m, d) (one k, one "
            f"d), got {got}"
        )
    prompt_xs, prompt_ys = query_prompts(xs, ys, queries)
    with torch.no_grad():
        preds = predict(prompt_xs, prompt_ys)
    # predict is the caller's code
    if not isinstance(preds, torch.Tensor) or preds.shape != prompt_ys.shape:
        got = (
            tuple(preds.shape)
            if isinstance(preds, torch.Tensor)
            else type(preds).__name__
        )
        raise ValueError(
            "predict must return a tensor of shape (batch, n_points) = "
            f"{tuple(prompt_ys.shape)}, got {got}"
        )
    return preds[:, -1]
