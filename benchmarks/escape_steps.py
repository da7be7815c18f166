"""When each sparse-regression run leaves the least-squares plateau on sparse prompts,
read from its own log.

    python benchmarks/escape_steps.py [RUN ...]

For d = 8 with 2 non-zero coordinates and 12 points, a run "escapes" at the first
held-out evaluation where its sparse-prompt window error (the mean normalised error over
k = 3..7, where the lasso beats least squares) falls to ``ESCAPE_RATIO`` = 0.9 of least
squares' on the same prompts, and stays there at every later evaluation. Both numbers
come from the same prompts: the run's own held-out prompts (regenerated here from its
seed's "eval" stream as :func:`icl_lib.train.held_out_metrics` draws them, the class
drawn per prompt), with least squares computed by numpy's pseudo-inverse. A mixture
run's log gives each class's error (``eval_error_by_class``); a run of the sparse class
alone gives ``eval_error_by_position``. A run that has not escaped by its last
evaluation is censored there.

Why 0.9: on the plateau a run sits at or above least squares (the two sparse
specialists: 1.06-1.14 x least squares at 4k-8k steps for seed 0, 1.05-1.08 at 10k-18k
for seed 1, on about 1000 held-out prompts); after their escapes they fall to 0.59 and
0.63 of it by 30k steps. 0.9 lies below the plateau's spread and is crossed once, early
in the fall. A run whose log has no class errors (the plain mixture, paused before they
were logged) has no curve and is censored at its last step.

Writes ``results/escape_steps.json`` (each run's window curve, least squares', the
escape step or the censoring step, the sparse share of the training prompts and whether
the class is drawn per prompt or per batch, with the command, commit and time) and
``benchmarks/escape_steps.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from icl_lib import checkpoints, tasks
from icl_lib.train import TrainConfig, derive_seed, sample_prompts
from icl_lib.devices import make_generator

ROOT = Path(__file__).resolve().parent.parent
WINDOW = slice(3, 8)  # k = 3 .. 7
ESCAPE_RATIO = 0.9
DEFAULT_RUNS = (
    "yadlowsky_selection_sparse_laptop",
    "yadlowsky_selection_sparse_laptop_seed1",
    "yadlowsky_selection_mixture_per_batch_laptop",
    "yadlowsky_selection_mixture_per_batch_laptop_seed1",
    "yadlowsky_selection_mixture_per_batch_share075_laptop",
    "yadlowsky_selection_mixture_per_batch_share025_laptop",
    "yadlowsky_selection_mixture_balanced_laptop",
    "yadlowsky_selection_mixture_laptop",
)


def _exists(name: str) -> bool:
    try:
        return bool(checkpoints.run_directory(name))
    except ValueError:
        return False


def sparse_share(task: object) -> tuple[float, str]:
    """The share of sparse prompts in training, and how the class is drawn
    (``"prompt"``, ``"batch"``; alone: ``"-"``)."""
    if isinstance(task, tasks.SparseLinear):
        return 1.0, "-"
    index = next(
        i for i, c in enumerate(task.components) if isinstance(c, tasks.SparseLinear)
    )
    return float(task.weights[index]), task.per


def least_squares_window(config: TrainConfig) -> tuple[float, int]:
    """Least squares' sparse-prompt window error on the run's held-out prompts, and how
    many sparse prompts they hold."""
    task = tasks.make_task(**config.task)
    if isinstance(task, tasks.Mixture):
        task = dataclasses.replace(task, per="prompt")  # as held_out_metrics draws them
    xs, drawn = sample_prompts(
        task,
        config.eval_batch,
        config.n_points,
        config.n_dims,
        make_generator(derive_seed(config.seed, "eval")),
    )
    if isinstance(task, tasks.Mixture):
        index = next(
            i
            for i, c in enumerate(task.components)
            if isinstance(c, tasks.SparseLinear)
        )
        sparse = (drawn.params["component"] == index).numpy()
        zero = task.components[index].zero_predictor_error(config.n_dims)
    else:
        sparse, zero = (
            np.ones(xs.shape[0], dtype=bool),
            task.zero_predictor_error(config.n_dims),
        )
    x, y = xs.double().numpy()[sparse], drawn.ys.double().numpy()[sparse]
    preds = np.zeros_like(y)
    for k in range(1, x.shape[1]):
        weights = np.einsum("bdk,bk->bd", np.linalg.pinv(x[:, :k]), y[:, :k])
        preds[:, k] = np.einsum("bd,bd->b", x[:, k], weights)
    return float(((preds - y) ** 2 / zero)[:, WINDOW].mean()), int(sparse.sum())


def window_curve(
    history: list[dict], sparse_index: int | None
) -> list[tuple[int, float]]:
    """``(step, sparse-prompt window error)`` at each logged evaluation that has it."""
    curve = []
    for record in history:
        if sparse_index is None and "eval_error_by_position" in record:
            curve.append(
                (
                    record["step"],
                    float(np.mean(record["eval_error_by_position"][WINDOW])),
                )
            )
        elif sparse_index is not None and record.get("eval_error_by_class"):
            curve.append(
                (
                    record["step"],
                    float(np.mean(record["eval_error_by_class"][sparse_index][WINDOW])),
                )
            )
    return curve


def escape_step(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first step from which every evaluation is at or below ``threshold``; None if
    the last one is above."""
    escaped = None
    for step, error in curve:
        if error <= threshold:
            escaped = step if escaped is None else escaped
        else:
            escaped = None
    return escaped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python benchmarks/escape_steps.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "runs",
        nargs="*",
        help="run names (default: those of the selection runs that exist)",
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "results" / "escape_steps.json"),
        help="the result file",
    )
    parser.add_argument(
        "--table",
        default=str(ROOT / "benchmarks" / "escape_steps.md"),
        help="the markdown table",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    names = args.runs or [name for name in DEFAULT_RUNS if _exists(name)]
    for name in names:
        try:
            directory = checkpoints.run_directory(name)
        except ValueError as error:
            parser.error(str(error))
        meta = checkpoints.load_meta(directory)
        config = TrainConfig.from_dict(meta["config"])
        task = tasks.make_task(**config.task)
        share, per = sparse_share(task)
        sparse_index = (
            None
            if isinstance(task, tasks.SparseLinear)
            else next(
                i
                for i, c in enumerate(task.components)
                if isinstance(c, tasks.SparseLinear)
            )
        )
        ls_window, n_sparse = least_squares_window(config)
        curve = window_curve(checkpoints.read_metrics(directory), sparse_index)
        escaped = escape_step(curve, ESCAPE_RATIO * ls_window)
        rows.append(
            {
                "run": name,
                "sparse_share": share,
                "class_drawn_per": per,
                "seed": config.seed,
                "status": meta.get("status"),
                "steps_done": meta.get("steps_done"),
                "in_progress": directory.parent.name == checkpoints.IN_PROGRESS,
                "least_squares_window": ls_window,
                "held_out_sparse_prompts": n_sparse,
                "escape_step": escaped,
                "censored_at": None if escaped is not None else meta.get("steps_done"),
                "first_logged_window_step": curve[0][0] if curve else None,
                "curve": curve,
                "run_git_commit": meta.get("git_commit"),
            }
        )
    commit, dirty = checkpoints.git_commit()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = "python benchmarks/escape_steps.py " + shlex.join(argv)
    checkpoints.write_json_atomic(
        {
            "command": command,
            "git_commit": commit,
            "git_dirty": dirty,
            "time": now,
            "escape_ratio": ESCAPE_RATIO,
            "window": [3, 7],
            "wall_time_s": round(time.perf_counter() - started, 1),
            "runs": rows,
        },
        args.out,
    )
    lines = [
        "# Escape from the least-squares plateau on sparse prompts (issue 28)",
        "",
        f"Written {now} by `{command}` at commit "
        f"`{commit[:7]}`{' (dirty)' if dirty else ''}. Window: mean normalised error "
        "over k = 3..7 on each run's own held-out sparse prompts; escape: the first "
        f"evaluation from which it stays at or below {ESCAPE_RATIO} x least squares on "
        "the same prompts. Censored: not escaped by the last step trained.",
        "",
        "| run | sparse share | class drawn per | steps done | least squares | last "
        "window | escape step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        last = (
            f"{row['curve'][-1][1]:.3f} (step {row['curve'][-1][0]})"
            if row["curve"]
            else "not logged"
        )
        escape = (
            f"{row['escape_step']}"
            if row["escape_step"] is not None
            else f"censored at {row['censored_at']}"
        )
        lines.append(
            f"| `{row['run']}` | {row['sparse_share']:g} | {row['class_drawn_per']} | "
            f"{row['steps_done']} | {row['least_squares_window']:.3f} | {last} | "
            f"{escape} |"
        )
    Path(args.table).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
