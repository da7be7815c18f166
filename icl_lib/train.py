"""One training loop for every chapter: in-context regression on prompts sampled on the
training device.

Run by :func:`train` on a :class:`~icl_lib.config.TrainConfig`, or from the command
line::

    python -m icl_lib.train configs/garg_dense_linear_laptop.toml [--device cuda]
        [--steps 500] [--out DIR]
    torchrun --nproc_per_node=N -m icl_lib.train CONFIG --out DIR
        # one run over N processes (GPUs)

Here: the step (:class:`Step`: sample, forward, loss, backward, clip, AdamW) and the
loop (:func:`_loop`: the learning rate and curriculum of each step, logs, evaluations,
checkpoints), then the command line. Elsewhere: the config, curriculum and schedules
(:mod:`icl_lib.config`), the prompts, loss and held-out metrics
(:mod:`icl_lib.batches`), the run directory: resume, files, the finished-run test
(:mod:`icl_lib.runs`), the processes of a run launched by torchrun
(:mod:`icl_lib.distributed`), and the opt-in CUDA graph (:mod:`icl_lib.cuda_graph`).

The loop is "Triton-free" (eager PyTorch, no graph compiler) and the same code runs on
the CPU and on CUDA:

* prompts are sampled in batches on the device from the run's own ``torch.Generator``
  (no data loader);
* a step never waits for the host: metrics are summed on the device and read every
  ``log_every`` steps;
* on CUDA: fused AdamW, bf16 autocast, and, only with ``cuda_graph = true``, the step
  captured in a CUDA graph;
* shapes are static for the whole run, the curriculum included (:mod:`icl_lib.batches`);
* checkpoints resume exactly where a run stopped (bit for bit on the CPU with the same
  thread count); a run holds its directory's lock (:func:`icl_lib.checkpoints.run_lock`)
  while it runs.

Loss: mean squared error over the predicted positions. Also logged: the normalised
error, the loss divided by the task's ``zero_predictor_error`` at the current dimension
(1.0 = predicting 0).
"""

from __future__ import annotations

# before torch's import, which takes seconds: a Ctrl-C there is one line too
if __name__ == "__main__":
    from icl_lib import interrupts

    interrupts.quiet_start("python -m icl_lib.train")

import argparse
import contextlib
import json
import math
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from icl_lib import checkpoints, checks, distributed, interrupts, runs
from icl_lib.batches import (
    Hook,
    bf16_autocast,
    held_out_metrics,
    hook_metrics,
    masked_mse,
    sample_batch,
)
from icl_lib.config import (
    TrainConfig,
    check_points_curriculum,
    derive_seed,
    learning_rate,
    load_config,
)
from icl_lib.cuda_graph import CudaGraphStep
from icl_lib.devices import make_generator, resolve_device
from icl_lib.tasks import make_task

# Importers (the chapters, tests, benchmarks) find these here, where they were before
# the split.
from icl_lib.batches import sample_prompts
from icl_lib.config import (
    CURRICULUM_PRESETS,
    LR_SCHEDULES,
    MAX_BATCH_ELEMENTS,
    MAX_THREADS,
    RESUMABLE_CHANGES,
    SCHEDULE_FIELDS,
    Curriculum,
)

__all__ = [
    "CURRICULUM_PRESETS",
    "LR_SCHEDULES",
    "MAX_BATCH_ELEMENTS",
    "MAX_THREADS",
    "RESUMABLE_CHANGES",
    "SCHEDULE_FIELDS",
    "Curriculum",
    "Step",
    "TrainConfig",
    "TrainResult",
    "derive_seed",
    "held_out_metrics",
    "learning_rate",
    "load_config",
    "main",
    "masked_mse",
    "sample_batch",
    "sample_prompts",
    "train",
]

# --------------------------------------------------------- the step


class Step:
    """The training step: sample, forward, loss, backward, clip, AdamW (:meth:`_eager`),
    or its CUDA-graph replay.

    It never waits for the host: what changes between steps (learning rate, active
    shape) lives in device tensors filled in place, and the loss and normalised error
    are summed on the device in ``totals`` until :meth:`take_means` reads them. It owns
    what a step changes (model, optimizer, data generator, totals): what a checkpoint
    saves (:func:`icl_lib.runs.training_state`) and a resumed run restores
    (:func:`icl_lib.runs.resume`).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        config: TrainConfig,
        device: torch.device,
        world: distributed.World = distributed.ONE,
    ) -> None:
        self.model, self.task, self.config, self.device, self.world = (
            model,
            task,
            config,
            device,
            world,
        )
        use_graph = config.cuda_graph and device.type == "cuda"
        self.optimizer = _make_optimizer(model, config, device, capturable=use_graph)
        # On CUDA the learning rate is a device tensor, kept here: loading an optimizer
        # state replaces the group's.
        self.lr = (
            self.optimizer.param_groups[0]["lr"] if device.type == "cuda" else None
        )
        self.generator = make_generator(derive_seed(config.seed, "train"), device)
        # the active dimension
        self.dims = torch.zeros((), dtype=torch.int64, device=device)
        # the active number of points
        self.points = torch.zeros((), dtype=torch.int64, device=device)
        # the task's, at the active dimension
        self.zero_error = torch.ones((), dtype=torch.float32, device=device)
        # sums of losses and normalised errors
        self.totals = torch.zeros(2, dtype=torch.float32, device=device)
        self.summed = 0  # steps in totals
        # resumes that changed SCHEDULE_FIELDS
        self.schedule_changes: list[dict[str, Any]] = []
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        # else the loss is the query's only
        self.every_position = getattr(model, "predicts_every_position", False)
        self.active: tuple[int, int] | None = None
        self.graph = (
            CudaGraphStep(self._eager, self.optimizer, self.generator, device)
            if use_graph
            else None
        )

    def set_lr(self, value: float) -> None:
        if self.lr is not None:
            self.lr.fill_(value)  # a kernel launch, no synchronisation
        for group in self.optimizer.param_groups:
            group["lr"] = value if self.lr is None else self.lr

    def set_active(self, dims: int, points: int) -> None:
        """The curriculum's shape ``(n_dims, n_points)``; filled only when it changes
        (each fill is a kernel)."""
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
        xs, ys = self.world.keep(
            *sample_batch(
                self.task,
                config.batch_size,
                config.n_points,
                config.n_dims,
                self.generator,
                self.dims if config.curriculum is not None else None,
            )
        )
        with bf16_autocast(self.device, config.autocast):
            preds = self.model(xs, ys)
        loss = masked_mse(preds, ys, self.points if self.every_position else None)
        loss.backward()
        # the global batch's, over torchrun's ranks
        loss = self.world.average_gradients(self.parameters, loss.detach())
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip)
        self.optimizer.step()
        self.totals.add_(torch.stack((loss, loss / self.zero_error)))

    def take_means(self) -> dict[str, float]:
        """The mean training loss and normalised error since the last call: the only
        read of them (a sync)."""
        loss_sum, error_sum = self.totals.tolist()
        means = {
            "train_loss": loss_sum / self.summed,
            "train_normalized_error": error_sum / self.summed,
        }
        self.totals.zero_()
        self.summed = 0
        return means


def _make_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, capturable: bool
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (with a tensor learning rate) on
    CUDA."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in parameters if p.ndim >= 2],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if device.type == "cuda":
        lr = torch.tensor(config.lr, dtype=torch.float32, device=device)
        return torch.optim.AdamW(
            groups, lr=lr, betas=config.betas, fused=True, capturable=capturable
        )
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# --------------------------------------------------------- the loop


def _loop(
    config: TrainConfig,
    out_dir: Path | None,
    *,
    resume: bool,
    progress: bool,
    hooks: tuple[Hook, ...],
    stop_at: int | None,
    command: str | None,
    model: nn.Module | None = None,
    task: Any = None,
    backend: str = "auto",
) -> TrainResult:
    """The loop, on arguments already checked: set up (or resume) the run, then step,
    log, evaluate and checkpoint until ``config.steps``. Under torchrun, on each of its
    processes; only rank 0 writes ``out_dir``."""
    # one process (distributed.ONE) unless torchrun started several
    world = distributed.world(config, backend)
    device = resolve_device(config.device) if world.size == 1 else world.device
    with (
        _session(config, device, out_dir if world.writes else None),
        distributed.process_group(world),
    ):
        task = make_task(**config.task) if task is None else task
        stored = (
            runs.resumable_state(out_dir, config)
            if (out_dir is not None and resume)
            else None
        )
        if (
            out_dir is not None
            and resume
            and (finished := runs.finished_run(out_dir, config, stored)) is not None
        ):
            step, history = finished
            return TrainResult(
                checkpoints.load_model(out_dir, device=device),
                config,
                step,
                runs.final_metrics(history),
                history,
                out_dir,
                already_finished=True,
                reports=world.writes,
            )
        # dropout, inside fork_rng
        torch.default_generator.manual_seed(derive_seed(config.seed, "global"))
        if device.type == "cuda":
            torch.cuda.manual_seed(derive_seed(config.seed, "global"))
        model, warm_start = runs.initial_model(config, model, stored, out_dir)
        step_fn = Step(model.to(device).train(), task, config, device, world)
        step, wall_before, history = (
            runs.resume(stored, out_dir, step_fn)
            if stored is not None
            else (0, 0.0, [])
        )
        if stored is not None and (
            change := runs.schedule_change(stored["config"], config, step)
        ):
            step_fn.schedule_changes.append(change)
        # re-attach the device lr after loading a state
        step_fn.set_lr(learning_rate(config, step))
        if world.size > 1:
            # every rank has read the run directory before rank 0 writes it
            torch.distributed.barrier()
        writer = runs.RunWriter(
            out_dir if world.writes else None,
            config,
            history,
            world=world,
            resumed_from=step if stored is not None else None,
            command=command,
            model=model,
            device=device,
            warm_start=warm_start,
            graph=step_fn.graph,
            schedule_changes=step_fn.schedule_changes,
        )
        clock = runs.Clock(wall_before, step)
        bar = tqdm(
            total=config.steps,
            initial=step,
            disable=not (progress and world.writes),
            desc=out_dir.name if out_dir else "train",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        try:
            # killed after the last checkpoint, before model.pt or meta.json
            if step >= config.steps:
                writer.finish(model, step, clock.wall())
            while step < config.steps and (stop_at is None or step < stop_at):
                lr = learning_rate(config, step)
                step_fn.set_lr(lr)
                dims, points = (
                    config.curriculum.at(step)
                    if config.curriculum
                    else (config.n_dims, config.n_points)
                )
                step_fn.set_active(dims, points)
                step_fn()
                step += 1
                bar.update(1)
                record: dict[str, Any] = {}
                last = step == config.steps
                if step % config.log_every == 0 or last:
                    record.update(
                        step_fn.take_means(),
                        lr=lr,
                        n_dims=dims,
                        n_points=points,
                        **clock.lap(step),
                    )
                    bar.set_postfix(
                        loss=f"{record['train_loss']:.4f}",
                        err=f"{record['train_normalized_error']:.3f}",
                    )
                if (config.eval_every and step % config.eval_every == 0) or last:
                    # the same prompts every time
                    held_out = make_generator(derive_seed(config.seed, "eval"), device)
                    record.update(
                        held_out_metrics(
                            model,
                            task,
                            config.n_dims,
                            config.n_points,
                            config.eval_batch,
                            held_out,
                            active_dims=dims,
                            active_points=points,
                            autocast=config.autocast,
                        )
                    )
                    record.update(hook_metrics(hooks, step, model))
                _check_finite(record, step, config, writer)
                if record:
                    writer.log({"step": step, **record})
                if writer.out_dir is not None and (
                    (config.checkpoint_every and step % config.checkpoint_every == 0)
                    or last
                    or step == stop_at
                ):
                    writer.checkpoint(
                        runs.training_state(step_fn, step, clock.wall()), step
                    )
                    if last:
                        writer.finish(model, step, clock.wall())
                    else:
                        writer.write_meta(
                            "stopped" if step == stop_at else "running",
                            step,
                            clock.wall(),
                        )
        except BaseException as error:
            # a second Ctrl-C must not leave meta.json saying "running"
            with interrupts.ignored():
                writer.mark(
                    "diverged"
                    if isinstance(error, FloatingPointError)
                    else "interrupted"
                )
            raise
        finally:
            bar.close()
            writer.close()
        return TrainResult(
            model.eval(),
            config,
            step,
            runs.final_metrics(writer.history),
            writer.history,
            out_dir,
            reports=world.writes,
        )


@contextlib.contextmanager
def _session(
    config: TrainConfig, device: torch.device, out_dir: Path | None
) -> Iterator[None]:
    """For the run: ``config.threads`` CPU threads, the run directory's lock (a second
    process on it is refused, not interleaved), a fork of the global random state and
    the CUDA device; the caller's settings come back after."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        devices = [device.index] if device.type == "cuda" else []
        lock = (
            checkpoints.run_lock(out_dir)
            if out_dir is not None
            else contextlib.nullcontext()
        )
        with (
            lock,
            torch.random.fork_rng(devices=devices),
            (
                torch.cuda.device(device)
                if device.type == "cuda"
                else contextlib.nullcontext()
            ),
        ):
            yield
    finally:
        torch.set_num_threads(previous_threads)


def _check_finite(
    record: Mapping[str, Any], step: int, config: TrainConfig, writer: runs.RunWriter
) -> None:
    """Stop a diverged run: ``FloatingPointError`` if a metric of ``record`` (a number
    or a list) is nan or infinite."""

    def finite(value: Any) -> bool:
        if isinstance(value, list):
            return all(finite(v) for v in value)
        return not isinstance(value, float) or math.isfinite(value)

    bad = [key for key, value in record.items() if not finite(value)]
    if bad:
        raise FloatingPointError(
            f"training diverged: {', '.join(bad)} not finite at logged step {step} (lr "
            f"= {config.lr}); {writer.kept()}; lower lr (or raise warmup_steps) and "
            "start over with --fresh (resume=False)"
        )


# --------------------------------------------------------- the library's entry: train()


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (on the training device, train mode
    off) and its record."""

    model: nn.Module
    config: TrainConfig
    step: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    out_dir: Path | None
    already_finished: bool = (
        False  # out_dir held this run, finished: nothing was trained or written
    )
    # this process wrote out_dir and reports (False: a rank of torchrun other than 0)
    reports: bool = True


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
    backend: str = "auto",
) -> TrainResult:
    """Train the model ``config`` describes; with ``out_dir``, write checkpoints,
    ``meta.json`` and ``metrics.jsonl``.

    * ``model``, ``task``: objects to train instead of building ``config.model`` and
      ``config.task`` (those specs are then ignored), e.g. a model with a modified
      attention, or a function class of one's own: any object with ``sample(xs,
      generator) -> TaskSample`` and ``zero_predictor_error(d)``, as in
      :mod:`icl_lib.tasks`. The model object is trained in place (and moved to the
      device). A run directory records the specs that replay its run, so objects need
      ``out_dir=None``.
    * ``resume``: continue from ``out_dir/checkpoint.pt`` if there is one (the config
      must match, except for the fields in ``RESUMABLE_CHANGES``). A directory that
      holds this config's finished run is left as it is (``already_finished``; a run
      killed after its last checkpoint is completed), and one that holds any other run,
      or an unreadable checkpoint, is refused with ``ValueError``. ``False`` starts
      afresh and overwrites.
    * ``hooks``: ``hook(step, model) -> dict | None`` called at every evaluation (model
      in eval mode, no grad); what it returns is added to the metrics record.
    * ``stop_at``: stop after this step with a checkpoint, as an interruption would; a
      later call resumes.
    * ``command``: recorded in ``meta.json`` (the CLI passes its own command line).
    * ``backend``: under torchrun (``WORLD_SIZE`` > 1), the process group's: ``"auto"``
      (NCCL on CUDA, gloo on the CPU), ``"nccl"`` or ``"gloo"``; each process trains its
      slice of every batch (:mod:`icl_lib.distributed`) and only rank 0 writes
      ``out_dir``. Ignored in one process.

    A metric that is not finite when it is read (at a log or an evaluation: the step
    itself never syncs) stops the run with ``FloatingPointError``; the last checkpoint
    stays and ``meta.json`` says "diverged".

    The CPU thread count is pinned to ``config.threads`` and the global random state is
    forked for the duration of the call, so the caller's settings are left as they were.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    _check_objects(config, out_dir, model, task)
    if stop_at is not None:
        checks.positive_int("stop_at", stop_at)
    if out_dir is not None:
        out_dir = runs.check_out_dir("out_dir", out_dir)
    return _loop(
        config,
        out_dir,
        resume=resume,
        progress=progress,
        hooks=tuple(hooks),
        stop_at=stop_at,
        command=command,
        model=model,
        task=task,
        backend=backend,
    )


def _check_objects(
    config: TrainConfig, out_dir: str | Path | None, model: Any, task: Any
) -> None:
    """Refuse (``ValueError``) model and task objects that :func:`train` cannot use in
    place of the specs."""
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(
            "model must be a torch.nn.Module or None (build config.model), got "
            f"{type(model).__name__}"
        )
    methods = ("sample", "zero_predictor_error")
    if task is not None and (
        isinstance(task, type)
        or not all(callable(getattr(task, m, None)) for m in methods)
    ):
        found = (
            f"the class {task.__name__} (not an instance)"
            if isinstance(task, type)
            else type(task).__name__
        )
        raise ValueError(
            "task must be None (build config.task) or an object with the methods "
            f"sample(xs, generator) and zero_predictor_error(d), got {found}"
        )
    if (model is not None or task is not None) and out_dir is not None:
        raise ValueError(
            "out_dir must be None when train() is given a model or task object: a run "
            "directory records the specs that replay it (put them in config.model and "
            "config.task instead)"
        )
    if model is not None and config.init_from is not None:
        raise ValueError(
            "init_from must be None when train() is given a model object (a warm start "
            f"loads {config.init_from!r} into config.model), got {config.init_from!r}"
        )
    if model is not None:
        check_points_curriculum(
            config, getattr(model, "predicts_every_position", False), "this model"
        )


# --------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m icl_lib.train CONFIG [--device D] [--steps S] [--out DIR] ...``;
    under ``torchrun --nproc_per_node=N -m icl_lib.train ...``, one run over N processes
    (only rank 0 writes and prints)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m icl_lib.train",
        description=(
            "Train an in-context regression model from a TOML config (see configs/)."
        ),
    )
    parser.add_argument(
        "config",
        help="path to a TOML config, e.g. configs/garg_dense_linear_laptop.toml",
    )
    parser.add_argument(
        "--device", help="'auto', 'cpu', 'cuda' or 'cuda:N' (overrides the config)"
    )
    parser.add_argument(
        "--steps", type=int, help="number of training steps (overrides the config)"
    )
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (overrides the config)"
    )
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument(
        "--stop-at",
        type=int,
        help="stop after this step with a checkpoint; rerun to resume",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start afresh even if the run directory has a checkpoint",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--backend",
        default="auto",
        help="under torchrun: 'auto' (NCCL on CUDA, gloo on the CPU), 'nccl' or 'gloo'",
    )
    args = parser.parse_args(argv)
    out_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        interrupts.take_over()
        config = load_config(args.config)
        overrides = {
            k: getattr(args, k)
            for k in ("device", "steps", "threads", "seed")
            if getattr(args, k) is not None
        }
        if overrides:
            config = config.replace(**overrides)
        if args.stop_at is not None:
            checks.positive_int("--stop-at", args.stop_at)
        command = distributed.launcher() + " " + shlex.join(argv)
        result = _loop(
            config,
            runs.check_out_dir("--out", out_dir),
            resume=not args.fresh,
            progress=not args.no_progress,
            hooks=(),
            stop_at=args.stop_at,
            command=command,
            backend=args.backend,
        )
    except (ValueError, OSError, FloatingPointError) as error:
        parser.exit(2, f"error: {' '.join(str(error).split())}\n")
    except KeyboardInterrupt:
        with interrupts.ignored():  # a second Ctrl-C: the same line, not a traceback
            parser.exit(
                130, f"error: interrupted; {runs.resume_hint(out_dir, args.fresh)}\n"
            )
    if not result.reports:  # a rank of torchrun other than 0: rank 0 reports
        return 0
    if result.already_finished:
        print(
            f"{out_dir} already holds this finished run ({result.step} steps): nothing "
            "to do (--fresh trains it again, discarding it)",
            file=sys.stderr,
        )
    summary = {k: v for k, v in result.metrics.items() if not isinstance(v, list)}
    metrics_step = summary.pop("step", None)
    status = "finished" if result.step >= config.steps else "stopped"
    print(
        json.dumps(
            {
                "out_dir": str(out_dir),
                "status": status,
                "step": result.step,
                "metrics_step": metrics_step,
                **summary,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
