"""Grade a folder of submitted notebooks: each runs in a fresh kernel with a time limit, then a CSV of points.

    python -m coursework.grade SUBMISSIONS --out grades.csv [--timeout 600]

Every ``*.ipynb`` under ``SUBMISSIONS`` (any depth, e.g. ``SUBMISSIONS/alice/01_icl_as_a_learning_problem.ipynb``)
is matched to its chapter in ``notebooks/`` by file name, or else by the ids of its check cells. As nbgrader's
``autograde`` does, the check cells are first overwritten with the chapter's own (hidden tests included), so an
edited or deleted check cannot change a grade. The notebook then runs top to bottom in a fresh kernel in the
chapter folder, errors allowed, under a time limit for the whole notebook. An exercise earns its points when its
check cell ran without error; otherwise the feedback column holds the check's message (and the error of the
student's own code for that exercise, if it raised one). A notebook that cannot be read, times out or kills its
kernel gets its remaining exercises at zero with the reason; the grader itself carries on.

The CSV has one row per exercise and submission (``submission, notebook, exercise, points, max_points, feedback``)
and one ``TOTAL`` row per submission, whose feedback column gives the run time or the reason it stopped.
"""

from __future__ import annotations

import argparse
import copy
import csv
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from coursework import markup
from coursework.student_edition import repository_root

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELDS = ("submission", "notebook", "exercise", "points", "max_points", "feedback")


@dataclass
class Row:
    """One line of the grade table."""

    submission: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    feedback: str


@dataclass
class Chapter:
    """A source chapter: its converted notebook, its check cells by grade id, and its exercises."""

    path: Path
    nb: nbformat.NotebookNode
    checks: dict[str, dict]
    exercises: list[markup.Exercise]


def load_chapters(notebooks_dir: Path) -> dict[str, Chapter]:
    """The chapters of ``notebooks_dir`` (converted to nbgrader's markup in memory), by file name."""
    chapters = {}
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        nb, exercises = markup.convert(nbformat.read(path, as_version=4))
        checks = {markup.nbgrader_meta(c)["grade_id"]: c for c in nb.cells if markup.is_check(c)}
        chapters[path.name] = Chapter(path, nb, checks, exercises)
    return chapters


def _match(nb: nbformat.NotebookNode, name: str, chapters: dict[str, Chapter]) -> Chapter | None:
    if name in chapters:
        return chapters[name]
    ids = {markup.nbgrader_meta(c).get("grade_id") for c in nb.cells} - {None}
    best = max(chapters.values(), key=lambda ch: len(ids & set(ch.checks)), default=None)
    return best if best is not None and ids & set(best.checks) else None


def _error_text(cell: dict) -> str | None:
    """``ename: evalue`` of the cell's first error output, without terminal colours; None if it raised nothing."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip().rstrip(":")
            return _ANSI.sub("", text)
    return None


def _restore_checks(nb: nbformat.NotebookNode, chapter: Chapter) -> set[str]:
    """Overwrite the submission's check cells with the chapter's; return the grade ids that were present."""
    present = set()
    for index, cell in enumerate(nb.cells):
        grade_id = markup.nbgrader_meta(cell).get("grade_id")
        if grade_id in chapter.checks:
            original = copy.deepcopy(chapter.checks[grade_id])
            original["outputs"], original["execution_count"] = [], None
            nb.cells[index] = original
            present.add(grade_id)
    return present


def run_notebook(nb: nbformat.NotebookNode, cwd: Path, timeout: float) -> tuple[set[int], str]:
    """Execute ``nb`` in place in a fresh kernel, cell by cell, within ``timeout`` seconds in all.

    Returns the indices of the cells that ran and a note: ``""`` if every cell ran, else why it stopped.
    """
    client = NotebookClient(nb, timeout=max(1, int(timeout)), kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    ran: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return ran, f"time limit of {timeout:g} s reached before cell {index}"
                client.timeout = max(1, int(remaining))
                client.execute_cell(cell, index)
                ran.add(index)
    except CellTimeoutError:
        return ran, f"time limit of {timeout:g} s reached in cell {len(ran)}"
    except DeadKernelError:
        return ran, f"the kernel died in cell {len(ran)} (out of memory, or the code exited)"
    return ran, ""


def grade_notebook(path: Path, submission: str, chapters: dict[str, Chapter], timeout: float) -> list[Row]:
    """Grade one submitted notebook; never raises for a broken submission (its rows say what happened)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the student's, not the grader's, problem
        return [Row(submission, path.name, "TOTAL", 0, 0, f"could not read the notebook: {type(error).__name__}: {error}")]
    chapter = _match(nb, path.name, chapters)
    if chapter is None:
        return [Row(submission, path.name, "TOTAL", 0, 0, "not a chapter of the book (no matching name or check cells)")]
    present = _restore_checks(nb, chapter)
    start = time.perf_counter()
    try:
        ran, note = run_notebook(nb, chapter.path.parent, timeout)
    except Exception as error:  # noqa: BLE001 - e.g. a kernel that does not start
        ran, note = set(), f"could not run: {type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    by_id = {markup.nbgrader_meta(c).get("grade_id"): (i, c) for i, c in enumerate(nb.cells)}
    rows = []
    for exercise in chapter.exercises:
        if exercise.check_id is None:
            continue  # graded by hand: listed in the instructor's guide
        points, feedback = 0.0, ""
        if exercise.check_id not in present:
            feedback = "the check cell of this exercise was deleted from the notebook"
        else:
            index, cell = by_id[exercise.check_id]
            error = _error_text(cell)
            if index not in ran:
                feedback = f"not run: {note}"
            elif error is None:
                points = float(exercise.points)
            else:
                feedback = error
                own = [e for gid in exercise.solution_ids if gid in by_id and (e := _error_text(by_id[gid][1]))]
                if own and own[0].startswith("NotImplementedError"):
                    feedback = f"not answered yet (your code still raises NotImplementedError); the check said: {error}"
                elif own:
                    feedback = f"your code raised {own[0]}; then the check said: {error}"
                elif error.startswith("NameError"):
                    feedback += " (the answer was not computed: assign it in your code for this exercise)"
        rows.append(Row(submission, path.name, exercise.label, points, float(exercise.points), feedback))
    total = sum(r.points for r in rows)
    possible = sum(r.max_points for r in rows)
    rows.append(Row(submission, path.name, "TOTAL", total, possible, note or f"ran in {seconds:.0f} s"))
    return rows


def grade_folder(submissions: Path, *, timeout: float = 600.0, notebooks_dir: Path | None = None) -> list[Row]:
    """Grade every notebook under ``submissions``; the submission name is its path without ``.ipynb``."""
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise ValueError(f"submissions must be a folder of notebooks, got {str(submissions)!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    chapters = load_chapters(repository_root() / "notebooks" if notebooks_dir is None else notebooks_dir)
    rows: list[Row] = []
    paths = sorted(p for p in submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    for path in paths:
        name = path.relative_to(submissions).with_suffix("").as_posix()
        print(f"grading {name} ...", file=sys.stderr, flush=True)
        graded = grade_notebook(path, name, chapters, timeout)
        rows += graded
        for row in graded[:-1]:
            if row.points < row.max_points:
                print(f"  {row.exercise}: {row.points:g} / {row.max_points:g}: {row.feedback}", file=sys.stderr, flush=True)
        total = graded[-1]
        print(f"  {total.points:g} / {total.max_points:g} points ({total.feedback})", file=sys.stderr, flush=True)
    return rows


def write_csv(rows: list[Row], out: Path) -> None:
    """Write the grade table."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([row.submission, row.notebook, row.exercise, f"{row.points:g}", f"{row.max_points:g}", row.feedback])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursework.grade",
                                     description="Run submitted notebooks in fresh kernels and write a grade table (CSV).")
    parser.add_argument("submissions", type=Path, help="folder of submitted notebooks (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per notebook (default 600)")
    args = parser.parse_args(argv)
    try:
        rows = grade_folder(args.submissions, timeout=args.timeout)
    except ValueError as error:
        parser.error(str(error))
    write_csv(rows, args.out)
    print(f"wrote {args.out}: {sum(r.exercise == 'TOTAL' for r in rows)} notebook(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
