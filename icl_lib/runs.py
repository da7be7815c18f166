"""The run directory: resume, the finished-run test, and the files a run writes.

A run directory (:mod:`icl_lib.checkpoints` names its files) holds ``checkpoint.pt``
(the training state), ``metrics.jsonl`` (one record per log), ``meta.json`` (provenance
and status) and, once finished, ``model.pt``. Here :func:`resumable_state` reads a
checkpoint of the config (refusing another config's), :func:`finished_run` is the one
test of a finished run, :func:`training_state` and :func:`resume` are
``checkpoint.pt``'s format both ways, :class:`RunWriter` writes the files, and every
refusal names the run and :data:`WAY_OUT`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from icl_lib import checkpoints, checks, models
from icl_lib.config import (
    RESUMABLE_CHANGES,
    SCHEDULE_FIELDS,
    TrainConfig,
    derive_seed,
    learning_rate,
)

if TYPE_CHECKING:
    from icl_lib.cuda_graph import CudaGraphStep
    from icl_lib.distributed import World
    from icl_lib.train import Step


def check_out_dir(name: str, out_dir: str | Path) -> Path:
    """``out_dir``, created if needed and writable; the folders that hold runs
    (``checkpoints/``, ``checkpoints/in_progress/``) are refused: a run written there
    would mix its files with the runs'."""
    path = Path(out_dir)
    roots = (
        checkpoints.checkpoints_root(),
        checkpoints.checkpoints_root() / checkpoints.IN_PROGRESS,
    )
    if path.exists() and any(path.resolve() == root.resolve() for root in roots):
        raise ValueError(
            f"{name} must be a run directory such as checkpoints/<name>, got "
            f"{str(out_dir)!r}, the folder that holds the runs"
        )
    return checks.writable_directory(name, path)


# How to get past a run directory that cannot be resumed, in every message that refuses
# one.
WAY_OUT = (
    "start over with --fresh (resume=False), which discards it, or choose another "
    "--out (out_dir)"
)


def config_changes(
    stored: Mapping[str, Any], config: TrainConfig, steps_done: int | None = None
) -> str:
    """The fields (outside ``RESUMABLE_CHANGES``) in which ``config`` differs from a
    stored config, or ``""``.

    With ``steps_done`` (resuming a checkpoint of that step), changes of
    ``SCHEDULE_FIELDS`` do not count if ``config`` gives each of the first
    ``steps_done`` steps the learning rate the stored config gave it.
    """
    current = config.to_dict()
    # a field added since the checkpoint was written counts as its default
    defaults = TrainConfig().to_dict()
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    differing = sorted(
        k
        for k in set(stored) | set(current)
        if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k)
    )
    if steps_done is not None and differing and set(differing) <= set(SCHEDULE_FIELDS):
        if _same_rates(
            config.replace(**{k: stored[k] for k in SCHEDULE_FIELDS}),
            config,
            steps_done,
        ):
            return ""
        return ", ".join(
            f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing
        ) + (
            " (a schedule may change on resume only where the steps already taken "
            "keep their learning rates)"
        )
    return ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing)


def _same_rates(before: TrainConfig, after: TrainConfig, steps_done: int) -> bool:
    """Whether ``after`` trains at least ``steps_done`` steps and gives each of them
    ``before``'s learning rate."""
    return after.steps >= steps_done and all(
        learning_rate(before, step) == learning_rate(after, step)
        for step in range(steps_done)
    )


def schedule_change(
    stored_config: Mapping[str, Any], config: TrainConfig, step: int
) -> dict[str, Any] | None:
    """The record of a schedule changed on resume at ``step`` (the fields it had
    before), or None."""
    current = config.to_dict()
    before = {
        k: stored_config[k]
        for k in SCHEDULE_FIELDS
        if k in stored_config and stored_config[k] != current[k]
    }
    return {"at_step": step, "before": before} if before else None


def _run_name(out_dir: Path) -> str:
    """How messages name the run in ``out_dir``: its directory and, from ``meta.json``
    when readable, its status."""
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError:
        return f"the run in {out_dir}"
    return (
        f"the run in {out_dir} ({meta.get('status')}, {meta.get('steps_done')} of "
        f"{meta.get('steps')} steps)"
    )


def resumable_state(out_dir: Path, config: TrainConfig) -> dict | None:
    """The training state of ``config`` in ``out_dir``'s checkpoint, or None if there is
    no checkpoint.

    Refuses (``ValueError`` naming the run and :data:`WAY_OUT`) an unreadable checkpoint
    and one of another config.
    """
    try:
        stored = checkpoints.load_training_state(out_dir)
    except ValueError as error:
        raise ValueError(
            f"cannot resume {_run_name(out_dir)}: {error}; {WAY_OUT}"
        ) from None
    if stored is not None:
        changes = config_changes(stored["config"], config, stored["step"])
        if changes:
            raise ValueError(
                f"cannot resume {_run_name(out_dir)}: its config differs in {changes}; "
                f"{WAY_OUT}"
            )
    return stored


def finished_run(
    out_dir: Path, config: TrainConfig, stored: Mapping[str, Any] | None
) -> tuple[int, list[dict[str, Any]]] | None:
    """``(steps_done, history)`` of ``config``'s finished run in ``out_dir`` (its
    ``model.pt`` and a ``meta.json`` that says "finished"), or None if there is a run to
    train, resume or complete: the one test of a finished run.

    ``stored`` is the directory's checkpoint (:func:`resumable_state`, whose config
    matched) or None. With one, the run is finished if the checkpoint is of the last
    step and the end's files were written (a run killed between its last checkpoint and
    ``model.pt`` is completed by training). Without one (the committed runs' layout), a
    directory that holds a run's files must hold this config's finished run: any other
    run is refused.
    """
    if stored is not None:
        if stored["step"] < config.steps or not _on_disk_as_finished(out_dir):
            return None
        return stored["step"], _history(out_dir, stored["step"])
    held = [
        name
        for name in (checkpoints.MODEL_FILE, checkpoints.META_FILE)
        if (out_dir / name).exists()
    ]
    if not held:
        return None
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError as error:
        raise ValueError(
            f"{out_dir} holds {held} and no {checkpoints.CHECKPOINT_FILE} ({error}); "
            f"{WAY_OUT}"
        ) from None
    changes = config_changes(meta["config"], config)
    if changes:
        raise ValueError(
            f"{_run_name(out_dir)} is another run: its config differs in {changes}; "
            f"{WAY_OUT}"
        )
    if meta.get("status") != "finished" or checkpoints.MODEL_FILE not in held:
        raise ValueError(
            f"{_run_name(out_dir)} has no {checkpoints.CHECKPOINT_FILE} to resume "
            f"from; {WAY_OUT}"
        )
    return meta["steps_done"], _history(out_dir, meta["steps_done"])


def _on_disk_as_finished(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds ``model.pt`` and a ``meta.json`` that says
    "finished"."""
    try:
        return (out_dir / checkpoints.MODEL_FILE).exists() and checkpoints.load_meta(
            out_dir
        ).get("status") == "finished"
    except ValueError:
        return False


def _history(out_dir: Path, step: int) -> list[dict[str, Any]]:
    """The metric records of ``out_dir`` up to ``step`` (those logged after a checkpoint
    are replayed on resume)."""
    try:
        records = checkpoints.read_metrics(out_dir, missing_ok=True)
    except ValueError as error:
        raise ValueError(
            f"cannot resume {_run_name(out_dir)}: {error}; {WAY_OUT}"
        ) from None
    return [r for r in records if r["step"] <= step]


def initial_model(
    config: TrainConfig,
    model: nn.Module | None,
    stored: Mapping[str, Any] | None,
    out_dir: Path | None,
) -> tuple[nn.Module, dict | None]:
    """The model to train (``model``, else ``config.model`` initialised from the run's
    "init" seed) and what ``meta.json`` records of a warm start: a fresh run loads
    ``config.init_from``'s weights, a resumed one keeps the record of its ``meta.json``
    (its weights come from the checkpoint)."""
    if model is None:
        model = models.make_model(
            config.model,
            config.n_dims,
            config.n_points,
            seed=derive_seed(config.seed, "init"),
        )
    if config.init_from is None:
        return model, None
    if stored is None:
        return model, _warm_start(model, config)
    meta_file = out_dir / checkpoints.META_FILE
    return model, (
        checkpoints.load_meta(out_dir).get("init_from") if meta_file.exists() else None
    )


def _warm_start(model: nn.Module, config: TrainConfig) -> dict[str, str]:
    """Load the finished weights of the run ``config.init_from`` into ``model``; returns
    what meta.json records."""
    try:
        directory = checkpoints.resolve(config.init_from)
    except ValueError as error:
        raise ValueError(f"init_from: {error}") from None
    file = directory / checkpoints.MODEL_FILE
    if not file.is_file():
        raise ValueError(
            f"init_from: {config.init_from!r} has no {checkpoints.MODEL_FILE} (only a "
            "finished run can start another)"
        )
    stored = checkpoints.model_config(file)
    wanted = {
        "spec": config.model,
        "n_dims": config.n_dims,
        "n_points": config.n_points,
    }
    if stored != wanted:
        raise ValueError(
            f"init_from: {config.init_from!r} holds a model {stored}, but this config "
            f"trains {wanted}"
        )
    model.load_state_dict(checkpoints.load_model(file).state_dict())
    return {
        "run": str(config.init_from),
        "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
    }


def training_state(step_fn: Step, step: int, wall_s: float) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``step``: the config and what a step changes
    (model, optimizer, data generator, the metric sums not yet logged), with the global
    random states (dropout draws from them)."""
    device = step_fn.device
    return {
        "config": step_fn.config.to_dict(),
        "step": step,
        "model": step_fn.model.state_dict(),
        "optimizer": step_fn.optimizer.state_dict(),
        "generator": step_fn.generator.get_state(),
        "rng_cpu": torch.get_rng_state(),
        **(
            {"rng_cuda": torch.cuda.get_rng_state(device)}
            if device.type == "cuda"
            else {}
        ),
        "totals": step_fn.totals.detach().cpu(),
        "totals_steps": step_fn.summed,
        "wall_s": wall_s,
        **(
            {"schedule_changes": step_fn.schedule_changes}
            if step_fn.schedule_changes
            else {}
        ),
    }


def resume(
    stored: Mapping[str, Any], out_dir: Path, step_fn: Step
) -> tuple[int, float, list[dict[str, Any]]]:
    """Load a checkpoint's training state (:func:`training_state`) into ``step_fn``;
    returns its step, the wall time spent so far and the metric records up to that step
    (those logged after it are replayed)."""
    try:
        step_fn.model.load_state_dict(stored["model"])
        step_fn.optimizer.load_state_dict(stored["optimizer"])
        step_fn.generator.set_state(stored["generator"])
        torch.set_rng_state(stored["rng_cpu"])
        if step_fn.device.type == "cuda" and "rng_cuda" in stored:
            torch.cuda.set_rng_state(stored["rng_cuda"], step_fn.device)
        step_fn.totals.copy_(stored["totals"])
        step_fn.summed = stored["totals_steps"]
        step_fn.schedule_changes = list(stored.get("schedule_changes", []))
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"cannot resume {_run_name(out_dir)}: its {checkpoints.CHECKPOINT_FILE} "
            f"does not fit its config ({reason}); {WAY_OUT}"
        ) from None
    return stored["step"], stored["wall_s"], _history(out_dir, stored["step"])


# ---------------------------------------------------------------- the run's record


class Clock:
    """The run's wall time (a resumed run adds the time spent before) and its speed
    since the last log."""

    def __init__(self, wall_before: float, step: int) -> None:
        self.before, self.started = wall_before, time.perf_counter()
        self.last_time, self.last_step = self.started, step

    def wall(self) -> float:
        return self.before + time.perf_counter() - self.started

    def lap(self, step: int) -> dict[str, float]:
        """``steps_per_s`` since the last lap and ``wall_s``, the timing keys of a
        logged record."""
        now = time.perf_counter()
        speed = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return {"steps_per_s": speed, "wall_s": self.wall()}


class RunWriter:
    """The run's record: the metric ``history`` and, in a run directory ``out_dir``, the
    files that hold it.

    In ``out_dir`` (None: nothing is written) it appends each record to
    ``metrics.jsonl``, writes ``checkpoint.pt``, ``model.pt`` at the end, and
    ``meta.json`` (provenance, status, final metrics, and under ``"sha256"`` the SHA-256
    of the ``checkpoint.pt`` and ``model.pt`` this writer wrote, which loading checks)
    after each checkpoint; a run over several processes (torchrun) records its
    ``world_size`` and ``backend`` there. Opening a run directory removes what an
    interrupted write left, and either the files of an earlier run (a fresh start) or
    the records logged after the checkpoint a run resumes from.
    """

    def __init__(
        self,
        out_dir: Path | None,
        config: TrainConfig,
        history: list[dict[str, Any]],
        *,
        resumed_from: int | None,
        command: str | None,
        model: nn.Module,
        device: torch.device,
        warm_start: dict | None,
        graph: CudaGraphStep | None,
        world: World | None = None,
        schedule_changes: list[dict[str, Any]],
    ) -> None:
        self.out_dir, self.config, self.history, self.graph = (
            out_dir,
            config,
            history,
            graph,
        )
        # the step of the last checkpoint written, None before the first
        self.checkpoint_step = resumed_from
        self.metrics_file = None
        # of the files written by this writer (an earlier model.pt is not vouched for)
        self.sha256: dict[str, str] = {}
        if out_dir is None:
            return
        checkpoints.remove_leftovers(out_dir)
        if resumed_from is None:
            for stale in (
                checkpoints.CHECKPOINT_FILE,
                checkpoints.MODEL_FILE,
                checkpoints.META_FILE,
            ):
                (out_dir / stale).unlink(missing_ok=True)
        provenance, machines = machine_record(
            checkpoints.provenance(device),
            _previous_meta(out_dir) if resumed_from is not None else None,
            resumed_from,
        )
        lines = "".join(json.dumps(r) + "\n" for r in history)
        checkpoints.atomic_write(
            out_dir / checkpoints.METRICS_FILE, lambda f: f.write(lines.encode())
        )
        self.meta_base = {
            "name": out_dir.name,
            "command": command
            or f"icl_lib.train.train() called from {shlex.join(sys.argv)}",
            "config": config.to_dict(),
            "seed": config.seed,
            **provenance,
            **({"resumed_on": machines} if machines else {}),
            "threads": config.threads,
            **(
                {"world_size": world.size, "backend": world.backend}
                if world is not None and world.size > 1
                else {}
            ),
            "n_parameters": models.count_parameters(model),
            "steps": config.steps,
            **({"init_from": warm_start} if warm_start is not None else {}),
            **({"schedule_changes": schedule_changes} if schedule_changes else {}),
        }
        # closed by close()
        self.metrics_file = open(out_dir / checkpoints.METRICS_FILE, "a")  # noqa: SIM115

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
            path = checkpoints.save_model_file(
                self.out_dir, model, config.model, config.n_dims, config.n_points
            )
            self.sha256[path.name] = checkpoints.sha256_file(path)
            self.write_meta("finished", step, wall_s)

    def write_meta(self, status: str, step: int, wall_s: float) -> None:
        meta = {
            **self.meta_base,
            "status": status,
            "steps_done": step,
            "wall_time_s": round(wall_s, 3),
            "final_metrics": final_metrics(self.history),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"sha256": dict(self.sha256)} if self.sha256 else {}),
        }
        if self.graph is not None:
            meta["cuda_graph"] = self.graph.status
        checkpoints.write_meta(self.out_dir, meta)

    def mark(self, status: str) -> None:
        """After an error: the ``meta.json`` of the last checkpoint, if there is one,
        says ``status``."""
        if self.out_dir is not None and (self.out_dir / checkpoints.META_FILE).exists():
            checkpoints.write_meta(
                self.out_dir, {**checkpoints.load_meta(self.out_dir), "status": status}
            )

    def kept(self) -> str:
        """What a run that stops on an error leaves behind, as its message says it."""
        if self.out_dir is None or self.checkpoint_step is None:
            return "no checkpoint was written"
        return (
            f"the last good checkpoint, step {self.checkpoint_step}, stays in "
            f"{self.out_dir}"
        )

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()


# What decides whether float32 training is bit-identical on another machine
# (checkpoints.provenance): a resumed run keeps those of the machine that began it.
MACHINE_KEYS = (
    "device",
    "device_name",
    "torch_version",
    "python_version",
    "cpu_model",
    "cpu_capability",
    "blas",
    "blas_instructions",
)


def _previous_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        return checkpoints.load_meta(out_dir)
    except ValueError:  # a checkpoint without meta.json (killed between the two)
        return None


def machine_record(
    here: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    resumed_from: int | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The provenance a run's ``meta.json`` records, and its ``resumed_on`` list.

    ``here``: :func:`icl_lib.checkpoints.provenance` of this machine; ``previous``: the
    run's ``meta.json`` before this resume (None for a new run). A resumed run keeps the
    :data:`MACHINE_KEYS` of the machine that began it, which trained the steps a replay
    reruns (:mod:`icl_lib.replay` judges bit-exactness by them), and appends this
    machine's, from ``resumed_from`` on, to ``resumed_on`` when they differ from those
    of the segment before.
    """
    if previous is None:
        return dict(here), []
    first = {key: previous[key] for key in MACHINE_KEYS if key in previous}
    machines = [dict(m) for m in previous.get("resumed_on", [])]
    last = machines[-1] if machines else first
    now = {key: here[key] for key in MACHINE_KEYS if key in here}
    if any(last.get(key) != value for key, value in now.items()):
        machines.append({"at_step": resumed_from, **now})
    # a machine key the first segment did not record stays unrecorded
    kept = {k: v for k, v in here.items() if k not in MACHINE_KEYS or k in previous}
    return {**kept, **first}, machines


def final_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The latest value of every metric in ``history``, with the step it was measured
    at."""
    final: dict[str, Any] = {}
    for record in history:
        final.update(record)
    return final


def resume_hint(out_dir: Path, fresh: bool) -> str:
    """What an interrupted command line says: the checkpoint kept in ``out_dir`` and how
    to resume from it."""
    command = "the same command without --fresh" if fresh else "the same command"
    try:
        meta = checkpoints.load_meta(out_dir)
    except ValueError:
        return f"no checkpoint was written yet: run {command} to start again"
    return (
        f"{out_dir} keeps its checkpoint of step {meta.get('steps_done')}: run "
        f"{command} to resume"
    )
