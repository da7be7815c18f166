"""The book's exercise markup, converted mechanically into nbgrader's cell metadata (one
source of truth).

Authors write exercises as the chapters do (see CONTRIBUTING.md, section "Writing an
exercise"):

* a markdown cell with a ```` ```{exercise} Title ```` block and ``:label:
  chN-ex-NAME``;
* a markdown cell ```` ```{solution-start} chN-ex-NAME ```` (``:class: dropdown``), the
  solution's markdown and code cells, and a markdown cell ```` ```{solution-end} ````;
  or, for a text-only answer, a ```` ```{solution} ```` block;
* optionally, as the last code cell before ``{solution-end}``, an autograded check: a
  code cell whose first line is ``# Autograded check (N points): name, name``, naming
  the variables that hold the answers (the grader sends exactly these, as plain data, to
  the kernel where the checks run), which calls :mod:`coursework.answers` and may hide
  its comparison with the solution between ``### BEGIN HIDDEN TESTS`` and ``### END
  HIDDEN TESTS``.

:func:`convert` gives every such cell nbgrader's metadata (``metadata.nbgrader``, schema
version 3): the statement is locked, the solution's cells are solution cells (replaced
by a stub in the student edition), the check is a locked grade cell worth N points (a
markdown answer is, as nbgrader requires, a grade cell worth 0 points, for grading by
hand). It splits a cell that holds both a directive and other text, so that each
solution cell holds solution text only. It is idempotent: converting a converted
notebook changes nothing.

    python -m coursework.markup notebooks/03_*.ipynb
        # converts in place, prints what it marked
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

SCHEMA_VERSION = 3
CHECK_HEADER = re.compile(r"^# Autograded check \((\d+) points?\)(?::[ \t]*([^\n]*))?")
_EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n(?:[^\n]*\n)*?:label:\s*(\S+)")
_DIRECTIVE_START = re.compile(
    r"^```\{(solution-start|solution-end|solution)\}", re.MULTILINE
)
_SOLUTION_START = re.compile(r"^```\{solution-start\}\s*(\S+)")
_SOLUTION_END = re.compile(r"^```\{solution-end\}")
_SOLUTION_BLOCK = re.compile(r"^```\{solution\}\s*(\S+)")


@dataclass
class Exercise:
    """One exercise of a notebook: its label, solution cells, check cell (if
    autograded), points and answer names."""

    label: str
    solution_ids: list[str] = field(default_factory=list)
    check_id: str | None = None
    points: int = 0
    answers: tuple[str, ...] = ()


def is_solution_start(cell: dict) -> bool:
    """True for the markdown cell that opens a solution's dropdown
    (``{solution-start}``)."""
    return cell["cell_type"] == "markdown" and bool(
        _SOLUTION_START.match(cell["source"].lstrip())
    )


def is_solution_end(cell: dict) -> bool:
    """True for the markdown cell that closes a solution's dropdown
    (``{solution-end}``)."""
    return cell["cell_type"] == "markdown" and bool(
        _SOLUTION_END.match(cell["source"].lstrip())
    )


def nbgrader_meta(cell: dict) -> dict:
    """The cell's nbgrader metadata, ``{}`` if it has none."""
    return cell.get("metadata", {}).get("nbgrader", {})


def _split_at_directives(cell: dict) -> list[dict]:
    """Split a markdown cell before each solution directive, so that each piece holds
    one kind of content."""
    if cell["cell_type"] != "markdown":
        return [cell]
    source = cell["source"]
    starts = [m.start() for m in _DIRECTIVE_START.finditer(source)]
    cuts = sorted({0, *starts})
    pieces = [source[a:b].strip("\n") for a, b in zip(cuts, cuts[1:] + [len(source)])]
    pieces = [p for p in pieces if p.strip()]
    # a {solution-end} directive is two lines; text after it in the same cell belongs to
    # the next piece
    expanded: list[str] = []
    for piece in pieces:
        if _SOLUTION_END.match(piece):
            fence_end = piece.find("```", 3)
            head, tail = piece[: fence_end + 3], piece[fence_end + 3 :].strip("\n")
            expanded += [head] + ([tail] if tail.strip() else [])
        else:
            expanded.append(piece)
    if len(expanded) <= 1:
        return [cell]
    out = []
    for i, piece in enumerate(expanded):
        new = copy.deepcopy(cell)
        new["source"] = piece
        if i:
            new["id"] = f"{cell.get('id', 'cell')}-{i}"[:64]
        out.append(new)
    return out


def _mark(
    cell: dict,
    grade_id: str,
    *,
    solution: bool,
    grade: bool,
    locked: bool,
    points: int | None = None,
) -> None:
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
    }
    if points is not None:
        meta["points"] = points
    cell.setdefault("metadata", {})["nbgrader"] = meta


def _mark_solution(cell: dict, grade_id: str) -> None:
    # nbgrader wants a markdown answer to be a (manually graded) grade cell too: 0
    # points unless an instructor sets some
    if cell["cell_type"] == "markdown":
        _mark(cell, grade_id, solution=True, grade=True, locked=False, points=0)
    else:
        _mark(cell, grade_id, solution=True, grade=False, locked=False)


def answer_names(header: re.Match, where: str) -> tuple[str, ...]:
    """The answer names of a check cell's first line, matched by :data:`CHECK_HEADER`;
    ``ValueError`` if it has none."""
    names = tuple(
        name.strip() for name in (header.group(2) or "").split(",") if name.strip()
    )
    if not names or not all(name.isidentifier() for name in names):
        raise ValueError(
            f"{where}: the check's first line must name its answers, as in '# "
            "Autograded check (2 points): step_errors, best_step', got "
            f"{header.group(0)!r}"
        )
    return names


def is_check(cell: dict) -> bool:
    """True for an autograded check cell (a locked code grade cell that is not a
    solution)."""
    meta = nbgrader_meta(cell)
    return (
        cell["cell_type"] == "code"
        and bool(meta.get("grade"))
        and not meta.get("solution")
    )


def convert(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[Exercise]]:
    """Return a copy of ``nb`` with nbgrader metadata on every exercise's cells, and the
    exercises found.

    Raises ``ValueError`` (naming the cell) for markup it cannot read: a solution
    outside an exercise, a ``{solution-start}`` without ``{solution-end}``, a label that
    does not match its exercise, or a check cell that is not the last code cell of its
    solution.
    """
    nb = copy.deepcopy(nb)
    cells = [piece for cell in nb.cells for piece in _split_at_directives(cell)]
    exercises: list[Exercise] = []
    current: Exercise | None = None
    inside = False
    n_solution = 0
    for index, cell in enumerate(cells):
        where = f"cell {index} (id {cell.get('id')!r})"
        source = cell["source"]
        if cell["cell_type"] == "markdown" and (match := _EXERCISE.search(source)):
            if inside:
                raise ValueError(
                    f"{where}: an exercise starts inside the solution of "
                    f"{current.label}"
                )
            current = Exercise(label=match.group(1))
            exercises.append(current)
            n_solution = 0
            _mark(
                cell,
                f"{current.label}-statement",
                solution=False,
                grade=False,
                locked=True,
            )
        elif is_solution_start(cell):
            label = _SOLUTION_START.match(source.lstrip()).group(1)
            if current is None or label != current.label:
                raise ValueError(
                    f"{where}: solution-start for {label!r} does not follow its "
                    "exercise"
                )
            inside = True
            cell.get("metadata", {}).pop("nbgrader", None)
        elif is_solution_end(cell):
            if not inside:
                raise ValueError(f"{where}: solution-end without solution-start")
            inside = False
            cell.get("metadata", {}).pop("nbgrader", None)
        elif cell["cell_type"] == "markdown" and (
            match := _SOLUTION_BLOCK.match(source.lstrip())
        ):
            if current is None or match.group(1) != current.label:
                raise ValueError(
                    f"{where}: solution for {match.group(1)!r} does not follow its "
                    "exercise"
                )
            n_solution += 1
            grade_id = f"{current.label}-solution-{n_solution}"
            _mark_solution(cell, grade_id)
            current.solution_ids.append(grade_id)
        elif inside:
            if cell["cell_type"] == "code" and (check := CHECK_HEADER.match(source)):
                if current.check_id is not None:
                    raise ValueError(f"{where}: a second check cell in {current.label}")
                current.check_id, current.points = (
                    f"{current.label}-check",
                    int(check.group(1)),
                )
                current.answers = answer_names(check, where)
                _mark(
                    cell,
                    current.check_id,
                    solution=False,
                    grade=True,
                    locked=True,
                    points=current.points,
                )
            else:
                if current.check_id is not None and cell["cell_type"] == "code":
                    raise ValueError(
                        f"{where}: solution code after the check cell of "
                        f"{current.label}"
                    )
                n_solution += 1
                grade_id = f"{current.label}-solution-{n_solution}"
                _mark_solution(cell, grade_id)
                current.solution_ids.append(grade_id)
        elif nbgrader_meta(cell):
            # metadata left over from an earlier layout
            cell["metadata"].pop("nbgrader")
    if inside:
        raise ValueError(f"the solution of {current.label} has no solution-end")
    nb.cells = cells
    return nb, exercises


def main(argv: list[str] | None = None) -> int:
    """Convert notebooks in place and list their exercises; a file that cannot be
    converted ends it with one line."""
    parser = argparse.ArgumentParser(
        prog="python -m coursework.markup",
        description=(
            "Give the exercises of chapter notebooks nbgrader's metadata, in place."
        ),
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.notebooks:
        try:
            convert_file(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


def convert_file(path: Path) -> None:
    """Convert the notebook at ``path`` in place and print its exercises; ``ValueError``
    naming the file if it cannot."""
    try:
        nb = nbformat.read(path, as_version=4)
    # nbformat raises OSError, ValueError, TypeError, AttributeError, ...
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"{path}: cannot be read as a notebook ({type(error).__name__}: "
            f"{_one_line(error)})"
        ) from None
    try:
        converted, exercises = convert(nb)
        nbformat.validate(converted)
    except (ValueError, nbformat.ValidationError) as error:
        raise ValueError(f"{path}: {_one_line(error)}") from None
    changed = converted != nb
    if changed:
        try:
            nbformat.write(converted, path)
        except OSError as error:
            raise ValueError(
                f"{path}: cannot be written ({_one_line(error)})"
            ) from None
    print(f"{path}: {'converted' if changed else 'already converted'}")
    for ex in exercises:
        kind = (
            f"autograded, {ex.points} points, answers {', '.join(ex.answers)}"
            if ex.check_id
            else "graded by hand"
        )
        print(f"  {ex.label}: {len(ex.solution_ids)} solution cell(s), {kind}")


def _one_line(error: Exception) -> str:
    text = (
        error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    )
    return " ".join(text.split())[:300]


if __name__ == "__main__":
    raise SystemExit(main())
