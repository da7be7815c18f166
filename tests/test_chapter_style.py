"""The chapters read well online: code that fits the page, and figures with numbered
captions.

* No code line of a chapter is wider than 88 columns: the HTML book shows about 88
  characters of code before a line scrolls sideways, and the PDF cuts it off. The
  chapters are formatted with ``ruff format`` (``[tool.ruff]`` in pyproject.toml: 88
  columns, as is the Python code, tests/test_code_style.py); ruff leaves long comments,
  strings and docstrings alone, so this test reads the notebooks' JSON and needs no
  ruff.
* Every cell that shows a figure (``plotting.show`` or ``plt.show``) gives it a caption
  and a name in its metadata, ``"mystnb": {"figure": {"caption": "...", "name":
  "fig-chN-..."}}``; MyST-NB wraps the cell's image in a figure, which Sphinx numbers
  (``numfig``: "Fig. 2.1"), and the text cites it with ``{numref}`fig-chN-...```. Every
  such reference names a figure of its own chapter. A figure inside an exercise's
  solution has no caption: the solution is a box in the PDF, where a numbered figure (a
  float) cannot go.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDTH = 88

SHOWS_A_FIGURE = re.compile(r"\b(?:plotting\.show|plt\.show)\(")
NUMREF = re.compile(r"\{numref\}`(?:[^`<]*<)?([^`>]+)>?`")


def cells(path: Path) -> list[dict]:
    """The notebook's cells, each source as one string."""
    found = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in found:
        cell["source"] = (
            cell["source"]
            if isinstance(cell["source"], str)
            else "".join(cell["source"])
        )
    return found


def long_lines(path: Path) -> list[str]:
    """``cell id, line number: length`` for every code line of the notebook at ``path``
    wider than WIDTH."""
    found = []
    for index, cell in enumerate(cells(path)):
        if cell["cell_type"] != "code":
            continue
        for number, line in enumerate(cell["source"].split("\n"), start=1):
            if len(line) > WIDTH:
                found.append(
                    f"cell {index} (id {cell.get('id')!r}), line {number}: {len(line)} "
                    "columns"
                )
    return found


def test_there_are_six_chapters():
    assert len(CHAPTERS) == 6, [path.name for path in CHAPTERS]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem[:2])
def test_every_code_line_fits_88_columns(path):
    found = long_lines(path)
    assert not found, (
        f"{path.name}: {len(found)} code lines wider than {WIDTH} columns:\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem[:2])
def test_every_figure_has_a_numbered_caption_and_the_text_cites_only_real_figures(path):
    chapter = f"fig-ch{int(path.name[:2])}-"
    names, problems, in_solution = [], [], False
    for cell in cells(path):
        if cell["cell_type"] == "markdown" and "{solution-" in cell["source"]:
            in_solution = "{solution-start}" in cell["source"]
        figure = cell.get("metadata", {}).get("mystnb", {}).get("figure")
        if in_solution:
            # A solution is a box in the PDF, where a numbered figure (a float) cannot
            # go.
            if figure is not None:
                problems.append(
                    f"{cell.get('id')}: a figure inside a solution has no caption"
                )
        elif figure is not None:
            name, caption = figure.get("name", ""), figure.get("caption", "")
            names.append(name)
            if not name.startswith(chapter) or len(caption.split()) < 8:
                problems.append(
                    f"{cell.get('id')}: name {name!r} (should start {chapter!r}), "
                    f"caption {caption!r}"
                )
            if len(SHOWS_A_FIGURE.findall(cell["source"])) > 1:
                problems.append(
                    f"{cell.get('id')} shows two figures: MyST-NB would give both its "
                    "one name"
                )
        elif cell["cell_type"] == "code" and SHOWS_A_FIGURE.search(cell["source"]):
            problems.append(
                f"{cell.get('id')} shows a figure without mystnb.figure caption and "
                "name"
            )
    problems += [
        f"figure name {name!r} is used twice"
        for name in set(names)
        if names.count(name) > 1
    ]
    cited = {
        name
        for cell in cells(path)
        if cell["cell_type"] == "markdown"
        for name in NUMREF.findall(cell["source"])
    }
    problems += [
        f"{{numref}} cites {name!r}, which is no figure of this chapter"
        for name in sorted(cited - set(names))
        if name.startswith("fig-")
    ]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_the_check_finds_a_long_line(tmp_path):
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "id": "a",
                "source": ["x = 1\n", "y = " + "1 + " * 30 + "1"],
            },
            {"cell_type": "markdown", "id": "b", "source": "word " * 40},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "07_example.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    assert long_lines(path) == ["cell 0 (id 'a'), line 2: 125 columns"]
