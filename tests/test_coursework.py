"""The coursework tooling: the answer checks, the markup conversion, the student edition
(no solution survives) and the student book, and the transport of answers as plain data.
The grader's tests are in test_coursework_grading.py (end to end on chapter 1) and
test_coursework_attacks.py (a hostile student)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import sympy as sp

from coursework import answers, markup, student_edition, transport

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TOC_CHAPTERS = [
    p for p in CHAPTERS if f"notebooks/{p.stem}" in (ROOT / "_toc.yml").read_text()
]  # the ones the book builds


def _message(check, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


# --- answers: every failure says what is wrong ----------------------------------------

EXPECTED = np.array([1.0, 2.0, 4.0, 8.0])


def test_close_accepts_within_tolerance():
    answers.close("x", EXPECTED * 1.04, EXPECTED, rtol=0.05)
    answers.close("x", [1.0, 2.0, 4.0, 8.0], EXPECTED, rtol=0)  # lists are numbers too
    answers.close("x", 0.5 + 1e-4, 0.5, rtol=0, atol=1e-3)


def test_close_names_sign_scale_and_offset():
    assert "wrong sign" in _message(answers.close, "x", -EXPECTED, EXPECTED, rtol=0.05)
    scaled = _message(answers.close, "x", 10 * EXPECTED, EXPECTED, rtol=0.05)
    assert "constant factor of about 10" in scaled and "normalisation" in scaled
    assert "constant offset of about +0.5" in _message(
        answers.close, "x", EXPECTED + 0.5, EXPECTED, rtol=0.01
    )


def test_close_says_where_and_which_way():
    answer = EXPECTED.copy()
    answer[2] = 5.0  # 25% too large at index 2 only
    message = _message(answers.close, "x", answer, EXPECTED, rtol=0.05)
    assert (
        "too large at 1 of 4 entries, worst at index 2" in message
        and "25.0%" in message
    )
    assert "too small" in _message(answers.close, "y", 0.5, 1.0, rtol=0.1)
    assert (
        str(EXPECTED[2]) not in message.split("index 2")[1]
    ), "the expected value must not be given away"


def test_shape_messages():
    assert "has shape (3,), expected (4,)" in _message(
        answers.close, "x", EXPECTED[:3], EXPECTED, rtol=0.1
    )
    assert "squeeze" in _message(answers.shape, "x", EXPECTED[:, None], (4,))
    assert "another layout" in _message(answers.shape, "x", np.zeros((2, 2)), (4,))
    assert "is None" in _message(answers.shape, "x", None, (4,))
    assert "should hold numbers" in _message(answers.shape, "x", "four", (4,))
    assert "non-finite" in _message(answers.shape, "x", [1.0, np.nan, 1.0, 1.0], (4,))


def test_shape_accepts_tensors():
    torch = pytest.importorskip("torch")
    assert answers.shape("x", torch.ones(2, 3), (2, 3)).shape == (2, 3)


def test_within_equal_expression():
    answers.within("b", 0.5, 0.1, 1.2, "a step size of the grid")
    assert "too large: a step size of the grid" in _message(
        answers.within, "b", 3.0, 0.1, 1.2, "a step size of the grid"
    )
    answers.equal("m", 3, 3)
    assert "too small" in _message(answers.equal, "m", 2, 3)
    n, m = sp.symbols("N M", positive=True)
    # the symbol's name does not matter
    answers.expression("e", 12 / (m + 4), 12 / (n + 4))
    # as the grader sends it: values at N = 1..10
    sent = transport.decode(transport.encode(12 / (m + 4)))
    assert isinstance(sent, transport.Sampled)
    answers.expression("e", sent, 12 / (n + 4))
    assert "too large" in _message(
        answers.expression,
        "e",
        transport.decode(transport.encode(12 / (m + 3))),
        12 / (n + 4),
    )
    assert "sympy expression" in _message(answers.sympy_expression, "e", 0.5)
    assert "too large" in _message(answers.expression, "e", 12 / (m + 3), 12 / (n + 4))
    assert "one symbol" in _message(answers.expression, "e", n * m, 12 / (n + 4))


# --- transport: answers as plain data -------------------------------------------------


def _round_trip(value):
    return transport.decode(json.loads(json.dumps(transport.encode(value))))


def test_transport_round_trips_plain_data():
    torch = pytest.importorskip("torch")
    assert (
        _round_trip(None) is None
        and _round_trip(True) is True
        and _round_trip(3) == 3
        and _round_trip("a") == "a"
    )
    assert _round_trip(np.float32(0.5)) == 0.5 and isinstance(
        _round_trip(np.int64(7)), int
    )
    np.testing.assert_array_equal(
        _round_trip(np.arange(6.0).reshape(2, 3)), np.arange(6.0).reshape(2, 3)
    )
    np.testing.assert_array_equal(_round_trip(torch.ones(2, 2)), np.ones((2, 2)))
    np.testing.assert_array_equal(_round_trip([1, 2, 3]), [1, 2, 3])
    assert np.isnan(_round_trip(float("nan")))
    assert _round_trip(np.zeros(0)).shape == (0,)


def test_transport_sends_no_object():
    class Evil:
        def __repr__(self):
            raise RuntimeError("no")

        def __float__(self):
            return 1.0

    for value in (
        {"a": 1},
        Evil(),
        [1, "a"],
        [[1, 2], [3]],
        1j,
        np.zeros(transport.MAX_ENTRIES + 1),
    ):
        assert isinstance(_round_trip(value), transport.Unreadable), value
    assert "should hold numbers, got a dict" in _message(
        answers.shape, "x", _round_trip({"a": 1}), ()
    )
    assert "should be an integer, got a dict" in _message(
        answers.equal, "x", _round_trip({"a": 1}), 3
    )
    for forged in (
        {"type": "array", "shape": [2], "values": [1.0]},
        {"type": "array", "shape": [1], "values": ["1"]},
        {"type": "int", "value": True},
        {"type": "pickle", "value": "gASV"},
        [],
        "eval('1')",
    ):
        assert isinstance(transport.decode(forged), transport.Unreadable), forged


def test_transport_load_reads_only_plain_files(tmp_path):
    (tmp_path / "secret.txt").write_text('{"x": {"type": "int", "value": 1}}')
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / "link.json").symlink_to(tmp_path / "secret.txt")
    assert (
        transport.load(folder / "link.json", folder, ("x",)) is None
    ), "a link is never followed"
    (folder / "bad.json").write_text("{ not json")
    assert isinstance(
        transport.decode(transport.load(folder / "bad.json", folder, ("x",))["x"]),
        transport.Unreadable,
    )
    (folder / "good.json").write_text(
        '{"x": {"type": "int", "value": 1}, "other": {"type": "int", "value": 2}}'
    )
    assert transport.load(folder / "good.json", folder, ("x",)) == {
        "x": {"type": "int", "value": 1}
    }


# --- markup ---------------------------------------------------------------------------


def _exercise_notebook() -> nbformat.NotebookNode:
    """A chapter in the authors' markup: one autograded exercise and one text-only
    exercise in a combined cell."""
    nb = nbformat.v4.new_notebook()
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb.cells = [
        code("import numpy as np\nD = 3"),
        md(
            "```{exercise} Mean\n:label: chX-ex-mean\n\nStore the mean of 1..D in "
            "`mean_answer`.\n```"
        ),
        md("```{solution-start} chX-ex-mean\n:class: dropdown\n```"),
        md("The mean of 1..D is (D + 1) / 2."),
        code("mean_answer = np.arange(1, D + 1).mean()"),
        code(
            "# Autograded check (3 points): mean_answer\nfrom coursework import "
            'answers\n\nanswers.shape("mean_answer", mean_answer, ())\n'
            '### BEGIN HIDDEN TESTS\nanswers.close("mean_answer", mean_answer, (D + 1) '
            "/ 2, rtol=1e-12)\n### END HIDDEN TESTS"
        ),
        md("Averages are linear.\n\n```{solution-end}\n```"),
        md(
            "```{exercise} Why\n:label: chX-ex-why\n\nExplain.\n```\n\n```{solution} "
            "chX-ex-why\n:class: dropdown\n\nBecause it is.\n```"
        ),
    ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    return nb


def test_convert_marks_cells_and_splits_directives():
    converted, exercises = markup.convert(_exercise_notebook())
    assert [(e.label, e.check_id, e.points, e.answers) for e in exercises] == [
        ("chX-ex-mean", "chX-ex-mean-check", 3, ("mean_answer",)),
        ("chX-ex-why", None, 0, ()),
    ]
    kinds = [
        (
            c["cell_type"],
            markup.nbgrader_meta(c).get("grade_id"),
            markup.nbgrader_meta(c).get("solution"),
            markup.nbgrader_meta(c).get("grade"),
        )
        for c in converted.cells
    ]
    assert kinds == [
        ("code", None, None, None),
        ("markdown", "chX-ex-mean-statement", False, False),
        ("markdown", None, None, None),  # solution-start
        ("markdown", "chX-ex-mean-solution-1", True, True),
        ("code", "chX-ex-mean-solution-2", True, False),
        ("code", "chX-ex-mean-check", False, True),
        # "Averages are linear.", split from solution-end
        ("markdown", "chX-ex-mean-solution-3", True, True),
        ("markdown", None, None, None),  # solution-end
        ("markdown", "chX-ex-why-statement", False, False),
        # the {solution} block, split from its exercise
        ("markdown", "chX-ex-why-solution-1", True, True),
    ]
    assert markup.nbgrader_meta(converted.cells[5])["points"] == 3
    assert len({c["id"] for c in converted.cells}) == len(
        converted.cells
    ), "cell ids must stay unique"
    nbformat.validate(converted)
    again, _ = markup.convert(converted)
    assert again == converted, "convert must be idempotent"


def test_convert_rejects_broken_markup():
    nb = _exercise_notebook()
    del nb.cells[6]  # no solution-end
    with pytest.raises(ValueError, match="starts inside the solution of chX-ex-mean"):
        markup.convert(nb)
    nb = _exercise_notebook()
    nb.cells[2]["source"] = "```{solution-start} chX-ex-other\n:class: dropdown\n```"
    with pytest.raises(ValueError, match="does not follow its exercise"):
        markup.convert(nb)
    for header in (
        "# Autograded check (3 points)",
        "# Autograded check (3 points): mean-answer",
    ):
        nb = _exercise_notebook()
        nb.cells[5]["source"] = nb.cells[5]["source"].replace(
            "# Autograded check (3 points): mean_answer", header
        )
        with pytest.raises(ValueError, match="must name its answers"):
            markup.convert(nb)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapters_are_stored_in_nbgrader_markup(path):
    nb = nbformat.read(path, as_version=4)
    if not any(markup.nbgrader_meta(c) for c in nb.cells):
        pytest.skip(
            f"{path.name} is not converted yet: python -m coursework.markup "
            f"notebooks/{path.name}"
        )
    converted, exercises = markup.convert(nb)
    assert converted == nb, (
        f"run python -m coursework.markup notebooks/{path.name} (its markup is out of "
        "date)"
    )
    assert exercises, "every chapter has exercises"
    ids = [
        markup.nbgrader_meta(c)["grade_id"] for c in nb.cells if markup.nbgrader_meta(c)
    ]
    assert len(ids) == len(set(ids)), "grade ids must be unique"


# --- the student edition --------------------------------------------------------------


def _solution_lines(nb: nbformat.NotebookNode) -> set[str]:
    """The lines of the solutions and hidden tests that appear nowhere else in the
    chapter (the secrets)."""
    converted, _ = markup.convert(nb)
    secret, public = set(), set()
    for cell in converted.cells:
        meta = markup.nbgrader_meta(cell)
        lines = [line.strip() for line in cell["source"].split("\n")]
        if meta.get("solution"):
            secret.update(lines)
        elif markup.is_check(cell):
            hidden = cell["source"].split(student_edition.BEGIN_HIDDEN)[1:]
            secret.update(
                line.strip()
                for block in hidden
                for line in block.split(student_edition.END_HIDDEN)[0].split("\n")
            )
            public.update(
                line.strip()
                for line in cell["source"]
                .split(student_edition.BEGIN_HIDDEN)[0]
                .split("\n")
            )
        else:
            public.update(lines)
    return {
        line
        for line in secret - public
        if len(line) > 3 and line not in {"```", ":class: dropdown"}
    }


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_solution_survives_in_the_student_notebook(path):
    nb = nbformat.read(path, as_version=4)
    student = student_edition.student_notebook(nb)
    text = "\n".join(cell["source"] for cell in student.cells)
    student_lines = {line.strip() for line in text.split("\n")}
    secrets = _solution_lines(nb)
    leaked = sorted(secrets & student_lines)
    assert (
        not leaked
    ), f"solution lines left in the student edition of {path.name}: {leaked[:5]}"
    assert "{solution" not in text, "no solution directive may remain"
    assert student_edition.BEGIN_HIDDEN not in text and "### BEGIN SOLUTION" not in text
    converted, exercises = markup.convert(nb)
    n_code = sum(
        1
        for c in converted.cells
        if c["cell_type"] == "code" and markup.nbgrader_meta(c).get("solution")
    )
    assert (
        text.count(student_edition.CODE_STUB) == n_code
    ), "every solution code cell becomes one stub"
    assert all(
        c["cell_type"] != "code" or not c["outputs"] for c in student.cells
    ), "outputs are cleared"
    # the chapter itself is untouched: every cell that is not part of a solution is
    # still there, unchanged
    kept = [
        c["source"]
        for c in converted.cells
        if not markup.nbgrader_meta(c).get("solution")
        and not markup.nbgrader_meta(c).get("grade")
        and not markup.is_solution_start(c)
        and not markup.is_solution_end(c)
    ]
    student_sources = {c["source"] for c in student.cells}
    assert all(source in student_sources for source in kept)


def test_student_notebook_of_the_synthetic_chapter():
    student = student_edition.student_notebook(_exercise_notebook())
    sources = [c["source"] for c in student.cells]
    assert (
        sources[2] == student_edition.TEXT_STUB
        and sources[3] == student_edition.CODE_STUB
    )
    assert "### BEGIN HIDDEN TESTS" not in sources[4] and sources[4].endswith(
        'answers.shape("mean_answer", mean_answer, ())'
    )
    assert "Averages are linear." not in "\n".join(
        sources
    ) and "Because it is." not in "\n".join(sources)
    assert student.cells[3]["metadata"]["tags"] == ["raises-exception", "remove-output"]
    assert student.cells[4]["metadata"]["tags"] == ["raises-exception", "remove-output"]


def test_student_tree(tmp_path):
    out = tmp_path / "student"
    written = student_edition.write_student_edition(out)
    assert [p.name for p in written] == [p.name for p in CHAPTERS]
    toc = (out / "_toc.yml").read_text()
    assert all(f"notebooks/{p.stem}" in toc for p in TOC_CHAPTERS)
    assert "(student edition)" in (out / "_config.yml").read_text()
    assert (out / "book" / "references.bib").exists()
    with pytest.raises(ValueError, match="out must be a new folder"):
        student_edition.write_student_edition(ROOT)


def test_student_book_builds_without_solutions(tmp_path):
    """The student book builds strictly (here without executing the chapters) and shows
    no solution dropdown."""
    out = tmp_path / "student"
    student_edition.write_student_edition(out)
    student_edition.build(out, execute=False)
    pages = [
        (out / "_build" / "html" / "notebooks" / f"{p.stem}.html").read_text()
        for p in TOC_CHAPTERS
    ]
    for page in pages:
        assert 'class="exercise' in page, "the exercises are shown"
        assert 'class="solution' not in page, "no solution dropdown in the student book"


# --- nbgrader: the markup is nbgrader's, and its own preprocessors agree with the
# --- student edition ------------------------------------------------------------------


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_nbgrader_agrees(path):
    preprocessors = pytest.importorskip(
        "nbgrader.preprocessors", reason="nbgrader is in the grading extra"
    )
    converted, _ = markup.convert(nbformat.read(path, as_version=4))
    resources = {"language": "python"}
    checked, _ = preprocessors.CheckCellMetadata().preprocess(
        copy.deepcopy(converted), copy.deepcopy(resources)
    )
    cleared, _ = preprocessors.ClearSolutions(enforce_metadata=True).preprocess(
        checked, copy.deepcopy(resources)
    )
    cleared, _ = preprocessors.ClearHiddenTests(enforce_metadata=True).preprocess(
        cleared, copy.deepcopy(resources)
    )
    theirs = [
        c["source"].rstrip("\n")
        for c in cleared.cells
        if not markup.is_solution_start(c) and not markup.is_solution_end(c)
    ]
    ours = [
        c["source"].rstrip("\n")
        for c in student_edition.student_notebook(converted).cells
    ]
    assert ours == theirs


def test_student_edition_command_line(tmp_path, capsys):
    assert student_edition.main(["--out", str(tmp_path / "student")]) == 0
    printed = capsys.readouterr().out
    assert all(f"{p.name}" in printed for p in CHAPTERS)
    assert sorted(p.name for p in (tmp_path / "student" / "notebooks").iterdir()) == [
        p.name for p in CHAPTERS
    ]
