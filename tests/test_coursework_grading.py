"""The grader end to end on chapter 1: its solution notebook scores full marks, its
untouched student notebook zero, a notebook with one wrong answer loses exactly that
exercise's points with a message that helps. Then the grader's arguments, its command
line and grading without a sandbox. The attacks are in test_coursework_attacks.py.

Grading chapter 1 three times takes about a minute and a half on a laptop CPU: three
student runs and one run of the chapter for the checks, each a fresh kernel."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from coursework import grade, markup, sandbox, student_edition

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "01_icl_as_a_learning_problem.ipynb"
WRONG_CELL, WRONG_EXERCISE = "ch1-30", "ch1-ex-step-size"


def _box() -> sandbox.Sandbox:
    """Bubblewrap where it runs; else no sandbox (the book's own notebooks need none),
    watching nothing."""
    if sandbox.bubblewrap_problem() is None:
        return sandbox.choose("bubblewrap")
    return sandbox.Sandbox("none", grade.repository_root())


def _by_submission(rows: list[grade.Row]) -> dict[str, dict[str, grade.Row]]:
    table: dict[str, dict[str, grade.Row]] = {}
    for row in rows:
        table.setdefault(row.submission, {})[row.exercise] = row
    return table


@pytest.fixture(scope="module")
def chapter_one_grades(tmp_path_factory) -> dict[str, dict[str, grade.Row]]:
    """Grade three copies of chapter 1: the solutions, the untouched student edition,
    one wrong answer."""
    folder = tmp_path_factory.mktemp("submissions")
    source = nbformat.read(CHAPTER, as_version=4)
    (folder / "solution").mkdir()
    shutil.copy(CHAPTER, folder / "solution" / CHAPTER.name)
    (folder / "untouched").mkdir()
    nbformat.write(
        student_edition.student_notebook(source), folder / "untouched" / CHAPTER.name
    )
    wrong = nbformat.read(CHAPTER, as_version=4)
    cell = next(c for c in wrong.cells if c.get("id") == WRONG_CELL)
    normalised = "step_errors = ((preds_eta - targets) ** 2).mean(dim=0).numpy() / D"
    assert normalised in cell["source"], "the test edits this line of the solution"
    # forgets to normalise by d
    cell["source"] = cell["source"].replace(normalised, normalised[: -len(" / D")])
    (folder / "wrong").mkdir()
    # found by its check cells, not by its name
    nbformat.write(wrong, folder / "wrong" / "renamed.ipynb")
    out = folder.parent / "grades.csv"
    rows = grade.grade_folder(folder, out, timeout=300, box=_box())
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
        assert row.points == row.max_points == exercise.points > 0, (
            exercise.label,
            row.feedback,
        )
    total = rows["TOTAL"]
    assert total.points == total.max_points == sum(e.points for e in exercises)


def test_untouched_student_notebook_scores_zero(chapter_one_grades):
    rows = chapter_one_grades["untouched/01_icl_as_a_learning_problem"]
    assert rows["TOTAL"].points == 0 and rows["TOTAL"].max_points > 0
    assert rows["TOTAL"].feedback.startswith(
        "ran in"
    ), "the chapter itself ran to the end"
    for exercise in _autograded():
        assert rows[exercise.label].points == 0
        assert "not answered yet" in rows[exercise.label].feedback, rows[
            exercise.label
        ].feedback


def test_one_wrong_answer_loses_exactly_its_points(chapter_one_grades):
    rows = chapter_one_grades["wrong/renamed"]
    full = chapter_one_grades["solution/01_icl_as_a_learning_problem"]
    for exercise in _autograded():
        expected = (
            0 if exercise.label == WRONG_EXERCISE else full[exercise.label].points
        )
        assert rows[exercise.label].points == expected, (
            exercise.label,
            rows[exercise.label].feedback,
        )
    assert rows["TOTAL"].points == full["TOTAL"].points - full[WRONG_EXERCISE].points
    feedback = rows[WRONG_EXERCISE].feedback
    assert (
        "`step_errors`" in feedback
        and "constant factor of about 10" in feedback
        and "normalisation" in feedback
    ), feedback


# --- arguments, command line, no sandbox ----------------------------------------------


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="submissions must be a folder"):
        grade.grade_folder(tmp_path / "missing", tmp_path / "grades.csv")
    with pytest.raises(ValueError, match="timeout must be"):
        grade.grade_folder(tmp_path, tmp_path / "grades.csv", timeout=0)
    with pytest.raises(ValueError, match="batch must be"):
        grade.grade_folder(tmp_path, tmp_path / "grades.csv", batch=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out must be a file the grader can write"):
        # found before any notebook runs
        grade.grade_folder(tmp_path, tmp_path / "file" / "grades.csv")
    (tmp_path / "other.csv").write_text("name,score\nalice,3\n")
    with pytest.raises(
        ValueError, match="out must be a grade table written by this grader"
    ):
        grade.grade_folder(tmp_path, tmp_path / "other.csv")
    with pytest.raises(ValueError, match="sandbox must be"):
        sandbox.choose("docker")


def test_command_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "grades" / "grades.csv"
    problem = sandbox.bubblewrap_problem()
    status = grade.main([str(tmp_path / "empty"), "--out", str(out), "--timeout", "5"])
    printed = capsys.readouterr()
    if problem is None:
        assert (
            status == 0
            and "sandbox: bubblewrap" in printed.err
            and "0 notebook(s)" in printed.out
        )
        assert out.read_text().splitlines() == [",".join(grade.FIELDS)]
    else:
        assert (
            status == 2
            and "no sandbox" in printed.err
            and "--sandbox none" in printed.err
        )
    assert (
        grade.main([str(tmp_path / "empty"), "--out", str(out), "--sandbox", "none"])
        == 0
    )
    warned = capsys.readouterr().err
    assert "WARNING: no sandbox" in warned and all(
        item in warned for item in sandbox.UNPROTECTED
    )
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "missing"), "--out", str(out), "--sandbox", "none"])
    assert "submissions must be a folder" in capsys.readouterr().err


def test_without_a_sandbox_a_changed_environment_stops_grading(tmp_path):
    """With no sandbox a .pth file written where a later kernel looks is not prevented,
    but found and reported."""
    from test_coursework_attacks import student, tiny_chapter

    chapters, submissions, site = (
        tmp_path / "chapters",
        tmp_path / "submissions",
        tmp_path / "site-packages",
    )
    for folder in (chapters, submissions / "a-honest", submissions / "b-pth", site):
        folder.mkdir(parents=True)
    nbformat.write(tiny_chapter(), chapters / "tiny.ipynb")
    nbformat.write(
        student(solve={"first": "xs.sum()", "second": "mean_error(xs) * D"}),
        submissions / "a-honest" / "tiny.ipynb",
    )
    nbformat.write(
        student(f"open({str(site / 'cheat.pth')!r}, 'w').write('import os')"),
        submissions / "b-pth" / "tiny.ipynb",
    )
    box = sandbox.Sandbox("none", grade.repository_root(), (site,))
    out = tmp_path / "grades.csv"
    with pytest.raises(
        grade.GradingError, match=r"b-pth/tiny changed 1 file\(s\) outside its folder"
    ):
        grade.grade_folder(
            submissions, out, timeout=60, notebooks_dir=chapters, box=box
        )
    assert (
        "a-honest/tiny,tiny.ipynb,TOTAL,2,2" in out.read_text()
    ), "what was graded before stays written"
