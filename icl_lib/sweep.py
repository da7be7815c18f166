"""Sweeps: the named runs of a sweep file, each ``python -m icl_lib.train CONFIG
[--device D] [--seed N] --out ROOT/NAME --no-progress``, submitted through submitit to
Slurm or run on this machine; finished runs are skipped, interrupted ones resumed.

    python -m icl_lib.sweep configs/sweeps/raventos_pool_batch256.toml --status
        # the table only
    python -m icl_lib.sweep configs/sweeps/raventos_pool_batch256.toml --jobs 2
        # here, two at a time
    python -m icl_lib.sweep configs/sweeps/raventos_pool_batch256.toml --executor slurm
        --partition gpu --time 240

A sweep file (TOML) lists committed configs, so that every run has the name and the
recorded command of the run its config's header gives, and a reader reruns one run alone
with that command::

    root = "checkpoints"
        # each run trains into ROOT/NAME (optional; --root overrides it)
    device = "cuda"
        # optional: every run's --device (the paper configs' commands give it)
    vary = ["task.weights"]
        # the fields in which the listed configs differ (checked; seeds always may)

    [[runs]]
    config = "configs/yadlowsky_selection_mixture_per_batch_share025_laptop.toml"
        # run name: the config's stem
    [[runs]]
    config = "configs/yadlowsky_selection_mixture_per_batch_laptop.toml"
    seeds = [0, 1]
        # one run per seed: the config's own seed keeps the stem, seed N adds "_seedN" and
        # "--seed N" to its command

Here: :func:`load_sweep` (the one place a sweep file is checked) gives :class:`Run` s;
:func:`run_state` reads a run's directory with the finished-run test of
:mod:`icl_lib.runs` (and refuses a directory that holds another run);
:func:`executor_parameters` and :func:`make_executor` build submitit's executor;
:func:`main` prints the table of states, submits what is left and, on this machine,
waits for it. Nothing here deletes or overwrites: a job is the training command without
``--fresh``, which resumes a stopped or killed run and refuses another run's directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import shlex
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_lib import checkpoints, checks, runs
from icl_lib.config import TrainConfig, load_config

EXECUTORS = ("local", "slurm")
SPEC_FIELDS = ("root", "device", "vary", "runs")
RUN_FIELDS = ("config", "seeds")
# Options of the command line that only Slurm takes (argparse's dest -> the option as
# the user writes it).
SLURM_ONLY = {
    "partition": "--partition",
    "gpus_per_job": "--gpus-per-job",
    "cpus_per_task": "--cpus-per-task",
    "array_parallelism": "--array-parallelism",
}
# how meta.json records a run's command (icl_lib.distributed.launcher, one process)
TRAIN = "python -m icl_lib.train"


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, the config file as the sweep file writes it, the
    ``--seed`` override (None: the config's own seed), the config it trains and its run
    directory."""

    name: str
    config_path: str
    seed: int | None
    config: TrainConfig
    out_dir: Path
    device: str | None = None  # the --device override, None: the config's own

    @property
    def argv(self) -> list[str]:
        """The arguments of ``python -m icl_lib.train`` that train this run."""
        device = ["--device", self.device] if self.device is not None else []
        seed = ["--seed", str(self.seed)] if self.seed is not None else []
        return [
            self.config_path,
            *device,
            *seed,
            "--out",
            str(self.out_dir),
            "--no-progress",
        ]

    @property
    def command(self) -> str:
        """The command line of this run alone, as its ``meta.json`` records it."""
        return f"{TRAIN} {shlex.join(self.argv)}"


# ---------------------------------------------------------------- the sweep file


def load_sweep(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> list[Run]:
    """The runs of the sweep file ``path`` (module docstring), each in ``root``/NAME
    (default: the file's ``root``, else ``checkpoints``). Config paths are read relative
    to the current directory, as the training command reads them. ``ValueError`` names
    the field and what is accepted."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ValueError(
            f"sweep file {str(path)!r} cannot be read ({reason})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(
            f"sweep file {str(path)!r} is not valid TOML: {error}"
        ) from None
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ValueError(
            f"{path}: unknown field(s) {unknown}; accepted: {list(SPEC_FIELDS)}"
        )
    root = Path(root if root is not None else spec.get("root", "checkpoints"))
    if not isinstance(spec.get("root", ""), str) or not str(root):
        raise ValueError(
            f"{path}: root must be a directory (a string), got {spec.get('root')!r}"
        )
    device = spec.get("device")
    if device is not None:
        try:
            TrainConfig(device=device)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    vary = spec.get("vary", [])
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    if not isinstance(vary, list) or not all(
        isinstance(v, str) and v.split(".")[0] in fields for v in vary
    ):
        raise ValueError(
            f"{path}: vary must be a list of config fields ('task.pool_size', 'lr', "
            f"...; a field among {fields}), got {vary!r}"
        )
    tables = spec.get("runs")
    if (
        not isinstance(tables, list)
        or not tables
        or not all(isinstance(t, dict) for t in tables)
    ):
        raise ValueError(
            f"{path}: runs must be a non-empty list of [[runs]] tables, got {tables!r}"
        )
    found = [
        run
        for i, table in enumerate(tables)
        for run in _runs_of(table, f"{path}: runs[{i}]", root, device)
    ]
    names = [run.name for run in found]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"{path}: runs must have distinct names, got {twice} more than once (a "
            "config listed twice, or a seed given twice)"
        )
    _check_vary(found, vary, path)
    return found


def _runs_of(
    table: dict[str, Any], where: str, root: Path, device: str | None
) -> list[Run]:
    """The runs of one ``[[runs]]`` table: its config, once per seed (on ``device``, if
    given)."""
    unknown = sorted(set(table) - set(RUN_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown}; accepted: {list(RUN_FIELDS)}"
        )
    config_path = table.get("config")
    if not isinstance(config_path, str) or not config_path:
        raise ValueError(
            f"{where}: config must be the path of a TOML config, got {config_path!r}"
        )
    try:
        config = load_config(config_path)
        config = config if device is None else config.replace(device=device)
    except ValueError as error:
        raise ValueError(f"{where} ({config_path}): {error}") from None
    seeds = table.get("seeds", [config.seed])
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(
            f"{where}.seeds must be a non-empty list of seeds, got {seeds!r}"
        )
    stem = Path(config_path).stem
    found = []
    for seed in seeds:
        try:
            seeded = config.replace(seed=seed)
        except ValueError as error:
            raise ValueError(f"{where}.seeds: {error}") from None
        own = seed == config.seed
        name = stem if own else f"{stem}_seed{seed}"
        found.append(
            Run(name, config_path, None if own else seed, seeded, root / name, device)
        )
    return found


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """The fields (``task.pool_size`` for a key of a table) in which two configs'
    ``to_dict()`` differ."""
    found = set()
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found |= {f"{key}.{k}" for k in set(x) | set(y) if x.get(k) != y.get(k)}
        elif x != y:
            found.add(key)
    return found


def _check_vary(found: list[Run], vary: list[str], path: Path) -> None:
    """Refuse runs whose configs differ in a field that ``vary`` does not list (the seed
    always may differ)."""
    first = found[0].config.to_dict()
    for run in found[1:]:
        extra = sorted(
            d
            for d in _differences(first, run.config.to_dict())
            if d != "seed" and d not in vary and d.split(".")[0] not in vary
        )
        if extra:
            raise ValueError(
                f"{path}: vary must list every field in which the runs' configs "
                f"differ; {run.name} differs from {found[0].name} in {extra}, got vary "
                f"= {vary}"
            )


# ---------------------------------------------------------------- the state of a run


def run_state(run: Run) -> tuple[str, int]:
    """``(state, steps done)`` of ``run`` in its directory: "finished", "running" (a
    process holds its lock), "interrupted" (killed, or stopped by ``--stop-at``: the job
    resumes it), "diverged" (not resubmitted), "paused" (its resume checkpoint waits in
    ``ROOT/in_progress/NAME``: move it to ``ROOT`` to resume) or "not started".

    A directory that holds another run is refused (``ValueError`` naming it and the
    fields that differ)."""
    out_dir = run.out_dir
    try:
        stored = runs.resumable_state(out_dir, run.config) if out_dir.is_dir() else None
        done = (
            runs.finished_run(out_dir, run.config, stored) if out_dir.is_dir() else None
        )
    except ValueError as error:
        reason = str(error).removesuffix(f"; {runs.WAY_OUT}")
        raise ValueError(
            f"run {run.name}: {reason}; the sweep never overwrites a run: move it "
            "away, or give the sweep another --root"
        ) from None
    if done is not None:
        return "finished", done[0]
    if _locked(out_dir):  # before its first checkpoint too
        return "running", stored["step"] if stored is not None else 0
    if stored is None:
        paused = out_dir.parent / checkpoints.IN_PROGRESS / run.name
        return (
            ("paused", checkpoints.load_meta(paused).get("steps_done", 0))
            if (paused / checkpoints.META_FILE).is_file()
            else ("not started", 0)
        )
    status = (
        checkpoints.load_meta(out_dir).get("status")
        if (out_dir / checkpoints.META_FILE).is_file()
        else None
    )
    return ("diverged" if status == "diverged" else "interrupted"), stored["step"]


def _locked(out_dir: Path) -> bool:
    """Whether a training process holds ``out_dir``'s lock
    (:func:`icl_lib.checkpoints.run_lock`)."""
    try:
        fd = os.open(out_dir / checkpoints.LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def table(
    found: Sequence[Run], states: dict[str, tuple[str, int]], actions: dict[str, str]
) -> str:
    """The table of states: one line per run, its steps done of its config's and what
    this call did with it."""
    width = max(len(run.name) for run in found)
    lines = [f"{'run':<{width}}  {'state':<11}  {'steps':>15}  action"]
    for run in found:
        state, step = states[run.name]
        lines.append(
            f"{run.name:<{width}}  {state:<11}  {f'{step} / {run.config.steps}':>15}  "
            f"{actions[run.name]}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- submitit


def executor_parameters(
    kind: str,
    *,
    time_min: int,
    partition: str | None = None,
    gpus_per_job: int | None = None,
    cpus_per_task: int | None = None,
    array_parallelism: int | None = None,
    name: str = "sweep",
) -> dict[str, Any]:
    """The keyword arguments of submitit's ``AutoExecutor.update_parameters`` for
    ``kind`` ("local" or "slurm"): a job's time limit, and on Slurm its partition, GPUs,
    CPUs and how many jobs of the array run at once."""
    checks.choice("--executor", kind, EXECUTORS)
    checks.positive_int("--time", time_min)
    given = {
        "partition": partition,
        "gpus_per_job": gpus_per_job,
        "cpus_per_task": cpus_per_task,
        "array_parallelism": array_parallelism,
    }
    if kind != "slurm":
        slurm_only = [SLURM_ONLY[k] for k, v in given.items() if v is not None]
        if slurm_only:
            raise ValueError(
                f"{slurm_only[0]} applies to --executor slurm only, got --executor "
                f"{kind} (on this machine --jobs says how many runs train at once)"
            )
        return {"timeout_min": time_min, "name": name}
    for option in ("gpus_per_job", "cpus_per_task", "array_parallelism"):
        if given[option] is not None:
            (
                checks.nonnegative_int
                if option == "gpus_per_job"
                else checks.positive_int
            )(SLURM_ONLY[option], given[option])
    parameters: dict[str, Any] = {"timeout_min": time_min, "name": name}
    if gpus_per_job is not None:
        parameters["gpus_per_node"] = gpus_per_job
    if cpus_per_task is not None:
        parameters["cpus_per_task"] = cpus_per_task
    if partition is not None:
        if not isinstance(partition, str) or not partition.strip():
            raise ValueError(
                f"--partition must be a Slurm partition's name, got {partition!r}"
            )
        parameters["slurm_partition"] = partition
    if array_parallelism is not None:
        parameters["slurm_array_parallelism"] = array_parallelism
    return parameters


def make_executor(
    kind: str, folder: str | os.PathLike, parameters: dict[str, Any]
) -> Any:
    """submitit's ``AutoExecutor`` for ``kind`` with its logs in ``folder``, its
    parameters set."""
    import submitit  # the cluster extra: only a sweep needs it

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    except RuntimeError as error:  # SlurmExecutor without srun
        raise ValueError(
            f"--executor {kind} cannot start here ({error}); run the sweep on the "
            "cluster's login node, or use --executor local"
        ) from None
    executor.update_parameters(**parameters)
    return executor


def job(run: Run, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The job of ``run``: its training command in ``cwd`` (submitit's CommandFunction;
    the log goes to the job's), in the environment ``env`` (None: the job's own, as
    Slurm sets it on the node)."""
    import submitit

    return submitit.helpers.CommandFunction(
        [sys.executable, "-m", "icl_lib.train", *run.argv],
        verbose=True,
        cwd=cwd,
        env=env,
    )


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m icl_lib.sweep SPEC [--status] [--executor local|slurm] [options]``:
    the table of states, then the runs left submitted (Slurm: returns once submitted) or
    trained here (``--jobs`` at a time, waiting)."""
    parser = argparse.ArgumentParser(
        prog="python -m icl_lib.sweep",
        description="Train the runs of a sweep file (see configs/sweeps/), skipping "
        "finished runs and resuming interrupted ones.",
    )
    parser.add_argument(
        "spec", help="a sweep file, e.g. configs/sweeps/raventos_pool_batch256.toml"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print the table of states and submit nothing",
    )
    parser.add_argument(
        "--root",
        help="the folder of the run directories (overrides the sweep file's root)",
    )
    parser.add_argument(
        "--executor",
        default="local",
        help="'local' (this machine) or 'slurm' (submitit)",
    )
    parser.add_argument(
        "--logs",
        help="submitit's folder of job logs (default: runs/sweeps/<sweep name>)",
    )
    parser.add_argument(
        "--time",
        type=int,
        default=24 * 60,
        help="a job's time limit in minutes (default: a day)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="local: runs trained at once (default 1)"
    )
    parser.add_argument("--partition", help="slurm: the partition")
    parser.add_argument("--gpus-per-job", type=int, help="slurm: GPUs of each job")
    parser.add_argument("--cpus-per-task", type=int, help="slurm: CPUs of each job")
    parser.add_argument(
        "--array-parallelism",
        type=int,
        help="slurm: jobs of the array that run at once",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        checks.choice("--executor", args.executor, EXECUTORS)
        checks.positive_int("--jobs", args.jobs)
        if args.jobs != 1 and args.executor != "local":
            raise ValueError(
                "--jobs applies to --executor local only, got --executor "
                f"{args.executor} (Slurm's is --array-parallelism)"
            )
        parameters = executor_parameters(
            args.executor,
            time_min=args.time,
            partition=args.partition,
            gpus_per_job=args.gpus_per_job,
            cpus_per_task=args.cpus_per_task,
            array_parallelism=args.array_parallelism,
            name=Path(args.spec).stem,
        )
        found = load_sweep(args.spec, args.root)
        states = {run.name: run_state(run) for run in found}
        todo = [
            run
            for run in found
            if states[run.name][0] in ("not started", "interrupted")
        ]
        if args.status or not todo:
            print(
                table(
                    found,
                    states,
                    {
                        run.name: _idle(run, states[run.name][0], run in todo)
                        for run in found
                    },
                )
            )
            return 0
        logs = (
            Path(args.logs)
            if args.logs
            else Path("runs") / "sweeps" / Path(args.spec).stem
        )
        executor = make_executor(
            args.executor, checks.writable_directory("--logs", logs), parameters
        )
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {' '.join(str(error).split())}\n")
    cwd = Path.cwd()
    if args.executor == "slurm":
        try:
            with executor.batch():
                jobs = [executor.submit(job(run, cwd)) for run in todo]
        # sbatch's refusal, as submitit raises it
        except Exception as error:  # noqa: BLE001
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            parser.exit(
                2,
                f"error: sbatch refused the sweep's job array ({reason}); nothing was "
                "submitted\n",
            )
        actions = {run.name: f"submitted: job {j.job_id}" for run, j in zip(todo, jobs)}
        print(
            table(
                found,
                states,
                {
                    run.name: actions.get(run.name)
                    or _idle(run, states[run.name][0], False)
                    for run in found
                },
            )
        )
        print(
            f"logs in {logs}; rerun this command to see the states (it skips finished "
            "and running runs)"
        )
        return 0
    failed: dict[str, str] = {}
    wave: list[tuple[Run, Any]] = []
    try:
        # waves of --jobs runs, each waited for
        for start in range(0, len(todo), args.jobs):
            # submitit's local executor hides every GPU from a job
            # (CUDA_VISIBLE_DEVICES=""): the run gets this process's environment, so
            # that it trains where `python -m icl_lib.train` would
            wave = [
                (run, executor.submit(job(run, cwd, dict(os.environ))))
                for run in todo[start : start + args.jobs]
            ]
            for run, submitted in wave:
                try:
                    submitted.result()
                # submitit's FailedJobError carries the run's stderr
                except Exception as error:  # noqa: BLE001
                    lines = str(error).strip().splitlines()
                    failed[run.name] = (
                        f"failed: {lines[-1] if lines else type(error).__name__} (log: "
                        f"{logs})"
                    )
    except KeyboardInterrupt:
        for _, submitted in wave:
            submitted.cancel(check=False)
        parser.exit(
            130,
            "error: interrupted; each run keeps its last checkpoint: run the same "
            "command to resume\n",
        )
    after = {run.name: run_state(run) for run in found}
    actions = {
        run.name: failed.get(run.name)
        or ("trained" if run in todo else _idle(run, states[run.name][0], False))
        for run in found
    }
    print(table(found, after, actions))
    return 1 if failed else 0


def _idle(run: Run, state: str, left: bool) -> str:
    """What a run that was not submitted shows in the table's action column."""
    if left:
        return "to train"
    paused = run.out_dir.parent / checkpoints.IN_PROGRESS / run.name
    return {
        "finished": "skipped",
        "running": "skipped (running)",
        "diverged": "skipped (see its meta.json)",
        "paused": f"skipped: mv {paused} {run.out_dir.parent}/ to resume it",
    }.get(state, "skipped")


if __name__ == "__main__":
    sys.exit(main())
