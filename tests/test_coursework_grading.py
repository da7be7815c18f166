"""The grader: chapter 1's solution notebook scores full marks, its untouched student notebook zero, a notebook with
one wrong answer loses exactly that exercise's points with a message that helps; and on a tiny synthetic chapter, a
time-out, a dead kernel, an unreadable file and an edited check cell are graded without crashing the grader.

Grading chapter 1 three times takes about a minute and a half on a laptop CPU (each run is a fresh kernel)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from coursework import grade, markup, student_edition

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "01_icl_as_a_learning_problem.ipynb"
WRONG_CELL, WRONG_EXERCISE = "ch1-30", "ch1-ex-step-size"


def _by_submission(rows: list[grade.Row]) -> dict[str, dict[str, grade.Row]]:
    table: dict[str, dict[str, grade.Row]] = {}
    for row in rows:
        table.setdefault(row.submission, {})[row.exercise] = row
    return table


@pytest.fixture(scope="module")
def chapter_one_grades(tmp_path_factory) -> dict[str, dict[str, grade.Row]]:
    """Grade three copies of chapter 1: the solutions, the untouched student edition, one wrong answer."""
    folder = tmp_path_factory.mktemp("submissions")
    source = nbformat.read(CHAPTER, as_version=4)
    (folder / "solution").mkdir()
    shutil.copy(CHAPTER, folder / "solution" / CHAPTER.name)
    (folder / "untouched").mkdir()
    nbformat.write(student_edition.student_notebook(source), folder / "untouched" / CHAPTER.name)
    wrong = nbformat.read(CHAPTER, as_version=4)
    cell = next(c for c in wrong.cells if c.get("id") == WRONG_CELL)
    normalised = "step_errors = ((preds_eta - targets) ** 2).mean(dim=0).numpy() / D"
    assert normalised in cell["source"], "the test edits this line of the solution"
    cell["source"] = cell["source"].replace(normalised, normalised[: -len(" / D")])  # forgets to normalise by d
    (folder / "wrong").mkdir()
    nbformat.write(wrong, folder / "wrong" / "renamed.ipynb")  # found by its check cells, not by its name
    rows = grade.grade_folder(folder, timeout=300)
    out = folder.parent / "grades.csv"
    grade.write_csv(rows, out)
    with open(out, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows) and list(written[0]) == list(grade.FIELDS)
    return _by_submission(rows)


def _autograded() -> list[markup.Exercise]:
    _, exercises = markup.convert(nbformat.read(CHAPTER, as_version=4))
    return [e for e in exercises if e.check_id]


def test_solutions_score_full_marks(chapter_one_grades):
    rows = chapter_one_grades["solution/01_icl_as_a_learning_problem"]
    exercises = _autograded()
    assert len(exercises) >= 4, "chapter 1 has at least four autograded exercises"
    for exercise in exercises:
        row = rows[exercise.label]
        assert row.points == row.max_points == exercise.points > 0, (exercise.label, row.feedback)
    total = rows["TOTAL"]
    assert total.points == total.max_points == sum(e.points for e in exercises)


def test_untouched_student_notebook_scores_zero(chapter_one_grades):
    rows = chapter_one_grades["untouched/01_icl_as_a_learning_problem"]
    assert rows["TOTAL"].points == 0 and rows["TOTAL"].max_points > 0
    assert rows["TOTAL"].feedback.startswith("ran in"), "the chapter itself ran to the end"
    for exercise in _autograded():
        assert rows[exercise.label].points == 0
        assert "not answered yet" in rows[exercise.label].feedback, rows[exercise.label].feedback


def test_one_wrong_answer_loses_exactly_its_points(chapter_one_grades):
    rows = chapter_one_grades["wrong/renamed"]
    full = chapter_one_grades["solution/01_icl_as_a_learning_problem"]
    for exercise in _autograded():
        expected = 0 if exercise.label == WRONG_EXERCISE else full[exercise.label].points
        assert rows[exercise.label].points == expected, (exercise.label, rows[exercise.label].feedback)
    assert rows["TOTAL"].points == full["TOTAL"].points - full[WRONG_EXERCISE].points
    feedback = rows[WRONG_EXERCISE].feedback
    assert "`step_errors`" in feedback and "constant factor of about 10" in feedback and "normalisation" in feedback, feedback


# --- a tiny synthetic chapter: the grader's robustness ---------------------------------------------------------------

def _tiny_chapter() -> nbformat.NotebookNode:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [code("D = 4")]
    for name, value in (("first", "D + 1"), ("second", "2 * D")):
        nb.cells += [
            md(f"```{{exercise}} {name}\n:label: tiny-ex-{name}\n\nStore it in `{name}`.\n```"),
            md(f"```{{solution-start}} tiny-ex-{name}\n:class: dropdown\n```"),
            code(f"{name} = {value}"),
            code(f"# Autograded check (1 point)\nfrom coursework import answers\n\n### BEGIN HIDDEN TESTS\n"
                 f"answers.close({name!r}, {name}, {value}, rtol=1e-12)\n### END HIDDEN TESTS"),
            md("```{solution-end}\n```"),
        ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"tiny-{i}"
    converted, _ = markup.convert(nb)
    return converted


@pytest.fixture(scope="module")
def tiny_grades(tmp_path_factory) -> dict[str, dict[str, grade.Row]]:
    chapters = tmp_path_factory.mktemp("chapters")
    source = _tiny_chapter()
    nbformat.write(source, chapters / "tiny.ipynb")
    folder = tmp_path_factory.mktemp("tiny_submissions")

    def submit(name: str, replace: dict[str, str]) -> None:
        nb = nbformat.read(chapters / "tiny.ipynb", as_version=4)
        for cell in nb.cells:
            for old, new in replace.items():
                if cell["source"] == old:
                    cell["source"] = new
        (folder / name).mkdir()
        nbformat.write(nb, folder / name / "tiny.ipynb")

    submit("correct", {})
    submit("slow", {"second = 2 * D": "import time\ntime.sleep(60)\nsecond = 2 * D"})
    submit("crash", {"second = 2 * D": "import os\nos._exit(1)"})
    check = next(c["source"] for c in source.cells if markup.is_check(c) and "first" in c["source"])
    submit("cheat", {"first = D + 1": "first = 0", check: "# Autograded check (1 point)\npass"})
    (folder / "broken").mkdir()
    (folder / "broken" / "tiny.ipynb").write_text("{ not a notebook")
    rows = grade.grade_folder(folder, timeout=10, notebooks_dir=chapters)
    return _by_submission(rows)


def test_tiny_correct(tiny_grades):
    assert tiny_grades["correct/tiny"]["TOTAL"].points == 2


def test_time_limit_per_notebook(tiny_grades):
    rows = tiny_grades["slow/tiny"]
    assert rows["tiny-ex-first"].points == 1, "what ran before the time limit keeps its points"
    assert rows["tiny-ex-second"].points == 0 and "time limit of 10 s" in rows["tiny-ex-second"].feedback
    assert "time limit" in rows["TOTAL"].feedback


def test_dead_kernel(tiny_grades):
    rows = tiny_grades["crash/tiny"]
    assert rows["tiny-ex-first"].points == 1 and rows["tiny-ex-second"].points == 0
    assert "kernel died" in rows["tiny-ex-second"].feedback


def test_edited_check_is_restored(tiny_grades):
    rows = tiny_grades["cheat/tiny"]
    assert rows["tiny-ex-first"].points == 0, "the chapter's own check cell must be run, not the student's"
    assert "too small" in rows["tiny-ex-first"].feedback


def test_unreadable_notebook(tiny_grades):
    assert "could not read the notebook" in tiny_grades["broken/tiny"]["TOTAL"].feedback


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="submissions must be a folder"):
        grade.grade_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="timeout must be"):
        grade.grade_folder(tmp_path, timeout=0)


def test_command_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "grades" / "grades.csv"
    assert grade.main([str(tmp_path / "empty"), "--out", str(out), "--timeout", "5"]) == 0
    assert out.read_text().splitlines() == [",".join(grade.FIELDS)]
    assert "0 notebook(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "missing"), "--out", str(out)])
    assert "submissions must be a folder" in capsys.readouterr().err
