"""Summarise laptop-scale training runs: what each config learns on a CPU, read from the runs' own files.

Usage (after producing the runs with the commands in ``configs/README.md``):
``.venv/bin/python benchmarks/laptop_settings.py [RUN_DIR ...]``; writes ``benchmarks/laptop_settings.md``.
Every number comes from a run directory's ``meta.json`` / ``metrics.jsonl`` or from its saved model.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch

from icl_lib import checkpoints

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [
    "checkpoints/garg_dense_linear_laptop",
    "checkpoints/garg_dense_linear_laptop_interleaved",
    "checkpoints/lsa_zfb_laptop",
    "checkpoints/gpt_short_prompts_laptop",
]


def first_step_below(records: list[dict], threshold: float) -> str:
    """The first logged step whose training normalised error is below ``threshold`` (the end of a plateau)."""
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
        shape = f"GPT {model['n_layers']} layers, width {model['width']}, {model['n_heads']} heads, {model['token_format']} tokens"
        result = (
            f"error at k = d: {by_k[d]:.3f}, at k = 2d: {by_k[min(2 * d, n_points - 1)]:.3f}; "
            f"training error first below 0.9 at step {first_step_below(records, 0.9)}"
        )
    else:
        n_context = n_points - 1
        trained = checkpoints.load_model(run)
        product = trained.product.double()
        gamma_inverse = n_context / (n_context + d + 1) * torch.eye(d, dtype=torch.float64)
        relative = float(torch.linalg.matrix_norm(product.detach() - gamma_inverse) / torch.linalg.matrix_norm(gamma_inverse))
        minimum = (d + 1) / (n_context + d + 1)  # d (d + 1) / (N + d + 1), normalised by d
        shape = f"{model['name']} (Zhang-Frei-Bartlett), sigma = {model.get('sigma')}"
        result = (
            f"relative error of u U vs Gamma^-1: {relative:.4f}; normalised loss {final['eval_normalized_error']:.4f} "
            f"(global minimum {minimum:.4f})"
        )
    return (
        f"| `{run.name}` | {shape}; d = {d}, {n_points} points, batch {config['batch_size']}, lr {config['lr']} "
        f"({config['lr_schedule']}) | {meta['steps_done']} | {meta['wall_time_s']:.0f} s on {meta['threads']} thread(s), "
        f"{meta['device']} | {result} | `{meta['git_commit'][:7]}` |"
    )


def main(paths: list[str]) -> None:
    runs = [Path(p) if Path(p).is_absolute() else ROOT / p for p in (paths or DEFAULT_RUNS)]
    rows = [summarise(run) for run in runs]
    lines = [
        "# What learns on a laptop CPU",
        "",
        f"Summarised {datetime.date.today()} by `python benchmarks/laptop_settings.py` from the runs' own "
        "`meta.json`, `metrics.jsonl` and saved models. Errors are normalised (1 = the zero predictor).",
        "",
        "| run | setting | steps | wall time | result | commit |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    (ROOT / "benchmarks" / "laptop_settings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
