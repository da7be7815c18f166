"""One training loop for every chapter: in-context regression on prompts sampled on the training device.

Configured by :class:`TrainConfig` (a frozen dataclass; ``configs/*.toml`` spell the same fields) and run by
:func:`train` or from the command line::

    python -m icl_lib.train configs/garg_dense_linear_laptop.toml [--device cuda] [--steps 500] [--out DIR]

The loop is "Triton-free" (eager PyTorch, no graph compiler) and the same code runs on the CPU and on CUDA:

* prompts are sampled in batches on the device from the run's own ``torch.Generator`` (no data loader);
* a step (sample, forward, loss, backward, clip, AdamW) never waits for the host: metrics are summed on the device
  and read every ``log_every`` steps;
* on CUDA: fused AdamW, bf16 autocast, and optionally the whole step captured once in a CUDA graph;
* shapes are static for the whole run, the curriculum included: prompts always have ``n_points`` points of
  ``n_dims`` coordinates; Garg et al.'s curriculum zeroes the coordinates beyond the current dimension (as their
  code does) and masks the loss to the first current-n points, which for a causal model equals a shorter prompt;
* checkpoints (:mod:`icl_lib.checkpoints`) resume exactly where a run stopped (bit for bit on the CPU with the
  same thread count); a run holds its directory's lock (:func:`icl_lib.checkpoints.run_lock`) while it runs.

Loss: mean squared error over the predicted positions. Also logged: the normalised error, the loss divided by the
task's ``zero_predictor_error`` at the current dimension (1.0 = predicting 0).
"""

from __future__ import annotations

if __name__ == "__main__":  # before torch's import, which takes seconds: a Ctrl-C there is one line too
    from icl_lib import interrupts

    interrupts.quiet_start("python -m icl_lib.train")

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from icl_lib import checks, checkpoints, interrupts, models
from icl_lib.devices import make_generator, parse_device, resolve_device
from icl_lib.samplers import gaussian_xs
from icl_lib.tasks import Mixture, TaskSample, make_task

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: the active dimension and prompt length grow during training.

    At step t the active dimension is min(dims_end, dims_start + dims_increment * (t // dims_interval)), and the
    number of points likewise. :meth:`garg` is their preset (dims 5 -> 20, +1 every 2000 steps; points 11 -> 41,
    +2 every 2000 steps).
    """

    dims_start: int
    dims_end: int
    points_start: int
    points_end: int
    dims_increment: int = 1
    dims_interval: int = 2000
    points_increment: int = 2
    points_interval: int = 2000

    def __post_init__(self) -> None:
        for name in ("dims_start", "dims_end", "points_start", "points_end", "dims_interval", "points_interval"):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("dims_increment", self.dims_increment)
        checks.nonnegative_int("points_increment", self.points_increment)
        if self.dims_start > self.dims_end:
            raise ValueError(f"dims_start must be <= dims_end = {self.dims_end}, got {self.dims_start}")
        if self.points_start > self.points_end:
            raise ValueError(f"points_start must be <= points_end = {self.points_end}, got {self.points_start}")

    @classmethod
    def garg(cls) -> Curriculum:
        """Garg et al.'s preset for d = 20, n = 41."""
        return cls(dims_start=5, dims_end=20, points_start=11, points_end=41)

    def at(self, step: int) -> tuple[int, int]:
        """``(n_dims, n_points)`` active at ``step`` (0-based)."""
        dims = min(self.dims_end, self.dims_start + self.dims_increment * (step // self.dims_interval))
        points = min(self.points_end, self.points_start + self.points_increment * (step // self.points_interval))
        return dims, points


CURRICULUM_PRESETS: dict[str, Callable[[], Curriculum]] = {"garg": Curriculum.garg}
LR_SCHEDULES = ("cosine", "constant", "wsd")
# Fields that may change when a run is resumed: they decide where and how fast it runs, not what it learns.
RESUMABLE_CHANGES = frozenset(
    {"device", "threads", "autocast", "cuda_graph", "log_every", "eval_every", "eval_batch", "checkpoint_every"}
)
# Fields that may change when a run is resumed if every step already taken keeps its learning rate (for example a
# constant-rate run extended to more steps, its decay moved to the new end): the run is then the one its new config
# trains from scratch. meta.json lists each such change under "schedule_changes".
SCHEDULE_FIELDS = ("steps", "lr_schedule", "decay_fraction", "lr_floor", "warmup_steps")
MAX_THREADS = 4096  # torch takes a C int; more threads than this is a typo, not a machine
# The largest batch of inputs a step or an evaluation draws: 2^28 numbers (1 GiB in float32), 10^4 times the paper
# preset's; more is a typo that would fail to allocate with a traceback, so it is refused where the config enters.
MAX_BATCH_ELEMENTS = 2**28


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the book's laptop setting (configs/README.md).

    * ``model``: ``{"name": "gpt" | "lsa" | "reduced_lsa" | "linear_transformer", **options}``
      (:func:`icl_lib.models.make_model`); ``task``: ``{"name": ..., **options}`` (:func:`icl_lib.tasks.make_task`).
    * ``n_dims``, ``n_points``: the (largest) prompt shape; every batch has this shape.
    * ``lr`` with ``warmup_steps`` of linear warm-up, then ``lr_schedule`` ``"cosine"`` (a half cosine from ``lr``
      that would reach ``lr_floor * lr`` one step after the last), ``"constant"``, or ``"wsd"`` (warm-up, stable,
      decay: constant, then a linear fall to ``lr_floor * lr`` over the last ``decay_fraction`` of the steps, so
      that learning is never slowed before the end). AdamW with ``betas`` and
      decoupled ``weight_decay`` on matrices only.
    * ``grad_clip``: global gradient-norm clipping (0 = off). ``curriculum``: a :class:`Curriculum`, ``"garg"``, a
      dict of its fields, or None.
    * ``log_every`` (train metrics), ``eval_every`` (0 = at the end only) on ``eval_batch`` fixed prompts,
      ``checkpoint_every`` (0 = at the end only).
    * ``init_from``: None (a fresh initialisation from ``seed``), or a committed run's name or a run directory whose
      final weights start this run: a warm start, a departure from training from scratch that a chapter must
      disclose. Its model, ``n_dims`` and ``n_points`` must be this config's; ``meta.json`` records the weights' SHA-256.
    * ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``threads``: CPU threads,
      pinned during the run (results are bit-identical only for the same count); ``autocast``: bf16 on CUDA (never on
      the CPU); ``cuda_graph``: capture the step in a CUDA graph (CUDA only).
    """

    model: dict = field(default_factory=lambda: {"preset": "laptop"})
    task: dict = field(default_factory=lambda: {"name": "linear"})
    n_dims: int = 5
    n_points: int = 11
    batch_size: int = 256
    steps: int = 1500
    lr: float = 3e-3
    warmup_steps: int = 200
    lr_schedule: str = "cosine"
    lr_floor: float = 0.0
    decay_fraction: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    curriculum: Curriculum | None = None
    init_from: str | None = None
    log_every: int = 50
    eval_every: int = 250
    eval_batch: int = 1024
    checkpoint_every: int = 500
    device: str = "auto"
    threads: int = 1
    autocast: bool = True
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        for name in ("n_dims", "n_points", "batch_size", "steps", "log_every", "eval_batch", "threads"):
            checks.positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            checks.nonnegative_int(name, getattr(self, name))
        if self.threads > MAX_THREADS:
            raise ValueError(f"threads must be a positive integer <= {MAX_THREADS}, got {self.threads}")
        for name in ("batch_size", "eval_batch"):
            elements = getattr(self, name) * self.n_points * self.n_dims
            if elements > MAX_BATCH_ELEMENTS:
                raise ValueError(f"{name} x n_points x n_dims must be at most 2**28 (1 GiB of float32 inputs), got "
                                 f"{getattr(self, name)} x {self.n_points} x {self.n_dims} = {elements:.2e}")
        checks.positive_float("lr", self.lr)
        checks.unit_interval("lr_floor", self.lr_floor)
        checks.unit_interval("decay_fraction", self.decay_fraction)
        checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.nonnegative_float("weight_decay", self.weight_decay)
        checks.nonnegative_float("grad_clip", self.grad_clip)
        for name in ("autocast", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        betas = tuple(checks.unit_interval(f"betas[{i}]", b) for i, b in enumerate(self.betas))
        if max(betas) >= 1:
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        object.__setattr__(self, "betas", betas)
        parse_device(self.device)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ValueError(f"init_from must be a run name or directory (a non-empty string), got {self.init_from!r}")

        if not isinstance(self.model, Mapping):
            raise ValueError(f"model must be a table with a 'name', got {self.model!r}")
        object.__setattr__(self, "model", models.model_spec(self.model))  # a preset written out, as runs store it
        for name in ("model", "task"):
            try:
                json.dumps(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must hold plain values (numbers, strings, lists, tables)") from None
        model_name, _ = models.check_model_spec(self.model, self.n_dims, self.n_points)

        if not isinstance(self.task, Mapping) or "name" not in self.task:
            raise ValueError(f"task must be a table with a 'name', got {self.task!r}")
        object.__setattr__(self, "task", dict(self.task))
        try:
            task = make_task(**self.task)
            # A dry run on a 1-prompt batch catches options that do not fit n_dims (e.g. sparsity k > d).
            task.sample(torch.zeros(1, 2, self.n_dims), make_generator(0))
        except ValueError as error:
            raise ValueError(f"task: {error}") from None

        curriculum = self.curriculum
        if isinstance(curriculum, str):
            checks.choice("curriculum", curriculum, tuple(CURRICULUM_PRESETS))
            curriculum = CURRICULUM_PRESETS[curriculum]()
        elif isinstance(curriculum, Mapping):
            accepted = [f.name for f in dataclasses.fields(Curriculum)]
            unknown = sorted(set(curriculum) - set(accepted))
            if unknown:
                raise ValueError(f"unknown curriculum field(s) {unknown}; accepted: {accepted}")
            try:
                curriculum = Curriculum(**curriculum)
            except (TypeError, ValueError) as error:
                raise ValueError(f"curriculum.{error}") from None
        elif curriculum is not None and not isinstance(curriculum, Curriculum):
            raise ValueError(f"curriculum must be None, {list(CURRICULUM_PRESETS)} or a table, got {curriculum!r}")
        if curriculum is not None:
            if curriculum.dims_end > self.n_dims:
                raise ValueError(f"curriculum.dims_end = {curriculum.dims_end} exceeds n_dims = {self.n_dims}")
            if curriculum.points_end > self.n_points:
                raise ValueError(f"curriculum.points_end = {curriculum.points_end} exceeds n_points = {self.n_points}")
            grows = curriculum.points_start < self.n_points
            if grows and not models.MODELS[model_name].predicts_every_position:
                raise ValueError(
                    f"curriculum: a curriculum over points needs a model that predicts at every position ('gpt'); "
                    f"model.name = {model_name!r} predicts the query only (set points_start = points_end = n_points)"
                )
        object.__setattr__(self, "curriculum", curriculum)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain dict (a parsed TOML file, or :meth:`to_dict`'s output); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a config must be a table (dict), got {type(data).__name__}")
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; accepted: {accepted}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON- and ``weights_only``-safe); ``from_dict(to_dict())`` gives the same config."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["betas"] = list(self.betas)
        data["curriculum"] = dataclasses.asdict(self.curriculum) if self.curriculum is not None else None
        return json.loads(json.dumps(data))  # deep copy into plain types

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML experiment config (see ``configs/``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    with path.open("rb") as file:
        try:
            data = tomllib.load(file)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: invalid TOML: {error}") from None
    return TrainConfig.from_dict(data)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then cosine to ``lr_floor * lr``, constant, or
    constant followed by a linear decay to ``lr_floor * lr`` over the last ``decay_fraction`` of the steps (wsd)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "wsd":
        decay_steps = config.decay_fraction * config.steps
        remaining = config.steps - step  # 1 at the last step
        if remaining > decay_steps:
            return config.lr
        floor = config.lr_floor * config.lr
        return floor + (config.lr - floor) * remaining / decay_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.lr_floor * config.lr
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream of a run ("init", "train", "eval", "global")."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------- the step


def sample_batch(task: Any, batch_size: int, n_points: int, n_dims: int, generator: torch.Generator,
                 active_dims: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of a training step or a held-out evaluation: ``xs: (batch_size, n_points, n_dims)`` drawn from
    N(0, I), then their labels ``ys: (batch_size, n_points)`` from ``task``, both from ``generator``.

    With ``active_dims`` (an int, or a 0-dim device tensor, read without a host sync) the coordinates beyond it are
    zeroed, as Garg et al.'s curriculum does, and a task that ``takes_active_dims`` draws its functions among the
    active coordinates.
    """
    xs, drawn = sample_prompts(task, batch_size, n_points, n_dims, generator, active_dims)
    return xs, drawn.ys


def sample_prompts(task: Any, batch_size: int, n_points: int, n_dims: int, generator: torch.Generator,
                   active_dims: torch.Tensor | int | None = None) -> tuple[torch.Tensor, TaskSample]:
    """:func:`sample_batch` with the drawn functions: ``xs`` and the task's :class:`~icl_lib.tasks.TaskSample`."""
    xs = gaussian_xs(batch_size, n_points, n_dims, generator)
    if active_dims is None:
        return xs, task.sample(xs, generator)
    xs = xs * (torch.arange(n_dims, device=xs.device) < active_dims).to(xs.dtype)
    options = {"active_dims": active_dims} if getattr(task, "takes_active_dims", False) else {}
    return xs, task.sample(xs, generator, **options)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        # No weight-cast cache: it would outlive a captured graph's memory.
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def masked_mse(
    preds: torch.Tensor, ys: torch.Tensor, points: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Mean squared error of ``preds: (batch, P)`` against the last P labels of ``ys: (batch, n_points)``.

    With ``points`` (a 0-dim tensor or int) and ``P = n_points``, only the first ``points`` positions count.
    """
    n_predicted = preds.shape[1]
    errors = (preds.float() - ys[:, ys.shape[1] - n_predicted :].float()) ** 2  # (batch, P)
    if points is None:
        return errors.mean()
    weights = (torch.arange(n_predicted, device=preds.device) < points).float()  # (P,)
    return (errors * weights).sum() / (weights.sum() * errors.shape[0])


class _Step:
    """The training step: sample, forward, loss, backward, clip, AdamW, eagerly or replayed from a CUDA graph.

    It never waits for the host: what changes between steps (learning rate, active shape) lives in device tensors
    filled in place, and the loss and normalised error are summed on the device in ``totals`` until
    :meth:`take_means` reads them. It owns what a step changes (model, optimizer, data generator, totals), so it is
    also what a checkpoint saves (:meth:`state_dict`) and a resumed run restores (:meth:`load_state_dict`).
    """

    def __init__(self, model: nn.Module, task: Any, config: TrainConfig, device: torch.device) -> None:
        self.model, self.task, self.config, self.device = model, task, config, device
        use_graph = config.cuda_graph and device.type == "cuda"
        self.optimizer = _make_optimizer(model, config, device, capturable=use_graph)
        # On CUDA the learning rate is a device tensor, kept here: loading an optimizer state replaces the group's.
        self.lr = self.optimizer.param_groups[0]["lr"] if device.type == "cuda" else None
        self.generator = make_generator(derive_seed(config.seed, "train"), device)
        self.dims = torch.zeros((), dtype=torch.int64, device=device)  # the active dimension
        self.points = torch.zeros((), dtype=torch.int64, device=device)  # the active number of points
        self.zero_error = torch.ones((), dtype=torch.float32, device=device)  # the task's, at the active dimension
        self.totals = torch.zeros(2, dtype=torch.float32, device=device)  # sums of losses and normalised errors
        self.summed = 0  # steps in totals
        self.schedule_changes: list[dict[str, Any]] = []  # resumes that changed SCHEDULE_FIELDS
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.every_position = getattr(model, "predicts_every_position", False)  # else the loss is the query's only
        self.active: tuple[int, int] | None = None
        self.graph = _CudaGraphStep(self._eager, self.optimizer, self.generator, device) if use_graph else None

    def set_lr(self, value: float) -> None:
        if self.lr is not None:
            self.lr.fill_(value)  # a kernel launch, no synchronisation
        for group in self.optimizer.param_groups:
            group["lr"] = value if self.lr is None else self.lr

    def set_active(self, dims: int, points: int) -> None:
        """The curriculum's shape ``(n_dims, n_points)``; filled only when it changes (each fill is a kernel)."""
        if (dims, points) != self.active:
            self.active = (dims, points)
            self.dims.fill_(dims)
            self.points.fill_(points)
            self.zero_error.fill_(self.task.zero_predictor_error(dims))

    def __call__(self) -> None:
        self.summed += 1
        (self.graph or self._eager)()

    def _eager(self) -> None:
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        xs, ys = sample_batch(self.task, config.batch_size, config.n_points, config.n_dims, self.generator,
                              self.dims if config.curriculum is not None else None)
        with _autocast(self.device, config.autocast):
            preds = self.model(xs, ys)
        loss = masked_mse(preds, ys, self.points if self.every_position else None)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip)
        self.optimizer.step()
        loss = loss.detach()
        self.totals.add_(torch.stack((loss, loss / self.zero_error)))

    def take_means(self) -> dict[str, float]:
        """The mean training loss and normalised error since the last call: the only read of them (a sync)."""
        loss_sum, error_sum = self.totals.tolist()
        means = {"train_loss": loss_sum / self.summed, "train_normalized_error": error_sum / self.summed}
        self.totals.zero_()
        self.summed = 0
        return means

    def state_dict(self, step: int, wall_s: float) -> dict[str, Any]:
        """The training state of ``checkpoint.pt`` (with the global random states: dropout draws from them)."""
        return {
            "config": self.config.to_dict(),
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "totals": self.totals.detach().cpu(),
            "totals_steps": self.summed,
            "wall_s": wall_s,
            **({"schedule_changes": self.schedule_changes} if self.schedule_changes else {}),
        }

    def load_state_dict(self, stored: Mapping[str, Any]) -> None:
        self.model.load_state_dict(stored["model"])
        self.optimizer.load_state_dict(stored["optimizer"])
        self.generator.set_state(stored["generator"])
        torch.set_rng_state(stored["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in stored:
            torch.cuda.set_rng_state(stored["rng_cuda"], self.device)
        self.totals.copy_(stored["totals"])
        self.summed = stored["totals_steps"]
        self.schedule_changes = list(stored.get("schedule_changes", []))


class _CudaGraphStep:
    """Run ``step`` eagerly ``warmup`` times on a side stream, then capture it once in a CUDA graph and replay it.

    Each call is one training step (warm-up calls included). Shapes are static for the whole run, and everything
    that changes between steps (learning rate, curriculum) lives in device tensors that are filled in place. The
    data generator is registered with the graph, so every replay draws fresh prompts. If the capture fails (for
    example a task that copies from the host inside the step), it warns and stays eager.
    """

    def __init__(
        self,
        step: Callable[[], None],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
        warmup: int = 3,
    ) -> None:
        self.step, self.optimizer, self.generator, self.device, self.warmup = step, optimizer, generator, device, warmup
        self.side_stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.failed: str | None = None

    @property
    def status(self) -> str:
        """What ``meta.json`` records as ``cuda_graph``."""
        return "captured" if self.graph is not None else (self.failed or "not yet captured")

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.failed is not None:
            self.step()
            return
        if self.calls < self.warmup:
            main_stream = torch.cuda.current_stream(self.device)
            self.side_stream.wait_stream(main_stream)
            with torch.cuda.stream(self.side_stream):
                self.step()
            main_stream.wait_stream(self.side_stream)
            self.calls += 1
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device):
                graph.register_generator_state(self.generator)
            # Gradients set to None, so that the captured backward allocates them from the graph's pool.
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.step()
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.failed = f"{type(error).__name__}: {error}"
            warnings.warn(f"CUDA graph capture failed, training on without it: {self.failed}", stacklevel=2)
            torch.cuda.synchronize(self.device)
            self.step()
            return
        self.graph = graph
        graph.replay()  # capturing does not run the step: run the captured one now


def _make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device, capturable: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (with a tensor learning rate) on CUDA."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if device.type == "cuda":
        lr = torch.tensor(config.lr, dtype=torch.float32, device=device)
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas, fused=True, capturable=capturable)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# ---------------------------------------------------------------- held-out metrics


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
    """The metrics a run logs on held-out prompts: ``model``'s error on ``batch_size`` fresh prompts
    ``(n_points, n_dims)`` drawn from ``generator`` by :func:`sample_batch`, as a training step draws them.

    Coordinates beyond ``active_dims`` are zeroed and only the first ``active_points`` positions count (the
    curriculum's view). Returns ``eval_loss`` (MSE), ``eval_normalized_error`` (divided by the task's zero-predictor
    error at ``active_dims``) and, for models that predict at every position, ``eval_error_by_position``: the
    normalised error at each of the first ``active_points`` positions (entry k: prediction from k examples).

    For a :class:`~icl_lib.tasks.Mixture` the held-out prompts draw their class per prompt, even where training draws
    it per batch, and ``eval_error_by_class`` adds, per component, that component's prompts' normalised error (by
    position where the model predicts at every position, else one number): a run's log then shows when each class
    is learnt.
    """
    active_dims = n_dims if active_dims is None else active_dims
    active_points = n_points if active_points is None else active_points
    if isinstance(task, Mixture):
        task = dataclasses.replace(task, per="prompt")
    was_training = model.training
    model.eval()
    try:
        xs, drawn = sample_prompts(task, batch_size, n_points, n_dims, generator,
                                   active_dims if active_dims < n_dims else None)
        ys = drawn.ys
        with _autocast(generator.device, autocast):
            preds = model(xs, ys)
    finally:
        model.train(was_training)
    zero = task.zero_predictor_error(active_dims)
    errors = (preds.float() - ys[:, n_points - preds.shape[1] :].float()) ** 2  # (batch, P)
    result: dict[str, Any] = {}
    by_position = getattr(model, "predicts_every_position", False)
    if by_position:
        errors = errors[:, :active_points]
        result["eval_error_by_position"] = (errors.mean(0) / zero).tolist()
    if isinstance(task, Mixture):
        result["eval_error_by_class"] = [
            _class_error(errors[drawn.params["component"] == i], component.zero_predictor_error(active_dims),
                         by_position)
            for i, component in enumerate(task.components)
        ]
    loss = errors.mean().item()
    return {"eval_loss": loss, "eval_normalized_error": loss / zero, **result}


def _class_error(errors: torch.Tensor, zero: float, by_position: bool) -> list[float] | float | None:
    """The normalised error of one class's prompts ``errors: (n, P)``: per position or in all; None if n = 0."""
    if errors.shape[0] == 0:
        return None
    return (errors.mean(0) / zero).tolist() if by_position else errors.mean().item() / zero


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (on the training device, train mode off) and its record."""

    model: nn.Module
    config: TrainConfig
    step: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    out_dir: Path | None
    already_finished: bool = False  # out_dir held this run, finished: nothing was trained or written


Hook = Callable[[int, nn.Module], Mapping[str, Any] | None]


def train(
    config: TrainConfig | Mapping[str, Any],
    out_dir: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    task: Any = None,
    resume: bool = True,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_at: int | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train the model ``config`` describes; with ``out_dir``, write checkpoints, ``meta.json`` and ``metrics.jsonl``.

    * ``model``, ``task``: objects to train instead of building ``config.model`` and ``config.task`` (those specs
      are then ignored), e.g. a model with a modified attention, or a function class of one's own: any object with
      ``sample(xs, generator) -> TaskSample`` and ``zero_predictor_error(d)``, as in :mod:`icl_lib.tasks`. The model
      object is trained in place (and moved to the device). A run directory records the specs that replay its run,
      so objects need ``out_dir=None``.
    * ``resume``: continue from ``out_dir/checkpoint.pt`` if there is one (the config must match, except for the
      fields in ``RESUMABLE_CHANGES``). A directory that holds this config's finished run is left as it is
      (``already_finished``; a run killed after its last checkpoint is completed), and one that holds any other run,
      or an unreadable checkpoint, is refused with ``ValueError``. ``False`` starts afresh and overwrites.
    * ``hooks``: ``hook(step, model) -> dict | None`` called at every evaluation (model in eval mode, no grad);
      what it returns is added to the metrics record.
    * ``stop_at``: stop after this step with a checkpoint, as an interruption would; a later call resumes.
    * ``command``: recorded in ``meta.json`` (the CLI passes its own command line).

    A metric that is not finite when it is read (at a log or an evaluation: the step itself never syncs) stops the
    run with ``FloatingPointError``; the last checkpoint stays and ``meta.json`` says "diverged".

    The CPU thread count is pinned to ``config.threads`` and the global random state is forked for the duration
    of the call, so the caller's settings are left as they were.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    _check_objects(config, out_dir, model, task)
    if stop_at is not None:
        checks.positive_int("stop_at", stop_at)
    if out_dir is not None:
        out_dir = _check_out_dir("out_dir", out_dir)
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        devices = [device.index] if device.type == "cuda" else []
        # The run directory's lock, held for the whole call: a second process on it is refused, not interleaved.
        lock = checkpoints.run_lock(out_dir) if out_dir is not None else contextlib.nullcontext()
        with lock, torch.random.fork_rng(devices=devices), (
            torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        ):
            return _train(config, device, Path(out_dir) if out_dir is not None else None, resume, progress,
                          tuple(hooks), stop_at, command, model, task)
    finally:
        torch.set_num_threads(previous_threads)


def _check_out_dir(name: str, out_dir: str | Path) -> Path:
    """``out_dir``, created if needed and writable; the folders that hold runs (``checkpoints/``,
    ``checkpoints/in_progress/``) are refused: a run written there would mix its files with the runs'."""
    path = Path(out_dir)
    roots = (checkpoints.checkpoints_root(), checkpoints.checkpoints_root() / checkpoints.IN_PROGRESS)
    if path.exists() and any(path.resolve() == root.resolve() for root in roots):
        raise ValueError(f"{name} must be a run directory such as checkpoints/<name>, got {str(out_dir)!r}, the folder "
                         f"that holds the runs")
    return checks.writable_directory(name, path)


def _check_objects(config: TrainConfig, out_dir: str | Path | None, model: Any, task: Any) -> None:
    """Refuse (``ValueError``) model and task objects that :func:`train` cannot use in place of the specs."""
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or None (build config.model), got {type(model).__name__}")
    methods = ("sample", "zero_predictor_error")
    if task is not None and (isinstance(task, type) or not all(callable(getattr(task, m, None)) for m in methods)):
        found = f"the class {task.__name__} (not an instance)" if isinstance(task, type) else type(task).__name__
        raise ValueError(f"task must be None (build config.task) or an object with the methods sample(xs, generator) "
                         f"and zero_predictor_error(d), got {found}")
    if (model is not None or task is not None) and out_dir is not None:
        raise ValueError("out_dir must be None when train() is given a model or task object: a run directory records "
                         "the specs that replay it (put them in config.model and config.task instead)")
    if model is not None and config.init_from is not None:
        raise ValueError(f"init_from must be None when train() is given a model object (a warm start loads "
                         f"{config.init_from!r} into config.model), got {config.init_from!r}")
    grows = config.curriculum is not None and config.curriculum.points_start < config.n_points
    if model is not None and grows and not getattr(model, "predicts_every_position", False):
        raise ValueError("curriculum: a curriculum over points needs a model that predicts at every position; this "
                         "model predicts the query only (set points_start = points_end = n_points)")


def _train(config: TrainConfig, device: torch.device, out_dir: Path | None, resume: bool, progress: bool,
           hooks: tuple[Hook, ...], stop_at: int | None, command: str | None, model: nn.Module | None,
           task: Any) -> TrainResult:
    """The loop: set up (or resume) the run, then step, log, evaluate and checkpoint until ``config.steps``."""
    task = make_task(**config.task) if task is None else task
    stored = _resumable_state(out_dir, config) if (out_dir is not None and resume) else None
    if out_dir is not None and resume and stored is None and (finished := _finished_run(out_dir, config, device)):
        return finished
    torch.default_generator.manual_seed(derive_seed(config.seed, "global"))  # dropout, inside fork_rng
    if device.type == "cuda":
        torch.cuda.manual_seed(derive_seed(config.seed, "global"))
    model, warm_start = _initial_model(config, model, stored, out_dir)
    step_fn = _Step(model.to(device).train(), task, config, device)
    step, wall_before, history = _resume(stored, out_dir, step_fn) if stored is not None else (0, 0.0, [])
    if stored is not None and (change := _schedule_change(stored["config"], config, step)):
        step_fn.schedule_changes.append(change)
    if stored is not None and step >= config.steps and _on_disk_as_finished(out_dir):
        return TrainResult(model.eval(), config, step, _final_metrics(history), history, out_dir, already_finished=True)
    step_fn.set_lr(learning_rate(config, step))  # re-attach the device lr after loading a state
    writer = RunWriter(out_dir, config, history, resumed_from=step if stored is not None else None, command=command,
                       model=model, device=device, warm_start=warm_start, graph=step_fn.graph,
                       schedule_changes=step_fn.schedule_changes)
    clock = _Clock(wall_before, step)
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=out_dir.name if out_dir else "train",
               dynamic_ncols=True, file=sys.stderr)
    try:
        if step >= config.steps:  # killed after the last checkpoint, before model.pt or meta.json
            writer.finish(model, step, clock.wall())
        while step < config.steps and (stop_at is None or step < stop_at):
            lr = learning_rate(config, step)
            step_fn.set_lr(lr)
            dims, points = config.curriculum.at(step) if config.curriculum else (config.n_dims, config.n_points)
            step_fn.set_active(dims, points)
            step_fn()
            step += 1
            bar.update(1)
            record: dict[str, Any] = {}
            last = step == config.steps
            if step % config.log_every == 0 or last:
                record.update(step_fn.take_means(), lr=lr, n_dims=dims, n_points=points, **clock.lap(step))
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", err=f"{record['train_normalized_error']:.3f}")
            if (config.eval_every and step % config.eval_every == 0) or last:
                held_out = make_generator(derive_seed(config.seed, "eval"), device)  # the same prompts every time
                record.update(held_out_metrics(model, task, config.n_dims, config.n_points, config.eval_batch, held_out,
                                               active_dims=dims, active_points=points, autocast=config.autocast))
                record.update(_hook_metrics(hooks, step, model))
            _check_finite(record, step, config, writer)
            if record:
                writer.log({"step": step, **record})
            if out_dir is not None and (
                (config.checkpoint_every and step % config.checkpoint_every == 0) or last or step == stop_at
            ):
                writer.checkpoint(step_fn.state_dict(step, clock.wall()), step)
                if last:
                    writer.finish(model, step, clock.wall())
                else:
                    writer.write_meta("stopped" if step == stop_at else "running", step, clock.wall())
    except BaseException as error:
        with interrupts.ignored():  # a second Ctrl-C must not leave meta.json saying "running"
            writer.mark("diverged" if isinstance(error, FloatingPointError) else "interrupted")
        raise
    finally:
        bar.close()
        writer.close()
    return TrainResult(model.eval(), config, step, _final_metrics(writer.history), writer.history, out_dir)


# ---------------------------------------------------------------- resume


# How to get past a run directory that cannot be resumed, in every message that refuses one.
WAY_OUT = "start over with --fresh (resume=False), which discards it, or choose another --out (out_dir)"


def _config_changes(stored: Mapping[str, Any], config: TrainConfig, steps_done: int | None = None) -> str:
    """The fields (outside ``RESUMABLE_CHANGES``) in which ``config`` differs from a stored config, or ``""``.

    With ``steps_done`` (resuming a checkpoint of that step), changes of ``SCHEDULE_FIELDS`` do not count if
    ``config`` gives each of the first ``steps_done`` steps the learning rate the stored config gave it.
    """
    current = config.to_dict()
    defaults = TrainConfig().to_dict()  # a field added since the checkpoint was written counts as its default
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    differing = sorted(k for k in set(stored) | set(current) if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
    if steps_done is not None and differing and set(differing) <= set(SCHEDULE_FIELDS):
        if _same_rates(config.replace(**{k: stored[k] for k in SCHEDULE_FIELDS}), config, steps_done):
            return ""
        return (", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing)
                + " (a schedule may change on resume only where the steps already taken keep their learning rates)")
    return ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing)


def _same_rates(before: TrainConfig, after: TrainConfig, steps_done: int) -> bool:
    """Whether ``after`` trains at least ``steps_done`` steps and gives each of them ``before``'s learning rate."""
    return after.steps >= steps_done and all(
        learning_rate(before, step) == learning_rate(after, step) for step in range(steps_done))


def _schedule_change(stored_config: Mapping[str, Any], config: TrainConfig, step: int) -> dict[str, Any] | None:
    """The record of a schedule changed on resume at ``step`` (the fields it had before), or None."""
    current = config.to_dict()
    before = {k: stored_config[k] for k in SCHEDULE_FIELDS if k in stored_config and stored_config[k] != current[k]}
    return {"at_step": step, "before": before} if before else None


def _run_name(out_dir: Path) -> str:
    """How messages name the run in ``out_dir``: its directory and, from ``meta.json`` when readable, its status."""
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError:
        return f"the run in {out_dir}"
    return f"the run in {out_dir} ({meta.get('status')}, {meta.get('steps_done')} of {meta.get('steps')} steps)"


def _resumable_state(out_dir: Path, config: TrainConfig) -> dict | None:
    """The training state of ``config`` in ``out_dir``'s checkpoint, or None if there is no checkpoint.

    Refuses (``ValueError`` naming the run and :data:`WAY_OUT`) an unreadable checkpoint and one of another config.
    """
    try:
        stored = checkpoints.load_training_state(out_dir)
    except ValueError as error:
        raise ValueError(f"cannot resume {_run_name(out_dir)}: {error}; {WAY_OUT}") from None
    if stored is not None:
        changes = _config_changes(stored["config"], config, stored["step"])
        if changes:
            raise ValueError(f"cannot resume {_run_name(out_dir)}: its config differs in {changes}; {WAY_OUT}")
    return stored


def _finished_run(out_dir: Path, config: TrainConfig, device: torch.device) -> TrainResult | None:
    """For a directory with no checkpoint: ``config``'s finished run if it holds one (the layout of the committed
    runs: ``model.pt`` and ``meta.json``), loaded, or None if it holds no run; any other run is refused."""
    held = [name for name in (checkpoints.MODEL_FILE, checkpoints.META_FILE) if (out_dir / name).exists()]
    if not held:
        return None
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError as error:
        raise ValueError(f"{out_dir} holds {held} and no {checkpoints.CHECKPOINT_FILE} ({error}); {WAY_OUT}") from None
    changes = _config_changes(meta["config"], config)
    if changes:
        raise ValueError(f"{_run_name(out_dir)} is another run: its config differs in {changes}; {WAY_OUT}")
    if meta.get("status") != "finished" or checkpoints.MODEL_FILE not in held:
        raise ValueError(f"{_run_name(out_dir)} has no {checkpoints.CHECKPOINT_FILE} to resume from; {WAY_OUT}")
    history = checkpoints.read_metrics(out_dir, missing_ok=True)
    return TrainResult(checkpoints.load_model(out_dir, device=device), config, meta["steps_done"],
                       _final_metrics(history), history, out_dir, already_finished=True)


def _on_disk_as_finished(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds ``model.pt`` and a ``meta.json`` that says "finished"."""
    try:
        return (out_dir / checkpoints.MODEL_FILE).exists() and checkpoints.load_meta(out_dir).get("status") == "finished"
    except ValueError:
        return False


def _initial_model(
    config: TrainConfig, model: nn.Module | None, stored: Mapping[str, Any] | None, out_dir: Path | None
) -> tuple[nn.Module, dict | None]:
    """The model to train (``model``, else ``config.model`` initialised from the run's "init" seed) and what
    ``meta.json`` records of a warm start: a fresh run loads ``config.init_from``'s weights, a resumed one keeps
    the record of its ``meta.json`` (its weights come from the checkpoint)."""
    if model is None:
        model = models.make_model(config.model, config.n_dims, config.n_points, seed=derive_seed(config.seed, "init"))
    if config.init_from is None:
        return model, None
    if stored is None:
        return model, _warm_start(model, config)
    meta_file = out_dir / checkpoints.META_FILE
    return model, (checkpoints.load_meta(out_dir).get("init_from") if meta_file.exists() else None)


def _warm_start(model: nn.Module, config: TrainConfig) -> dict[str, str]:
    """Load the finished weights of the run ``config.init_from`` into ``model``; returns what meta.json records."""
    try:
        directory = checkpoints.resolve(config.init_from)
    except ValueError as error:
        raise ValueError(f"init_from: {error}") from None
    file = directory / checkpoints.MODEL_FILE
    if not file.is_file():
        raise ValueError(f"init_from: {config.init_from!r} has no {checkpoints.MODEL_FILE} (only a finished run can "
                         f"start another)")
    stored = checkpoints.model_config(file)
    wanted = {"spec": config.model, "n_dims": config.n_dims, "n_points": config.n_points}
    if stored != wanted:
        raise ValueError(f"init_from: {config.init_from!r} holds a model {stored}, but this config trains {wanted}")
    model.load_state_dict(checkpoints.load_model(file).state_dict())
    return {"run": str(config.init_from), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


def _resume(stored: Mapping[str, Any], out_dir: Path, step_fn: _Step) -> tuple[int, float, list[dict[str, Any]]]:
    """Load a checkpoint's training state into ``step_fn``; returns its step, the wall time spent so far and the
    metric records up to that step (those logged after it are replayed)."""
    try:
        step_fn.load_state_dict(stored)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"cannot resume {_run_name(out_dir)}: its {checkpoints.CHECKPOINT_FILE} does not fit "
                         f"its config ({reason}); {WAY_OUT}") from None
    try:
        records = checkpoints.read_metrics(out_dir, missing_ok=True)
    except ValueError as error:
        raise ValueError(f"cannot resume {_run_name(out_dir)}: {error}; {WAY_OUT}") from None
    history = [r for r in records if r["step"] <= stored["step"]]
    return stored["step"], stored["wall_s"], history


# ---------------------------------------------------------------- the run's record


class _Clock:
    """The run's wall time (a resumed run adds the time spent before) and its speed since the last log."""

    def __init__(self, wall_before: float, step: int) -> None:
        self.before, self.started = wall_before, time.perf_counter()
        self.last_time, self.last_step = self.started, step

    def wall(self) -> float:
        return self.before + time.perf_counter() - self.started

    def lap(self, step: int) -> dict[str, float]:
        """``steps_per_s`` since the last lap and ``wall_s``, the timing keys of a logged record."""
        now = time.perf_counter()
        speed = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return {"steps_per_s": speed, "wall_s": self.wall()}


class RunWriter:
    """The run's record: the metric ``history`` and, in a run directory ``out_dir``, the files that hold it.

    In ``out_dir`` (None: nothing is written) it appends each record to ``metrics.jsonl``, writes ``checkpoint.pt``,
    ``model.pt`` at the end, and ``meta.json`` (provenance, status, final metrics, and under ``"sha256"`` the SHA-256
    of the ``checkpoint.pt`` and ``model.pt`` this writer wrote, which loading checks) after each checkpoint. Opening a
    run directory removes what an interrupted write left, and either the files of an earlier run (a fresh start) or
    the records logged after the checkpoint a run resumes from.
    """

    def __init__(self, out_dir: Path | None, config: TrainConfig, history: list[dict[str, Any]], *,
                 resumed_from: int | None, command: str | None, model: nn.Module, device: torch.device,
                 warm_start: dict | None, graph: _CudaGraphStep | None,
                 schedule_changes: list[dict[str, Any]]) -> None:
        self.out_dir, self.config, self.history, self.graph = out_dir, config, history, graph
        self.checkpoint_step = resumed_from  # the step of the last checkpoint written, None before the first
        self.metrics_file = None
        self.sha256: dict[str, str] = {}  # of the files written by this writer (an earlier model.pt is not vouched for)
        if out_dir is None:
            return
        checkpoints.remove_leftovers(out_dir)
        if resumed_from is None:
            for stale in (checkpoints.CHECKPOINT_FILE, checkpoints.MODEL_FILE, checkpoints.META_FILE):
                (out_dir / stale).unlink(missing_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in history)
        checkpoints.atomic_write(out_dir / checkpoints.METRICS_FILE, lambda f: f.write(lines.encode()))
        self.meta_base = {
            "name": out_dir.name,
            "command": command or f"icl_lib.train.train() called from {shlex.join(sys.argv)}",
            "config": config.to_dict(),
            "seed": config.seed,
            **checkpoints.provenance(device),
            "threads": config.threads,
            "n_parameters": models.count_parameters(model),
            "steps": config.steps,
            **({"init_from": warm_start} if warm_start is not None else {}),
            **({"schedule_changes": schedule_changes} if schedule_changes else {}),
        }
        self.metrics_file = open(out_dir / checkpoints.METRICS_FILE, "a")  # noqa: SIM115 - closed by close()

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()

    def checkpoint(self, state: Mapping[str, Any], step: int) -> None:
        path = checkpoints.save_training_state(self.out_dir, state)
        self.sha256[path.name] = checkpoints.sha256_file(path)
        self.checkpoint_step = step

    def finish(self, model: nn.Module, step: int, wall_s: float) -> None:
        """Write ``model.pt`` and a ``meta.json`` that says "finished"."""
        if self.out_dir is not None:
            config = self.config
            path = checkpoints.save_model_file(self.out_dir, model, config.model, config.n_dims, config.n_points)
            self.sha256[path.name] = checkpoints.sha256_file(path)
            self.write_meta("finished", step, wall_s)

    def write_meta(self, status: str, step: int, wall_s: float) -> None:
        meta = {
            **self.meta_base,
            "status": status,
            "steps_done": step,
            "wall_time_s": round(wall_s, 3),
            "final_metrics": _final_metrics(self.history),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"sha256": dict(self.sha256)} if self.sha256 else {}),
        }
        if self.graph is not None:
            meta["cuda_graph"] = self.graph.status
        checkpoints.write_meta(self.out_dir, meta)

    def mark(self, status: str) -> None:
        """After an error: the ``meta.json`` of the last checkpoint, if there is one, says ``status``."""
        if self.out_dir is not None and (self.out_dir / checkpoints.META_FILE).exists():
            checkpoints.write_meta(self.out_dir, {**checkpoints.load_meta(self.out_dir), "status": status})

    def kept(self) -> str:
        """What a run that stops on an error leaves behind, as its message says it."""
        if self.out_dir is None or self.checkpoint_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint, step {self.checkpoint_step}, stays in {self.out_dir}"

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()


def _hook_metrics(hooks: Sequence[Hook], step: int, model: nn.Module) -> dict[str, Any]:
    """What the hooks add to an evaluation's record; they see the model in eval mode, without gradients."""
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


def _check_finite(record: Mapping[str, Any], step: int, config: TrainConfig, writer: RunWriter) -> None:
    """Stop a diverged run: ``FloatingPointError`` if a metric of ``record`` (a number or a list) is nan or infinite."""
    def finite(value: Any) -> bool:
        if isinstance(value, list):
            return all(finite(v) for v in value)
        return not isinstance(value, float) or math.isfinite(value)

    bad = [key for key, value in record.items() if not finite(value)]
    if bad:
        raise FloatingPointError(
            f"training diverged: {', '.join(bad)} not finite at logged step {step} (lr = {config.lr}); "
            f"{writer.kept()}; lower lr (or raise warmup_steps) and start over with --fresh (resume=False)"
        )


def _final_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The latest value of every metric in ``history``, with the step it was measured at."""
    final: dict[str, Any] = {}
    for record in history:
        final.update(record)
    return final


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m icl_lib.train CONFIG [--device D] [--steps S] [--out DIR] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m icl_lib.train",
        description="Train an in-context regression model from a TOML config (see configs/).",
    )
    parser.add_argument("config", help="path to a TOML config, e.g. configs/garg_dense_linear_laptop.toml")
    parser.add_argument("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N' (overrides the config)")
    parser.add_argument("--steps", type=int, help="number of training steps (overrides the config)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--threads", type=int, help="CPU threads (overrides the config)")
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint; rerun to resume")
    parser.add_argument("--fresh", action="store_true", help="start afresh even if the run directory has a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        interrupts.take_over()
        config = load_config(args.config)
        overrides = {k: getattr(args, k) for k in ("device", "steps", "threads", "seed") if getattr(args, k) is not None}
        if overrides:
            config = config.replace(**overrides)
        if args.stop_at is not None:
            checks.positive_int("--stop-at", args.stop_at)
        _check_out_dir("--out", out_dir)
        command = "python -m icl_lib.train " + shlex.join(argv)
        result = train(config, out_dir, resume=not args.fresh, progress=not args.no_progress, stop_at=args.stop_at,
                       command=command)
    except (ValueError, OSError, FloatingPointError) as error:
        parser.exit(2, f"error: {' '.join(str(error).split())}\n")
    except KeyboardInterrupt:
        with interrupts.ignored():  # a second Ctrl-C: the same line, not a traceback
            parser.exit(130, f"error: interrupted; {_resume_hint(out_dir, args.fresh)}\n")
    if result.already_finished:
        print(f"{out_dir} already holds this finished run ({result.step} steps): nothing to do "
              f"(--fresh trains it again, discarding it)", file=sys.stderr)
    summary = {k: v for k, v in result.metrics.items() if not isinstance(v, list)}
    metrics_step = summary.pop("step", None)
    status = "finished" if result.step >= config.steps else "stopped"
    print(json.dumps({"out_dir": str(out_dir), "status": status, "step": result.step, "metrics_step": metrics_step,
                      **summary}))
    return 0


def _resume_hint(out_dir: Path, fresh: bool) -> str:
    """What an interrupted command line says: the checkpoint kept in ``out_dir`` and how to resume from it."""
    command = "the same command without --fresh" if fresh else "the same command"
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError:
        return f"no checkpoint was written yet: run {command} to start again"
    return f"{out_dir} keeps its checkpoint of step {meta.get('steps_done')}: run {command} to resume"


if __name__ == "__main__":
    sys.exit(main())
