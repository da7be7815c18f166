"""Summarise laptop-scale training runs: what each config learns on a CPU, read from the
runs' own files.

Usage (after producing the runs with the commands in ``configs/README.md``):
``.venv/bin/python benchmarks/laptop_settings.py [RUN_DIR ...]``; writes
``benchmarks/laptop_settings.md``. Every number comes from a run directory's
``meta.json`` / ``metrics.jsonl`` or from its saved model.

The second table is the sparse-regression sweep (issue 13): every run of it, failures
included, from the committed chapter runs in ``checkpoints/`` and from
``benchmarks/sweep/<run>/`` (sweep runs that no chapter loads keep their ``meta.json``
and ``metrics.jsonl`` there, not their weights). Its curves (the window error k = s+1 ..
d-1 against steps, on each run's fixed evaluation prompts) are drawn in
``benchmarks/sweep_curves.png``. The third table sets chapter 5's one-dimensional runs
beside their first, cosine-to-zero versions.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from icl_lib import checkpoints

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [
    "checkpoints/garg_dense_linear_laptop",
    "checkpoints/garg_dense_linear_laptop_interleaved",
    "checkpoints/garg_dense_linear_laptop_interleaved_curriculum",
    *(
        f"checkpoints/garg_dense_linear_constant_laptop{arm}{seed}"
        for arm in ("", "_curriculum", "_interleaved", "_interleaved_curriculum")
        for seed in ("", "_seed1")
    ),
    "checkpoints/lsa_zfb_laptop",
    "checkpoints/gpt_short_prompts_laptop",
]


SWEEP_GLOBS = (
    "checkpoints/yadlowsky_selection_*",
    "checkpoints/in_progress/yadlowsky_*",
    "benchmarks/sweep/*",
)
ONE_D_GLOBS = (
    "checkpoints/yadlowsky_*_1d_laptop",
    "benchmarks/sweep/yadlowsky_*_1d_laptop_cosine",
)
ONE_D_POSITIONS = (2, 4, 12)


def one_d_row(run: Path) -> str:
    """One row of the one-dimensional runs' table: schedule, steps and the final
    evaluation error at a few k."""
    meta = checkpoints.load_meta(run)
    config = meta["config"]
    task = config["task"]
    components = task.get("components", [task])
    task_text = " + ".join(c["name"] for c in components)
    final = [r for r in checkpoints.read_metrics(run) if "eval_error_by_position" in r][
        -1
    ]
    errors = ", ".join(
        f"{final['eval_error_by_position'][k]:.4f}" for k in ONE_D_POSITIONS
    )
    return (
        f"| `{run.name}` | {task_text} | lr {config['lr']} {config['lr_schedule']}, "
        f"warm-up {config['warmup_steps']} | {meta['steps_done']} | "
        f"{meta['wall_time_s'] / 60:.0f} min | {errors} | `{meta['git_commit'][:7]}` |"
    )


def sparse_window(record: dict, config: dict) -> float | None:
    """Mean of a sparse run's evaluation error over k = s+1 .. d-1 (where the lasso
    beats least squares)."""
    task = config["task"]
    if task["name"] != "sparse_linear" or "eval_error_by_position" not in record:
        return None
    by_k = record["eval_error_by_position"][task["k"] + 1 : config["n_dims"]]
    return sum(by_k) / len(by_k) if by_k else None


def sweep_command(run: Path, meta: dict) -> str:
    """The command that reruns a run: a sweep record's own config (its header's "Run:"
    line), else the run's command.

    A sweep record's meta.json keeps the command it first ran under, whose config may
    since have been renamed."""
    config = ROOT / "configs" / "sweep" / f"{run.name}.toml"
    if run.parent.name == "sweep" and config.is_file():
        for line in config.read_text().splitlines():
            if line.startswith("# Run:"):
                return line.removeprefix("# Run:").strip()
    return meta["command"]


def sweep_row(run: Path) -> tuple[str, list[tuple[int, float]]]:
    """One row of the sweep table and the run's window curve ``[(step, window error),
    ...]``."""
    meta = checkpoints.load_meta(run)
    config, model, task = (
        meta["config"],
        meta["config"]["model"],
        meta["config"]["task"],
    )
    records = checkpoints.read_metrics(run)
    curve = [
        (r["step"], w) for r in records if (w := sparse_window(r, config)) is not None
    ]
    rates = [r["steps_per_s"] for r in records if "steps_per_s" in r]
    if task["name"] == "mixture":
        task_text = " + ".join(
            c["name"]
            + (f" (k = {c['k']})" if "k" in c else "")
            + (f" (label scale {c['scale']})" if "scale" in c else "")
            for c in task["components"]
        )
        task_text += f", weights {task['weights']}"
    else:
        task_text = task["name"] + (f", k = {task['k']}" if "k" in task else "")
    schedule = config["lr_schedule"] + (
        f" (decay over the last {config['decay_fraction']:.0%})"
        if config["lr_schedule"] == "wsd"
        else ""
    )
    setting = (
        f"{model['n_layers']} layers, width {model['width']}, {model['n_heads']} "
        f"heads, {model['token_format']} tokens; {task_text}; d = {config['n_dims']}, "
        f"{config['n_points']} points, batch {config['batch_size']}, lr {config['lr']} "
        f"{schedule}, warm-up {config['warmup_steps']}"
        + (
            f"; warm start from `{config['init_from']}`"
            if config.get("init_from")
            else ""
        )
    )
    marks = [
        f"{step // 1000}k: {w:.3f}"
        for step, w in curve
        if step % 4000 == 0 or step == curve[-1][0]
    ]
    result = (
        ", ".join(marks)
        if marks
        else (
            f"evaluated in training on {task['name']} prompts only; on sparse "
            "prompts see `selection_bar.md`"
        )
    )
    speed = f"{sorted(rates)[len(rates) // 2]:.1f}" if rates else "-"
    # A sweep run kept in benchmarks/sweep/ is never live: one that did not finish was
    # stopped (or killed) early. A run in checkpoints/in_progress/ is paused, to be
    # resumed in a later session.
    status = (
        "finished"
        if meta["status"] == "finished"
        else "stopped early"
        if run.parent.name == "sweep"
        else "paused"
        if run.parent.name == checkpoints.IN_PROGRESS
        else meta["status"]
    )
    row = (
        f"| `{run.name}` | {setting} | {meta['steps_done']} of {meta['steps']} "
        f"({status}) | {meta['wall_time_s'] / 60:.0f} min, {speed} steps/s | {result} "
        f"| `{sweep_command(run, meta)}` |"
    )
    return row, curve


def sweep_figure(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, curve in curves.items():
        if curve:
            axes.plot(
                [s for s, _ in curve], [w for _, w in curve], marker=".", label=name
            )
    axes.axhline(
        0.375,
        color="black",
        linestyle="--",
        linewidth=1,
        label="least squares (d = 8, k = 2): 0.375",
    )
    axes.axhline(
        0.21,
        color="gray",
        linestyle=":",
        linewidth=1,
        label="lasso, alpha = 1e-3: about 0.21",
    )
    axes.set(
        xlabel="training step",
        ylabel="window error, k = s+1 .. d-1",
        title="Sparse regression sweep: evaluation error in the window",
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def first_step_below(records: list[dict], threshold: float) -> str:
    """The first logged step whose training normalised error is below ``threshold`` (the
    end of a plateau)."""
    for record in records:
        if record.get("train_normalized_error", 1.0) < threshold:
            return str(record["step"])
    return f"never (in {records[-1]['step']} steps)"


def summarise(run: Path) -> str:
    meta = checkpoints.load_meta(run)
    config = meta["config"]
    records = checkpoints.read_metrics(run)
    final = meta["final_metrics"]
    model = config["model"]
    d, n_points = config["n_dims"], config["n_points"]
    if model["name"] == "gpt":
        by_k = final["eval_error_by_position"]
        shape = (
            f"GPT {model['n_layers']} layers, width {model['width']}, "
            f"{model['n_heads']} heads, {model['token_format']} tokens"
        )
        result = (
            f"error at k = d: {by_k[d]:.3f}, at k = 2d: "
            f"{by_k[min(2 * d, n_points - 1)]:.3f}; training error first below 0.9 at "
            f"step {first_step_below(records, 0.9)}"
        )
    else:
        n_context = n_points - 1
        trained = checkpoints.load_model(run)
        product = trained.product.double()
        gamma_inverse = (
            n_context / (n_context + d + 1) * torch.eye(d, dtype=torch.float64)
        )
        relative = float(
            torch.linalg.matrix_norm(product.detach() - gamma_inverse)
            / torch.linalg.matrix_norm(gamma_inverse)
        )
        # d (d + 1) / (N + d + 1), normalised by d
        minimum = (d + 1) / (n_context + d + 1)
        shape = f"{model['name']} (Zhang-Frei-Bartlett), sigma = {model.get('sigma')}"
        result = (
            f"relative error of u U vs Gamma^-1: {relative:.4f}; normalised loss "
            f"{final['eval_normalized_error']:.4f} (global minimum {minimum:.4f})"
        )
    return (
        f"| `{run.name}` | {shape}; d = {d}, {n_points} points, batch "
        f"{config['batch_size']}, lr {config['lr']} ({config['lr_schedule']}) | "
        f"{meta['steps_done']} | {meta['wall_time_s']:.0f} s on {meta['threads']} "
        f"thread(s), {meta['device']} | {result} | `{meta['git_commit'][:7]}` |"
    )


def main(paths: list[str]) -> None:
    runs = [
        Path(p) if Path(p).is_absolute() else ROOT / p for p in (paths or DEFAULT_RUNS)
    ]
    rows = [summarise(run) for run in runs]
    sweep_runs = sorted(
        {
            p
            for pattern in SWEEP_GLOBS
            for p in ROOT.glob(pattern)
            if (p / "meta.json").exists() and "_1d_" not in p.name
        }
    )
    one_d_runs = sorted(
        {
            p
            for pattern in ONE_D_GLOBS
            for p in ROOT.glob(pattern)
            if (p / "meta.json").exists()
        }
    )
    sweep = {run.name: sweep_row(run) for run in sweep_runs}
    sweep_figure(
        {name: curve for name, (_, curve) in sweep.items()},
        ROOT / "benchmarks" / "sweep_curves.png",
    )
    lines = [
        "# What learns on a laptop CPU",
        "",
        f"Summarised {datetime.date.today()} by `python benchmarks/laptop_settings.py` "
        "from the runs' own `meta.json`, `metrics.jsonl` and saved models. Errors are "
        "normalised (1 = the zero predictor).",
        "",
        "| run | setting | steps | wall time | result | commit |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## The sparse-regression sweep (issue 13)",
        "",
        "Every run of the search for a laptop recipe that learns sparse regression in "
        "context (d = 8, 2 non-zero), failures included, one thread each, two runs "
        "sharing the 2 cores. The result column is the run's own evaluation error "
        "averaged over k = 3 .. 7 (least squares: 0.375; lasso: about 0.21) at every "
        "4k steps; the curves are in [`sweep_curves.png`](sweep_curves.png), and the "
        "bar on fresh prompts is [`selection_bar.md`](selection_bar.md). For a mixture "
        "the window error here is over all its held-out prompts; the from-scratch "
        "mixtures' sparse-prompt errors, their escapes from least squares or the steps "
        "at which they are censored, are in [`escape_steps.md`](escape_steps.md) "
        "(issue 28).",
        "",
        "| run | setting | steps | wall time, median speed | window error | command |",
        "|---|---|---|---|---|---|",
        *(row for row, _ in sweep.values()),
        "",
        "## The one-dimensional runs of chapter 5 (issue 14)",
        "",
        "The linear, sinusoid and linear + sinusoid models in d = 1 (3 layers, width "
        "64, 2 heads, paired tokens, 13 points, batch 256), first on a cosine schedule "
        "that decays to zero within 500-1500 steps (kept in `benchmarks/sweep/`), then "
        "on the recipe's schedule (constant 1e-3 after warm-up, linear decay over the "
        "last 20%) for 3000-10000 steps (the chapter's runs). The error column is each "
        "run's final evaluation, on its own 1024 prompts of its training distribution, "
        "at k = " + ", ".join(map(str, ONE_D_POSITIONS)) + ".",
        "",
        "| run | task | schedule | steps | wall time | error at k = "
        + ", ".join(map(str, ONE_D_POSITIONS))
        + " | commit |",
        "|---|---|---|---|---|---|---|",
        *(one_d_row(run) for run in one_d_runs),
    ]
    (ROOT / "benchmarks" / "laptop_settings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
