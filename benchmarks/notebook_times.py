"""Time the execution of every chapter notebook, as the book build runs them (fresh
kernel each).

Usage: ``.venv/bin/python benchmarks/notebook_times.py [NOTEBOOK ...]`` (``make
benchmarks`` runs all). Writes ``benchmarks/notebook_times.md`` with the machine, date
and commit, and prints the table. The budget is 5 minutes per notebook on a 2-core CPU.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 300


def time_notebook(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=1200,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main(paths: list[str]) -> None:
    notebooks = [Path(p) for p in paths] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = []
    for notebook in notebooks:
        seconds = time_notebook(notebook)
        verdict = "within budget" if seconds <= BUDGET_SECONDS else "OVER BUDGET"
        rows.append(f"| `{notebook.name}` | {seconds:.1f} | {verdict} |")
        print(rows[-1], flush=True)
    header = [
        "# Notebook execution times",
        "",
        f"Measured {datetime.date.today()} at commit `{commit}` by `python "
        f"benchmarks/notebook_times.py` on {platform.machine()} with {os.cpu_count()} "
        f"cores, Python {platform.python_version()}, torch {torch.__version__}.",
        "Each notebook runs in a fresh kernel, as the book build runs it. Budget: "
        f"{BUDGET_SECONDS} s each.",
        "",
        "| notebook | seconds | budget |",
        "|---|---|---|",
    ]
    (ROOT / "benchmarks" / "notebook_times.md").write_text(
        "\n".join(header + rows) + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
