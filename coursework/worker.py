"""Run one notebook in a fresh kernel and report what happened: the grader starts this inside the sandbox.

    python -m coursework.worker NOTEBOOK REPORT --timeout SECONDS

The notebook runs top to bottom, errors allowed, within ``SECONDS`` in all. ``REPORT`` (JSON) lists the indices of
the cells that ran, the first error of each cell (``ename: evalue``) and a note: ``""`` if every cell ran, else why
the run stopped. Outputs are capped (:data:`MAX_OUTPUT_CHARS` a cell), so that a cell that prints without end cannot
exhaust the memory; the executed notebook itself is not kept. For a submission everything here is untrusted: its
code runs in the same sandbox and may have rewritten the report, so the grader uses it for feedback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

MAX_OUTPUT_CHARS = 100_000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CappedClient(NotebookClient):
    """A notebook client that keeps at most :data:`MAX_OUTPUT_CHARS` characters of output per cell."""

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> Any:
        kept = self.__dict__.setdefault("_kept", {})
        if kept.get(cell_index, 0) > MAX_OUTPUT_CHARS:
            return None
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            kept[cell_index] = kept.get(cell_index, 0) + len(json.dumps(out))
            if kept[cell_index] > MAX_OUTPUT_CHARS:
                outs[-1] = nbformat.v4.new_output("stream", name="stderr", text="[output cut by the grader]\n")
        return out


def error_text(cell: dict) -> str | None:
    """``ename: evalue`` of the cell's first error output, without terminal colours; None if it raised nothing."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip().rstrip(":")
            return _ANSI.sub("", text)[:2000]
    return None


def run(nb: nbformat.NotebookNode, cwd: Path, timeout: float) -> dict:
    """Execute ``nb`` in place in a fresh kernel within ``timeout`` seconds; return the report (see the module)."""
    client = CappedClient(nb, timeout=max(1, int(timeout)), kernel_name="python3", allow_errors=True,
                          resources={"metadata": {"path": str(cwd)}})
    ran: list[int] = []
    note = ""
    deadline = time.monotonic() + timeout
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    note = f"time limit of {timeout:g} s reached before cell {index}"
                    break
                client.timeout = max(1, int(remaining))
                client.execute_cell(cell, index)
                ran.append(index)
    except CellTimeoutError:
        note = f"time limit of {timeout:g} s reached in cell {len(ran)}"
    except DeadKernelError:
        note = f"the kernel died in cell {len(ran)} (out of memory, or the code exited)"
    errors = {index: text for index in ran if (text := error_text(nb.cells[index]))}
    return {"ran": ran, "note": note, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursework.worker", description="Run a notebook; write a JSON report.")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--timeout", type=float, required=True, help="seconds for the whole notebook")
    args = parser.parse_args(argv)
    report = run(nbformat.read(args.notebook, as_version=4), args.notebook.parent, args.timeout)
    temporary = args.report.with_name(f".{args.report.name}.tmp")
    temporary.write_text(json.dumps(report))
    os.replace(temporary, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
