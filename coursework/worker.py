"""Run one notebook in a fresh kernel and report what happened: the grader starts this
inside the sandbox.

    python -m coursework.worker NOTEBOOK REPORT --timeout SECONDS [--limits]

The notebook runs top to bottom, errors allowed, within ``SECONDS`` in all. ``REPORT``
(JSON) lists the indices of the cells that ran, the first error of each cell (``ename:
evalue``) and a note: ``""`` if every cell ran, else why the run stopped. It exits with
:data:`GRADER_FAILURE_STATUS` when it failed before any code of the notebook ran (a bad
argument, a kernel that did not start): the grader then records no grade. Outputs are
capped (:data:`MAX_OUTPUT_CHARS` a cell), so that a cell that prints without end cannot
exhaust the memory; the executed notebook itself is not kept. ``--limits`` sets the
sandbox's process and file size limits (:func:`set_limits`). For a submission everything
here is untrusted: its code runs in the same sandbox and may have rewritten the report,
so the grader uses it for feedback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

MAX_OUTPUT_CHARS = 100_000
MAX_PROCESSES = 256  # processes (and threads) of the sandbox, with --limits
MAX_FILE_BYTES = 2**30  # the largest file a run may write, with --limits
GRADER_FAILURE_STATUS = (
    70  # the worker's exit status when it failed itself, not the notebook (EX_SOFTWARE)
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CappedClient(NotebookClient):
    """A notebook client that keeps at most :data:`MAX_OUTPUT_CHARS` characters of
    output per cell."""

    def output(
        self, outs: list, msg: dict, display_id: str | None, cell_index: int
    ) -> Any:
        kept = self.__dict__.setdefault("_kept", {})
        if kept.get(cell_index, 0) > MAX_OUTPUT_CHARS:
            return None
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            kept[cell_index] = kept.get(cell_index, 0) + len(json.dumps(out))
            if kept[cell_index] > MAX_OUTPUT_CHARS:
                outs[-1] = nbformat.v4.new_output(
                    "stream", name="stderr", text="[output cut by the grader]\n"
                )
        return out


def error_text(cell: dict) -> str | None:
    """``ename: evalue`` of the cell's first error output, without terminal colours;
    None if it raised nothing."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = (
                (f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
                .strip()
                .rstrip(":")
            )
            return _ANSI.sub("", text)[:2000]
    return None


def run(nb: nbformat.NotebookNode, cwd: Path, timeout: float) -> dict:
    """Execute ``nb`` in place in a fresh kernel within ``timeout`` seconds; return the
    report (see the module).

    ``GraderFailure`` if the kernel cannot start: no code of the notebook has run, so
    that is the grader's failure.
    """
    client = CappedClient(
        nb,
        timeout=max(1, int(timeout)),
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(cwd)}},
    )
    ran: list[int] = []
    note = ""
    deadline = time.monotonic() + timeout
    try:
        with _started(client):
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
    except GraderFailure:
        raise
    # the notebook's code ran and controls its kernel: its doing
    except Exception as error:  # noqa: BLE001
        note = (
            f"the run stopped in cell {len(ran)}: {type(error).__name__}: "
            f"{str(error)[:200]}"
        )
    errors = {index: text for index in ran if (text := error_text(nb.cells[index]))}
    return {"ran": ran, "note": note, "errors": errors}


class GraderFailure(RuntimeError):
    """The worker failed before any code of the notebook ran (the kernel did not start):
    not the notebook's doing."""


@contextlib.contextmanager
def _started(client: NotebookClient):
    """``client.setup_kernel()``, with a failure to start the kernel raised as
    :class:`GraderFailure`."""
    manager = client.setup_kernel()
    try:
        manager.__enter__()
    except Exception as error:  # noqa: BLE001 - nothing of the notebook ran yet
        raise GraderFailure(
            f"the kernel did not start: {type(error).__name__}: {error}"
        ) from error
    try:
        yield
    except BaseException:
        if not manager.__exit__(*sys.exc_info()):
            raise
    else:
        manager.__exit__(None, None, None)


def set_limits() -> None:
    """Limit this process and the kernel it starts: :data:`MAX_PROCESSES` processes,
    files of :data:`MAX_FILE_BYTES`.

    Set here, inside bubblewrap's user namespace, the process limit counts the sandbox's
    processes only (set before, it would count every process of the grader's user).
    Linux does not apply it to root: grade as an ordinary user.
    """
    for limit, value in (
        (resource.RLIMIT_NPROC, MAX_PROCESSES),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
    ):
        soft, hard = resource.getrlimit(limit)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coursework.worker",
        description="Run a notebook; write a JSON report.",
    )
    parser.add_argument("notebook", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument(
        "--timeout", type=float, required=True, help="seconds for the whole notebook"
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="set the sandbox's limits (processes, file size) before the kernel starts",
    )
    args = parser.parse_args(argv)
    if args.limits:
        set_limits()
    try:
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise GraderFailure(
                f"timeout must be a finite number of seconds > 0, got {args.timeout!r}"
            )
        report = run(
            nbformat.read(args.notebook, as_version=4),
            args.notebook.parent,
            args.timeout,
        )
    # the grader's own failure, said with its own exit status
    except GraderFailure as error:
        print(f"coursework.worker: the grader failed: {error}", file=sys.stderr)
        return GRADER_FAILURE_STATUS
    # after the notebook's code ran, a failure to write the report is its doing (a
    # folder in the report's place ...)
    temporary = args.report.with_name(f".{args.report.name}.tmp")
    temporary.write_text(json.dumps(report))
    os.replace(temporary, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
