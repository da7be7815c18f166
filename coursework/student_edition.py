"""The student edition: chapter notebooks without solutions, and a student build of the book.

    python -m coursework.student_edition --out _build/student            # notebooks and book sources
    python -m coursework.student_edition --out _build/student --build    # ... and the HTML in OUT/_build/html

From every chapter in ``notebooks/`` (converted to nbgrader's markup in memory by :func:`coursework.markup.convert`,
so a chapter whose exercises are not converted yet loses its solutions too) it writes a student notebook in which,
as nbgrader's ``generate_assignment`` does:

* each solution code cell is replaced by the stub ``# YOUR CODE HERE`` / ``raise NotImplementedError()``;
* each solution markdown cell (the solution's text) is replaced by ``YOUR ANSWER HERE``;
* the hidden part of each check cell (between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``) is removed;
* outputs are cleared;

and, for the book, the ``{solution-start}``/``{solution-end}`` cells are dropped (no empty dropdowns) and the stub and
check cells carry the tags ``raises-exception`` and ``remove-output``, so the student build executes every chapter,
figures included, fails only on an error anywhere else, and shows no traceback of an unsolved exercise. The student book has its own ``_config.yml`` (the book's, with the title
marked "student edition") and ``_toc.yml`` (the book's).
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from coursework import markup

CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"


def repository_root() -> Path:
    """The checkout that holds ``notebooks/``, ``book/``, ``_config.yml`` and ``_toc.yml``."""
    return Path(__file__).resolve().parent.parent


def _remove_region(source: str, begin: str, end: str, stub: str | None) -> tuple[str, bool]:
    """Remove the lines from ``begin`` to ``end`` (inclusive), putting ``stub`` (indented like ``begin``) there."""
    out, inside, found = [], False, False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r} in a cell")
            inside, found = True, True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out += [indent + s for s in stub.split("\n")]
        elif end in line:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r} in a cell")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r} in a cell")
    return "\n".join(out), found


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a chapter notebook (a new notebook; ``nb`` is not changed)."""
    converted, _ = markup.convert(nb)
    cells = []
    for cell in converted.cells:
        if markup.is_solution_start(cell) or markup.is_solution_end(cell):
            continue
        cell = copy.deepcopy(cell)
        meta = markup.nbgrader_meta(cell)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        if meta.get("solution"):
            stub = CODE_STUB if cell["cell_type"] == "code" else TEXT_STUB
            source, replaced = _remove_region(cell["source"], BEGIN_SOLUTION, END_SOLUTION, stub)
            cell["source"] = source if replaced else stub
        if markup.is_check(cell):
            cell["source"], _ = _remove_region(cell["source"], BEGIN_HIDDEN, END_HIDDEN, None)
            cell["source"] = cell["source"].rstrip("\n")
        if cell["cell_type"] == "code" and (meta.get("solution") or meta.get("grade")):
            tags = cell["metadata"].setdefault("tags", [])
            for tag in ("raises-exception", "remove-output"):  # the student build runs the chapter; these raise until solved
                if tag not in tags:
                    tags.append(tag)
        cells.append(cell)
    converted.cells = cells
    return converted


def write_student_edition(out: Path, root: Path | None = None) -> list[Path]:
    """Write the student book's sources under ``out`` (emptied first); return the student notebooks written."""
    root = repository_root() if root is None else root
    out = Path(out)
    if out.resolve() == root.resolve() or root.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"out must be a new folder outside the sources, got {out}")
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    # Every page, the instructor's guide included: it holds no solution, and other pages link to it.
    shutil.copytree(root / "book", out / "book")
    written = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        student = student_notebook(nbformat.read(path, as_version=4))
        nbformat.validate(student)
        nbformat.write(student, out / "notebooks" / path.name)
        written.append(out / "notebooks" / path.name)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["title"] = f"{config.get('title', 'The book')} (student edition)"
    header = "# Generated by `python -m coursework.student_edition`: the student book, without solutions. Do not edit.\n"
    (out / "_config.yml").write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    (out / "_toc.yml").write_text(header + (root / "_toc.yml").read_text())
    return written


def build(out: Path, *, execute: bool = True, strict: bool = True) -> None:
    """Build the student book in ``out`` into ``out/_build/html`` with jupyter-book (``execute=False`` skips running)."""
    if not execute:
        config_path = Path(out) / "_config.yml"
        config = yaml.safe_load(config_path.read_text())
        config["execute"]["execute_notebooks"] = "off"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", str(out)] + (["-W", "-n", "--keep-going"] if strict else [])
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursework.student_edition",
                                     description="Write the student edition (notebooks without solutions) and build its book.")
    parser.add_argument("--out", type=Path, default=Path("_build/student"), help="folder to write (emptied first)")
    parser.add_argument("--build", action="store_true", help="also build the student book into OUT/_build/html")
    parser.add_argument("--no-execute", action="store_true", help="build without running the notebooks (no figures)")
    args = parser.parse_args(argv)
    written = write_student_edition(args.out)
    for path in written:
        print(f"wrote {path}")
    if args.build:
        build(args.out, execute=not args.no_execute)
        print(f"student book: {args.out / '_build' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
