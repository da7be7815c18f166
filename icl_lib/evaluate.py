"""Evaluate a trained model against the baselines on the same prompts, and store the
result as a file.

* :func:`evaluate_model`: error curves (normalised error against the number of
  in-context examples k, with bootstrap bands) of a model and of named baselines
  (:data:`ESTIMATORS`), on one batch of prompts drawn from a function class, optionally
  shifted (:mod:`icl_lib.shifts`);
* :func:`write_result` / :func:`read_result`: a JSON file holding the curves (k, mean,
  lower, upper), the run's config, the task, the shift, the number of prompts, the seed,
  the git commit, the device, the wall time, the date and the exact command;
* :func:`available_results`: the stored result files under ``results/``.
* :func:`label_leak`: how far a model's predictions move when only the prompt's last
  label does (0 for a causal model; chapter 4's check of the mask).

From the command line (``RUN`` is a checkpoint name under ``checkpoints/`` or a run
directory)::

    python -m icl_lib.evaluate RUN --task NAME [--task-option KEY=VALUE ...]
        [--shift NAME] [--shift-option KEY=VALUE ...] [--prompts N] [--seed S]
        [--device D] --out results/NAME.json [--overwrite]

``--out`` is a new file, or a result file of this command that ``--overwrite`` replaces:
nothing else is replaced.
"""

from __future__ import annotations

# before torch's import, which takes seconds: a Ctrl-C there is one line too
if __name__ == "__main__":
    from icl_lib import interrupts

    interrupts.quiet_start("python -m icl_lib.evaluate")

import argparse
import dataclasses
import functools
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from icl_lib import (
    baselines,
    checkpoints,
    checks,
    evaluation,
    interrupts,
    models,
    shifts,
    tasks,
)
from icl_lib.devices import check_seed, make_generator, resolve_device
from icl_lib.evaluation import ErrorCurve
from icl_lib.samplers import gaussian_xs

RESULT_FORMAT = "icl_lib-result/1"

# ---------------------------------------------------------------- estimators by name

# Each estimator is a frozen dataclass of its options (``estimator_options``,
# ``--estimator-option NAME.KEY=VALUE``) with its defaults. Called on prompts ``xs:
# (batch, n, d)``, ``ys: (batch, n)`` and the sampled functions' ``params``, it returns
# predictions ``(batch, n)``, entry k predicting ``ys[:, k]`` from the first k examples.


@dataclass(frozen=True)
class LeastSquares:
    """Minimum-norm least squares (:func:`icl_lib.baselines.least_squares`)."""

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.least_squares(xs, ys)


@dataclass(frozen=True)
class Ridge:
    """Ridge regression with ``penalty`` (:func:`icl_lib.baselines.ridge`)."""

    penalty: float = 0.1

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.ridge(xs, ys, penalty=self.penalty)


@dataclass(frozen=True)
class Lasso:
    """The lasso with penalty ``alpha`` (:func:`icl_lib.baselines.lasso`)."""

    alpha: float = 1e-3

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.lasso(xs, ys, alpha=self.alpha)


@dataclass(frozen=True)
class NearestNeighbours:
    """The mean label of the ``n_neighbors`` nearest examples
    (:func:`icl_lib.baselines.knn`)."""

    n_neighbors: int = 3

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.knn(xs, ys, n_neighbors=self.n_neighbors)


@dataclass(frozen=True)
class Averaging:
    """Garg et al.'s averaging estimator (:func:`icl_lib.baselines.averaging`)."""

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.averaging(xs, ys)


@dataclass(frozen=True)
class Oracle:
    """Least squares on each prompt's true support (a sparse task's
    ``params["support"]``)."""

    whole_batch: ClassVar[bool] = (
        True  # it reads the params row by row, so it predicts all prompts at once
    )

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        if "support" not in params:
            raise ValueError("it needs a sparse task (its params hold no 'support')")
        return baselines.oracle_least_squares(xs, ys, params["support"])


@dataclass(frozen=True)
class ReluNetGD:
    """A two-layer ReLU network fitted by gradient descent per prompt and k
    (:func:`icl_lib.baselines.relu_net_gd`, whose defaults these are)."""

    hidden: int = 100
    steps: int = 100
    learning_rate: float = 1e-2
    seed: int = 0

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return baselines.relu_net_gd(xs, ys, **dataclasses.asdict(self))


@dataclass(frozen=True)
class DMMSE:
    """Raventos et al.'s dMMSE, the posterior mean over a finite pool of tasks
    (:func:`icl_lib.baselines.dmmse`).

    The options are those of the run's ``finite_pool_linear`` task, which rebuilds the
    same pool: ``--estimator-option dmmse.pool_size=512``.
    """

    pool_size: int
    pool_seed: int = 0
    noise_std: float = 0.5

    def __call__(
        self, xs: torch.Tensor, ys: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        task = tasks.FinitePoolLinear(
            pool_size=self.pool_size, pool_seed=self.pool_seed, noise_std=self.noise_std
        )
        return baselines.dmmse(xs, ys, task.pool(xs.shape[-1]), task.noise_std)


ESTIMATORS: dict[str, type] = {
    "least_squares": LeastSquares,
    "ridge": Ridge,
    "lasso": Lasso,
    "knn": NearestNeighbours,
    "averaging": Averaging,
    "oracle": Oracle,
    "relu_net_gd": ReluNetGD,
    "dmmse": DMMSE,
}
# Names for plots: the labels of the book's style table (icl_lib.evaluation.STYLES).
LABELS = {name: evaluation.style(name).label for name in ("transformer", *ESTIMATORS)}
DEFAULT_ESTIMATORS = ("least_squares", "lasso", "knn", "averaging")


def results_root() -> Path:
    """Where paper-scale result files live: ``<repository>/results``."""
    return checkpoints.repository_root() / "results"


def _as_task(task: Any) -> Any:
    if isinstance(task, (str, Mapping)):
        return checks.build(tasks.TASKS, task, "task")
    if callable(getattr(task, "sample", None)) and callable(
        getattr(task, "zero_predictor_error", None)
    ):
        # a function class of icl_lib.tasks, or one of the reader's own with the same
        # two methods
        return task
    raise ValueError(
        f"task must be a function class (with sample and zero_predictor_error), a name "
        f"({list(tasks.TASKS)}) or a dict, got {task!r}"
    )


def _as_shift(shift: Any) -> shifts.Shift | None:
    if shift is None or isinstance(shift, shifts.Shift):
        return shift
    if isinstance(shift, (str, Mapping)):
        return checks.build(shifts.SHIFTS, shift, "shift")
    raise ValueError(
        f"shift must be None, a Shift, a name ({list(shifts.SHIFTS)}) or a dict, got "
        f"{shift!r}"
    )


def _estimators(names: Sequence[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The estimators of ``options`` and ``names`` (in that order; options of unused
    estimators are checked too)."""
    built = {}
    for name in (*options, *names):
        given = options.get(name, {})
        if not isinstance(given, Mapping):
            raise ValueError(
                f"estimator_options[{name!r}] must be a dict of options, got {given!r}"
            )
        if "name" in given:  # it would build another estimator under this one's name
            raise ValueError(
                f"estimator_options[{name!r}] (--estimator-option {name}.KEY=VALUE) "
                f"must not set the name, got name = {given['name']!r}"
            )
        built[name] = checks.build(ESTIMATORS, {"name": name, **given}, "estimator")
    return {name: built[name] for name in names}


def _dry_run(function_class: Any, estimators: Mapping[str, Any], n_dims: int) -> None:
    """Fail before any prompt is predicted on a task that does not fit ``n_dims``
    (sparsity k > d) and on bad option values: the task and each estimator run once on a
    two-point prompt of zeros, with a generator of their own (the evaluation's random
    draws are untouched), so that the baselines' own checks speak."""
    xs = torch.zeros(1, 2, n_dims)
    try:
        params = function_class.sample(xs, make_generator(0)).params
        function_class.zero_predictor_error(n_dims)
    except ValueError as error:
        raise ValueError(f"task at n_dims = {n_dims}: {error}") from None
    for name, estimator in estimators.items():
        try:
            estimator(xs, torch.zeros(1, 2), params)
        except ValueError as error:
            raise ValueError(f"estimator {name!r}: {error}") from None


@torch.no_grad()
def evaluate_model(
    model: nn.Module | None,
    task: Any,
    *,
    n_dims: int,
    n_points: int,
    n_prompts: int,
    seed: int,
    shift: Any = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    estimator_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
    chunk: int = 512,
    n_bootstrap: int = 1000,
) -> dict[str, ErrorCurve]:
    """Error curves of ``model`` ("transformer") and of each named baseline on the same
    ``n_prompts`` prompts.

    ``task``: a function class (any object with ``sample`` and
    ``zero_predictor_error``), its name, or a dict ``{"name": ..., **options}``. Prompts
    have ``n_points`` points of ``n_dims`` coordinates, drawn with
    :func:`icl_lib.samplers.gaussian_xs` from ``make_generator(seed)`` on ``device``
    (default: the model's device, else the CPU), then shifted by ``shift`` (a
    :class:`icl_lib.shifts.Shift`, its name, a dict, or None). ``estimators``: names in
    :data:`ESTIMATORS`, with options from ``estimator_options`` (``{"lasso": {"alpha":
    0.01}}``). ``model`` may be None (baselines only). Errors are divided by the task's
    zero-predictor error times the shift's ``variance``; an orthogonal-query shift stops
    at ``n_points = n_dims``. Returns ``{"transformer": ..., "least_squares": ...,
    ...}`` in that order.
    """
    checks.positive_int("n_dims", n_dims)
    n_points = checks.positive_int("n_points", n_points)
    checks.positive_int("n_prompts", n_prompts)
    checks.positive_int("chunk", chunk)
    function_class = _as_task(task)
    shift = _as_shift(shift)
    baselines_by_name = _estimators(estimators, estimator_options or {})
    _dry_run(function_class, baselines_by_name, n_dims)
    if device is None:
        device = (
            next(model.parameters()).device
            if model is not None
            else torch.device("cpu")
        )
    device = torch.device(device)
    if shift is not None and shift.max_points(n_dims) is not None:
        n_points = min(n_points, shift.max_points(n_dims))
    generator = make_generator(seed, device)
    xs = gaussian_xs(n_prompts, n_points, n_dims, generator)
    if shift is None:
        sample = function_class.sample(xs, generator)
        prompts, params = shifts.ShiftedPrompts(xs=xs, ys=sample.ys), sample.params
    else:
        prompts = shift.apply(xs, function_class, generator)
        params = prompts.params
    normalizer = function_class.zero_predictor_error(n_dims) * prompts.variance

    predictors: dict[str, Any] = {} if model is None else {"transformer": model}
    for name, estimator in baselines_by_name.items():
        predictors[name] = functools.partial(estimator, params=params)
    queries = (prompts.query_xs, prompts.query_ys) if prompts.has_queries else None
    # An estimator that reads the params row by row (the oracle) predicts all prompts in
    # one chunk.
    return {
        name: evaluation.error_curves(
            {name: predict},
            prompts.xs,
            prompts.ys,
            normalizer,
            queries=queries,
            n_bootstrap=n_bootstrap,
            seed=seed,
            chunk=n_prompts
            if getattr(baselines_by_name.get(name), "whole_batch", False)
            else chunk,
        )[name]
        for name, predict in predictors.items()
    }


def label_leak(
    model: Any,
    *,
    n_dims: int = 5,
    n_points: int = 11,
    n_prompts: int = 64,
    seed: int = 3,
) -> float:
    """The largest change of any prediction when only the last label of the prompt moves
    by 10: 0 for a causal model, whose prediction at position i reads ``ys[:, :i]``
    only; above 0 where a prediction can see a later label (a leaking mask,
    :func:`icl_lib.models.without_causal_mask`).

    ``model`` maps ``(xs (n_prompts, n_points, n_dims), ys (n_prompts, n_points))`` to
    predictions ``(n_prompts, n_points)``; the prompts are dense linear, drawn with
    :func:`icl_lib.samplers.gaussian_xs` from ``make_generator(seed)``.
    """
    if not callable(model):
        raise ValueError(
            "model must be callable as model(xs, ys) -> predictions, got "
            f"{type(model).__name__}"
        )
    checks.positive_int("n_dims", n_dims)
    checks.positive_int("n_points", n_points)
    checks.positive_int("n_prompts", n_prompts)
    check_seed("seed", seed)
    generator = make_generator(seed)
    xs = gaussian_xs(n_prompts, n_points, n_dims, generator)
    ys = tasks.DenseLinear().sample(xs, generator).ys
    moved = ys.clone()
    moved[:, -1] += 10.0
    with torch.no_grad():
        return float((model(xs, ys) - model(xs, moved)).abs().max())


# ---------------------------------------------------------------- result files


def _curve_to_json(curve: ErrorCurve) -> dict[str, Any]:
    return {
        "k": curve.k.tolist(),
        "mean": curve.mean.tolist(),
        "lower": np.asarray(curve.low).tolist(),
        "upper": np.asarray(curve.high).tolist(),
        "n_prompts": curve.n_prompts,
    }


def is_result_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that :func:`write_result` wrote (a JSON object
    of ``RESULT_FORMAT``)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("rb") as file:
            if file.read(1) != b"{":  # weights, text, anything else: not read further
                return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == RESULT_FORMAT


def check_result_path(
    path: str | os.PathLike,
    overwrite: bool,
    name: str = "path",
    flag: str = "overwrite=True",
) -> Path:
    """``path`` if a result may be written there: a new file, or a result file when
    ``overwrite``; else ``ValueError`` naming ``name`` (a result never replaces another
    file, such as a run's ``model.pt``)."""
    path = checks.writable_file(name, path)
    if not (path.exists() or path.is_symlink()):
        return path
    if not is_result_file(path):
        raise ValueError(
            f"{name} must be a new file or a result file of icl_lib.evaluate, got "
            f"{str(path)!r}, which is another file: it was left as it is; choose "
            f"another {name}"
        )
    if not overwrite:
        raise ValueError(
            f"{name} {str(path)!r} already holds a result: pass {flag} to replace it, "
            f"or choose another {name}"
        )
    return path


def write_result(
    path: str | os.PathLike,
    curves: Mapping[str, ErrorCurve],
    *,
    run: Mapping[str, Any],
    task: Mapping[str, Any],
    provenance: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a result file (JSON, atomically) and return its path.

    ``path`` must be a new file, or with ``overwrite`` a result file
    (:func:`check_result_path`): a result never replaces any other file.

    ``run``: what was evaluated (for a trained model, its ``meta.json``: name, config,
    command, git commit, device, wall time of training); ``task``: the task spec
    ``{"name": ..., **options}``; ``provenance``: how the evaluation was made
    (``n_prompts``, ``seed``, ``shift``, ``command``, ``device``, ``wall_time_s``, ...).
    The git commit and the date are added to ``provenance`` when missing.
    """
    if not curves:
        raise ValueError("curves must hold at least one error curve")
    for name, curve in curves.items():
        if not isinstance(curve, ErrorCurve):
            raise ValueError(
                f"curves[{name!r}] must be an ErrorCurve, got {type(curve).__name__}"
            )
    provenance = dict(provenance)
    if "git_commit" not in provenance:
        provenance["git_commit"], provenance["git_dirty"] = checkpoints.git_commit()
    provenance.setdefault(
        "date", datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    data = {
        "format": RESULT_FORMAT,
        "curves": {name: _curve_to_json(curve) for name, curve in curves.items()},
        "run": dict(run),
        "task": dict(task),
        "provenance": provenance,
    }
    # fail here, not half-way through the write, on values JSON cannot hold
    json.dumps(data)
    check_result_path(path, overwrite)
    return checkpoints.write_json_atomic(data, path)


def read_result(
    path: str | os.PathLike,
) -> tuple[dict[str, ErrorCurve], dict[str, Any]]:
    """The curves and the rest of a file written by :func:`write_result`: ``(curves,
    {"run", "task", "provenance"})``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"result file {str(path)!r} does not exist")
    data = json.loads(path.read_text())
    if data.get("format") != RESULT_FORMAT:
        raise ValueError(
            f"{path} has format {data.get('format')!r}; this library reads "
            f"{RESULT_FORMAT!r}"
        )
    curves = {
        name: ErrorCurve(
            mean=np.asarray(c["mean"], dtype=float),
            low=np.asarray(c["lower"], dtype=float),
            high=np.asarray(c["upper"], dtype=float),
            n_prompts=int(c["n_prompts"]),
        )
        for name, c in data["curves"].items()
    }
    return curves, {key: data[key] for key in ("run", "task", "provenance")}


def available_results(
    pattern: str = "*.json", root: str | os.PathLike | None = None
) -> list[Path]:
    """Sorted result files under ``results/`` (or ``root``) whose names match the glob
    ``pattern``."""
    root = Path(root) if root is not None else results_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern) if p.is_file())


# ---------------------------------------------------------------- command line


def _parse_options(
    pairs: Sequence[str], flag: str, named_by: str | None = None
) -> dict[str, Any]:
    """``["k=3", "noise_std=0.5"]`` -> ``{"k": 3, "noise_std": 0.5}`` (JSON values, else
    strings). With ``named_by`` (the flag that names the spec), a ``name=...`` is
    refused: it would silently override that flag."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must look like KEY=VALUE, got {pair!r}")
        if named_by is not None and key == "name":
            raise ValueError(
                f"{flag} must not set the name (give it with {named_by}), got {pair!r}"
            )
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m icl_lib.evaluate RUN --task NAME ... --out results/NAME.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m icl_lib.evaluate",
        description=(
            "Error curves of a trained run against the baselines, as a JSON file."
        ),
    )
    parser.add_argument(
        "run", help="a checkpoint name under checkpoints/ or a run directory"
    )
    parser.add_argument(
        "--task", required=True, help=f"function class: one of {list(tasks.TASKS)}"
    )
    parser.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument(
        "--shift", help=f"distribution shift: one of {list(shifts.SHIFTS)}"
    )
    parser.add_argument(
        "--shift-option", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument(
        "--estimators",
        default=",".join(DEFAULT_ESTIMATORS),
        help=f"comma-separated baselines from {list(ESTIMATORS)} ('' for none)",
    )
    parser.add_argument(
        "--estimator-option", action="append", default=[], metavar="NAME.KEY=VALUE"
    )
    parser.add_argument(
        "--prompts", type=int, default=1280, help="number of prompts (default 1280)"
    )
    parser.add_argument(
        "--points", type=int, help="prompt length (default: the run's n_points)"
    )
    parser.add_argument(
        "--dims", type=int, help="input dimension (default: the run's n_dims)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", help="'cpu', 'cuda' or 'cuda:N' (default: CUDA when available)"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the result file, e.g. results/garg_dense_linear_paper.json",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a result file already",
    )
    args = parser.parse_args(argv)
    try:
        interrupts.take_over()
        return _run(args, argv)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {' '.join(str(error).split())}\n")
    except KeyboardInterrupt:
        with interrupts.ignored():  # a second Ctrl-C: the same line, not a traceback
            parser.exit(
                130,
                f"error: interrupted; nothing was written to {args.out}: run the same "
                "command again\n",
            )


def _prompt_shape(args: argparse.Namespace, run: Mapping[str, Any]) -> tuple[int, int]:
    """``(n_dims, n_points)`` from ``--dims`` and ``--points`` (default: the run's),
    checked against the model."""
    every_position = models.predicts_every_position(run["spec"]["name"])
    n_dims = (
        run["n_dims"] if args.dims is None else checks.positive_int("--dims", args.dims)
    )
    n_points = (
        run["n_points"]
        if args.points is None
        else checks.positive_int("--points", args.points)
    )
    if every_position and n_dims > run["n_dims"]:
        raise ValueError(
            f"--dims must be between 1 and the run's n_dims = {run['n_dims']}, got "
            f"{n_dims}"
        )
    if not every_position and n_dims != run["n_dims"]:
        raise ValueError(
            f"--dims must be the run's n_dims = {run['n_dims']} (a "
            f"{run['spec']['name']!r} model reads that many coordinates), got {n_dims}"
        )
    if every_position and n_points > run["n_points"]:
        raise ValueError(
            f"--points must be between 1 and the run's n_points = {run['n_points']}, "
            f"got {n_points}"
        )
    if not every_position and n_points < 2:
        raise ValueError(
            f"--points must be >= 2 (examples and a query), got {n_points}"
        )
    return n_dims, n_points


# as train.MAX_BATCH_ELEMENTS: more inputs than this is a typo, not an evaluation
MAX_PROMPT_ELEMENTS = 2**28


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """The command line's work, once its arguments are parsed; bad input raises
    ``ValueError``."""
    checks.positive_int("--prompts", args.prompts)
    check_seed("--seed", args.seed)
    task_spec = {
        "name": args.task,
        **_parse_options(args.task_option, "--task-option", "--task"),
    }
    _as_task(task_spec)
    shift_options = _parse_options(args.shift_option, "--shift-option", "--shift")
    if shift_options and not args.shift:
        raise ValueError(
            "--shift-option needs --shift (the shift it configures), got "
            f"{args.shift_option}"
        )
    shift_spec = {"name": args.shift, **shift_options} if args.shift else None
    _as_shift(shift_spec)
    estimators = tuple(e for e in args.estimators.split(",") if e)
    for name in estimators:
        checks.choice("--estimators", name, tuple(ESTIMATORS))
    estimator_options: dict[str, dict[str, Any]] = {}
    for key, value in _parse_options(
        args.estimator_option, "--estimator-option"
    ).items():
        name, _, option = key.partition(".")
        if not option:
            raise ValueError(
                f"--estimator-option must look like NAME.KEY=VALUE, got {key!r}"
            )
        estimator_options.setdefault(
            checks.choice("--estimator-option", name, tuple(ESTIMATORS)), {}
        )[option] = value
    _estimators(estimators, estimator_options)
    out = check_result_path(args.out, args.overwrite, "--out", "--overwrite")
    device = resolve_device(args.device or "auto")
    meta = checkpoints.load_meta(args.run)
    run = checkpoints.model_config(args.run)
    stored = {
        "spec": meta["config"].get("model"),
        "n_dims": meta["config"].get("n_dims"),
        "n_points": meta["config"].get("n_points"),
    }
    if stored != run:
        raise ValueError(
            f"{checkpoints.resolve(args.run) / checkpoints.META_FILE} disagrees with "
            f"the model it describes: {stored} in meta.json, {run} in the weights; "
            "restore meta.json or retrain the run"
        )
    n_dims, n_points = _prompt_shape(args, run)
    # refused before anything is allocated
    if args.prompts * n_points * n_dims > MAX_PROMPT_ELEMENTS:
        raise ValueError(
            "--prompts x points x n_dims must be at most 2**28 (1 GiB of float32 "
            f"inputs), got {args.prompts} x {n_points} x {n_dims}"
        )
    model = checkpoints.load_model(args.run, device=device)
    started = time.perf_counter()
    curves = evaluate_model(
        model,
        task_spec,
        n_dims=n_dims,
        n_points=n_points,
        n_prompts=args.prompts,
        seed=args.seed,
        shift=shift_spec,
        estimators=estimators,
        estimator_options=estimator_options,
        device=device,
    )
    wall = time.perf_counter() - started
    provenance = {
        "command": "python -m icl_lib.evaluate " + shlex.join(argv),
        "n_prompts": args.prompts,
        "seed": args.seed,
        "n_dims": n_dims,
        "n_points": n_points,
        "shift": shift_spec,
        "estimators": list(estimators),
        "estimator_options": estimator_options,
        **checkpoints.provenance(device),
        "wall_time_s": round(wall, 3),
    }
    path = write_result(
        out,
        curves,
        run=meta,
        task=task_spec,
        provenance=provenance,
        overwrite=args.overwrite,
    )
    summary = {
        name: [round(float(v), 4) for v in curve.mean] for name, curve in curves.items()
    }
    print(
        json.dumps({"out": str(path), "wall_time_s": round(wall, 3), "mean": summary})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
