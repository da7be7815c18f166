"""Batched lasso (icl_lib.baselines.lasso) against a per-prompt, per-prefix scikit-learn
loop.

Both solve the same problems (every prompt, every prefix k = 1 .. n-1, same alpha, no
intercept) in one run, side by side. Usage: ``.venv/bin/python
benchmarks/lasso_vs_sklearn.py``; writes ``benchmarks/lasso_vs_sklearn.md`` and prints
the table.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso

from icl_lib import baselines, samplers, tasks
from icl_lib.devices import make_generator

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # (prompts, d, n_points, non-zero coordinates, alpha)
    (100, 10, 21, 2, 0.01),
    (100, 20, 41, 2, 0.01),
]


def sklearn_lasso(xs: np.ndarray, ys: np.ndarray, alpha: float) -> np.ndarray:
    preds = np.zeros(ys.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b in range(xs.shape[0]):
            for k in range(1, xs.shape[1]):
                model = Lasso(
                    alpha=alpha, fit_intercept=False, tol=1e-10, max_iter=100_000
                )
                model.fit(xs[b, :k], ys[b, :k])
                preds[b, k] = xs[b, k] @ model.coef_
    return preds


def main() -> None:
    # a fair comparison with scikit-learn's single-threaded solver
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = []
    for prompts, d, n_points, nonzero, alpha in SETTINGS:
        generator = make_generator(0)
        xs = samplers.gaussian_xs(prompts, n_points, d, generator, dtype=torch.float64)
        ys = tasks.SparseLinear(k=nonzero).sample(xs, generator).ys
        start = time.perf_counter()
        ours = baselines.lasso(xs, ys, alpha=alpha).numpy()
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        reference = sklearn_lasso(xs.numpy(), ys.numpy(), alpha)
        reference_seconds = time.perf_counter() - start
        difference = float(np.abs(ours - reference).max())
        rows.append(
            f"| {prompts} x {n_points - 1} | {d} | {nonzero} | {alpha} | "
            f"{ours_seconds:.2f} | {reference_seconds:.2f} | "
            f"{reference_seconds / ours_seconds:.1f}x | {difference:.1e} |"
        )
        print(rows[-1], flush=True)
    header = [
        "# Batched lasso against scikit-learn",
        "",
        f"Measured {datetime.date.today()} at commit `{commit}` by `python "
        f"benchmarks/lasso_vs_sklearn.py` on {platform.machine()} with "
        f"{os.cpu_count()} cores (torch on 1 thread), torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}. Problems: every prompt and every prefix "
        "k = 1 .. n-1, sparse linear tasks, float64; scikit-learn "
        "`Lasso(fit_intercept=False, tol=1e-10)` fitted once per problem.",
        "",
        "| problems (prompts x prefixes) | d | non-zeros | alpha | icl_lib s | "
        "scikit-learn s | speed-up | max abs difference of predictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    (ROOT / "benchmarks" / "lasso_vs_sklearn.md").write_text(
        "\n".join(header + rows) + "\n"
    )


if __name__ == "__main__":
    main()
