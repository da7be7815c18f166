"""The batches of a run: the prompts a step or a held-out evaluation draws, the loss on
them, and the held-out metrics a run logs.

Shapes are static for the whole run: prompts always have ``n_points`` points of
``n_dims`` coordinates; Garg et al.'s curriculum zeroes the coordinates beyond the
current dimension (as their code does) and masks the loss to the first current-n points,
which for a causal model equals a shorter prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from icl_lib.samplers import gaussian_xs
from icl_lib.tasks import Mixture, TaskSample


def sample_batch(
    task: Any,
    batch_size: int,
    n_points: int,
    n_dims: int,
    generator: torch.Generator,
    active_dims: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of a training step or a held-out evaluation: ``xs: (batch_size,
    n_points, n_dims)`` drawn from N(0, I), then their labels ``ys: (batch_size,
    n_points)`` from ``task``, both from ``generator``.

    With ``active_dims`` (an int, or a 0-dim device tensor, read without a host sync)
    the coordinates beyond it are zeroed, as Garg et al.'s curriculum does, and a task
    that ``takes_active_dims`` draws its functions among the active coordinates.
    """
    xs, drawn = sample_prompts(
        task, batch_size, n_points, n_dims, generator, active_dims
    )
    return xs, drawn.ys


def sample_prompts(
    task: Any,
    batch_size: int,
    n_points: int,
    n_dims: int,
    generator: torch.Generator,
    active_dims: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, TaskSample]:
    """:func:`sample_batch` with the drawn functions: ``xs`` and the task's
    :class:`~icl_lib.tasks.TaskSample`."""
    xs = gaussian_xs(batch_size, n_points, n_dims, generator)
    if active_dims is None:
        return xs, task.sample(xs, generator)
    xs = xs * (torch.arange(n_dims, device=xs.device) < active_dims).to(xs.dtype)
    options = (
        {"active_dims": active_dims}
        if getattr(task, "takes_active_dims", False)
        else {}
    )
    return xs, task.sample(xs, generator, **options)


def bf16_autocast(
    device: torch.device, enabled: bool
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; nothing on the CPU."""
    if enabled and device.type == "cuda":
        # No weight-cast cache: it would outlive a captured graph's memory.
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def masked_mse(
    preds: torch.Tensor, ys: torch.Tensor, points: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Mean squared error of ``preds: (batch, P)`` against the last P labels of ``ys:
    (batch, n_points)``.

    With ``points`` (a 0-dim tensor or int) and ``P = n_points``, only the first
    ``points`` positions count.
    """
    n_predicted = preds.shape[1]
    # (batch, P)
    errors = (preds.float() - ys[:, ys.shape[1] - n_predicted :].float()) ** 2
    if points is None:
        return errors.mean()
    weights = (torch.arange(n_predicted, device=preds.device) < points).float()  # (P,)
    return (errors * weights).sum() / (weights.sum() * errors.shape[0])


@torch.no_grad()
def held_out_metrics(
    model: nn.Module,
    task: Any,
    n_dims: int,
    n_points: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    active_dims: int | None = None,
    active_points: int | None = None,
    autocast: bool = False,
) -> dict[str, Any]:
    """The metrics a run logs on held-out prompts: ``model``'s error on ``batch_size``
    fresh prompts ``(n_points, n_dims)`` drawn from ``generator`` by
    :func:`sample_batch`, as a training step draws them.

    Coordinates beyond ``active_dims`` are zeroed and only the first ``active_points``
    positions count (the curriculum's view). Returns ``eval_loss`` (MSE),
    ``eval_normalized_error`` (divided by the task's zero-predictor error at
    ``active_dims``) and, for models that predict at every position,
    ``eval_error_by_position``: the normalised error at each of the first
    ``active_points`` positions (entry k: prediction from k examples).

    For a :class:`~icl_lib.tasks.Mixture` the held-out prompts draw their class per
    prompt, even where training draws it per batch, and ``eval_error_by_class`` adds,
    per component, that component's prompts' normalised error (by position where the
    model predicts at every position, else one number): a run's log then shows when each
    class is learnt.
    """
    active_dims = n_dims if active_dims is None else active_dims
    active_points = n_points if active_points is None else active_points
    if isinstance(task, Mixture):
        task = dataclasses.replace(task, per="prompt")
    was_training = model.training
    model.eval()
    try:
        xs, drawn = sample_prompts(
            task,
            batch_size,
            n_points,
            n_dims,
            generator,
            active_dims if active_dims < n_dims else None,
        )
        ys = drawn.ys
        with bf16_autocast(generator.device, autocast):
            preds = model(xs, ys)
    finally:
        model.train(was_training)
    zero = task.zero_predictor_error(active_dims)
    # (batch, P)
    errors = (preds.float() - ys[:, n_points - preds.shape[1] :].float()) ** 2
    result: dict[str, Any] = {}
    by_position = getattr(model, "predicts_every_position", False)
    if by_position:
        errors = errors[:, :active_points]
        result["eval_error_by_position"] = (errors.mean(0) / zero).tolist()
    if isinstance(task, Mixture):
        result["eval_error_by_class"] = [
            _class_error(
                errors[drawn.params["component"] == i],
                component.zero_predictor_error(active_dims),
                by_position,
            )
            for i, component in enumerate(task.components)
        ]
    loss = errors.mean().item()
    return {"eval_loss": loss, "eval_normalized_error": loss / zero, **result}


def _class_error(
    errors: torch.Tensor, zero: float, by_position: bool
) -> list[float] | float | None:
    """The normalised error of one class's prompts ``errors: (n, P)``: per position or
    in all; None if n = 0."""
    if errors.shape[0] == 0:
        return None
    return (
        (errors.mean(0) / zero).tolist() if by_position else errors.mean().item() / zero
    )


# A hook of train(): hook(step, model) -> the metrics it adds to an evaluation's record,
# or None.
Hook = Callable[[int, nn.Module], Mapping[str, Any] | None]


def hook_metrics(hooks: Sequence[Hook], step: int, model: nn.Module) -> dict[str, Any]:
    """What the hooks add to an evaluation's record; they see the model in eval mode,
    without gradients."""
    record: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for hook in hooks:
                record.update(hook(step, model) or {})
    finally:
        model.train(was_training)
    return record
