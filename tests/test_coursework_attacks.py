"""The grader against a hostile student, on a tiny synthetic chapter (two exercises of 1
point; about a minute).

Every attack is a student notebook that solves the first exercise honestly and tries to
score the second one without solving it, to reach the instructor's files, or to change
the grade of the next submission. They are graded together, in one folder, in the order
of their names, so each attack is followed by another submission: every one must score 0
on the second exercise, the first exercise keeps its point unless the attack itself
breaks it, the instructor's files stay byte-identical, no process of theirs survives,
and the honest solution scores full marks. Needs bubblewrap (``apt-get install
bubblewrap``): without a sandbox these notebooks would really attack.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from coursework import answers, grade, markup, sandbox, student_edition, transport

ROOT = Path(__file__).resolve().parent.parent
TOKEN = (
    "coursework-attack-7f3a"  # in the command line of every process an attack starts
)
TIMEOUT = 20
# both 10.0 in the chapter's context
EXERCISES = (("first", "xs.sum()"), ("second", "mean_error(xs) * D"))
SETUP = (
    "import numpy as np\nxs = np.arange(1.0, 5.0)\nD = 4\n\n\ndef "
    "mean_error(values):\n    return float(np.mean(values))"
)
PAYLOAD = (
    "second = 10.0\\nimport coursework.answers as a\\na.close = a.shape = lambda "
    "*args, **kwargs: None\\n"
    "get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)\\n"
)

needs_bubblewrap = pytest.mark.skipif(
    sandbox.bubblewrap_problem() is not None,
    reason=f"no sandbox here: {sandbox.bubblewrap_problem()}",
)


def tiny_chapter() -> nbformat.NotebookNode:
    """The instructor's chapter: a context (``xs``, ``D``, a helper), then two
    autograded exercises that use it."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nb.cells = [code(SETUP)]
    for name, value in EXERCISES:
        nb.cells += [
            md(
                f"```{{exercise}} {name}\n:label: tiny-ex-{name}\n\nStore it in "
                f"`{name}`.\n```"
            ),
            md(f"```{{solution-start}} tiny-ex-{name}\n:class: dropdown\n```"),
            code(f"{name} = {value}"),
            code(
                f"# Autograded check (1 point): {name}\nfrom coursework import "
                f"answers\n\nanswers.shape({name!r}, {name}, ())\n"
                f"### BEGIN HIDDEN TESTS\nanswers.close({name!r}, {name}, {value}, "
                "rtol=1e-12)\n### END HIDDEN TESTS"
            ),
            md("```{solution-end}\n```"),
        ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"tiny-{i}"
    converted, _ = markup.convert(nb)
    return converted


def student(
    attack: str = "",
    where: str = "middle",
    solve: dict[str, str] | None = None,
    check_of_second: str | None = None,
) -> nbformat.NotebookNode:
    """The student edition with ``solve``'s answers (default: the first exercise,
    honestly) and an ``attack`` cell.

    ``where``: ``"start"`` (after the chapter's first cell) or ``"middle"`` (after the
    first exercise's check). ``check_of_second``: the student's own text for the second
    exercise's check cell (``""`` deletes it).
    """
    nb = student_edition.student_notebook(tiny_chapter())
    for name, value in (solve if solve is not None else {"first": "xs.sum()"}).items():
        cell = next(
            c
            for c in nb.cells
            if markup.nbgrader_meta(c).get("grade_id") == f"tiny-ex-{name}-solution-1"
        )
        cell["source"] = f"{name} = {value}"
    if check_of_second is not None:
        index = next(
            i
            for i, c in enumerate(nb.cells)
            if markup.nbgrader_meta(c).get("grade_id") == "tiny-ex-second-check"
        )
        if check_of_second:
            nb.cells[index]["source"] = check_of_second
        else:
            del nb.cells[index]
    if attack:
        after = (
            0
            if where == "start"
            else next(
                i
                for i, c in enumerate(nb.cells)
                if markup.nbgrader_meta(c).get("grade_id") == "tiny-ex-first-check"
            )
        )
        nb.cells.insert(after + 1, nbformat.v4.new_code_cell(attack))
    return nb


def attacks(paths: dict[str, str]) -> dict[str, tuple[nbformat.NotebookNode, int]]:
    """Each attack's notebook and the points its first exercise should keep (its second:
    always 0)."""
    repo, chapters, out, subs = (
        paths["repo"],
        paths["chapters"],
        paths["out"],
        paths["submissions"],
    )
    return {
        "custom-exc": (
            student(
                "get_ipython().set_custom_exc((BaseException,), lambda *args, "
                "**kwargs: None)",
                "start",
            ),
            1,
        ),
        "input-transformer": (
            student(
                "def cheat(lines):\n    text = ''.join(lines)\n"
                "    return ['pass\\n'] if 'Autograded' in text or 'Grading' in text "
                "or 'answers' in text else lines\n"
                "get_ipython().input_transformers_cleanup.append(cheat)",
                "start",
            ),
            0,
        ),  # it also stops its own answers
        "monkeypatch": (
            student(
                "import numpy\nfrom coursework import answers, checking, transport\n"
                "for f in ('close', 'shape', 'within', 'equal', 'expression'):\n    "
                "setattr(answers, f, lambda *args, **kwargs: None)\n"
                "checking.run = lambda *args, **kwargs: None\nnumpy.allclose = "
                "numpy.isclose = lambda *args, **kwargs: True\n"
                "numpy.asarray = lambda *args, **kwargs: numpy.array(10.0)\nnumpy.abs "
                "= lambda *args, **kwargs: numpy.array(0.0)"
            ),
            1,
        ),
        "shadow-modules": (
            student(
                "import os, sys\n"
                "fake = 'close = shape = within = equal = expression = lambda *args, "
                "**kwargs: None\\n'\n"
                f"for folder in ('.', '..', {repo!r}, {repo + '/notebooks'!r}, "
                "*sys.path[1:]):\n"
                "    for name, text in (('coursework/__init__.py', ''), "
                "('coursework/answers.py', fake),\n"
                "                       ('coursework/checking.py', 'def run(*args, "
                "**kwargs): pass\\n'), ('numpy.py', 'x = 1\\n'),\n"
                "                       ('sitecustomize.py', 'import builtins\\n'), "
                "('usercustomize.py', 'import builtins\\n')):\n"
                "        try:\n            os.makedirs(os.path.join(folder or '.', "
                "os.path.dirname(name)), exist_ok=True)\n"
                "            open(os.path.join(folder or '.', name), "
                "'w').write(text)\n        except OSError:\n            pass"
            ),
            1,
        ),
        "startup-files": (
            student(
                "import os, site, sys, sysconfig, IPython.paths\n"
                f"payload = {PAYLOAD!r}\n"
                "targets = [os.path.join(IPython.paths.get_ipython_dir(), "
                "'profile_default/startup/00-cheat.py'),\n"
                "           '/root/.ipython/profile_default/startup/00-cheat.py', "
                "os.path.expanduser("
                "'~/.ipython/profile_default/startup/00-cheat.py'),\n"
                "           os.path.join(sys.prefix, 'etc/ipython/ipython_config.py'), "
                "os.path.join(sys.prefix, 'etc/jupyter/jupyter_config.py'),\n"
                "           '/etc/ipython/ipython_config.py', "
                "'/etc/jupyter/jupyter_config.py']\n"
                "for folder in (*site.getsitepackages(), site.getusersitepackages(), "
                "sysconfig.get_paths()['purelib'],\n"
                "               '/root/.local/lib/python3.11/site-packages'):\n"
                "    targets += [os.path.join(folder, 'cheat.pth'), "
                "os.path.join(folder, 'sitecustomize.py'), os.path.join(folder, "
                "'usercustomize.py')]\n"
                "for target in targets:\n    try:\n        "
                "os.makedirs(os.path.dirname(target), exist_ok=True)\n"
                "        text = 'import os; exec(' + repr(payload) + ')\\n' if "
                "target.endswith('.pth') else payload\n"
                "        open(target, 'w').write(text)\n    except OSError:\n        "
                "pass"
            ),
            1,
        ),
        "instructor-files": (
            student(
                "import glob, os\nhidden = ''\n"
                f"for target in ({chapters + '/tiny.ipynb'!r}, "
                f"*glob.glob({repo + '/notebooks/*.ipynb'!r}), {out!r}, "
                f"{repo + '/tests/test_coursework_attacks.py'!r}):\n"
                "    try:\n        hidden += open(target).read()\n    except "
                "OSError:\n        pass\n"
                "if 'BEGIN HIDDEN' + ' TESTS' in hidden:\n    second = 10.0  # the "
                "hidden tests were readable: the answer is known\n"
                f"for target in ({chapters + '/tiny.ipynb'!r}, {out!r}, "
                f"*glob.glob({subs + '/*/*.ipynb'!r})):\n"
                "    try:\n        os.remove(target)\n    except OSError:\n        "
                "pass\n"
                f"for target in ({repo + '/pwned-' + TOKEN!r}, "
                f"{chapters + '/pwned'!r}, {out!r}):\n"
                "    try:\n        open(target, 'w').write('pwned')\n    except "
                "OSError:\n        pass"
            ),
            1,
        ),
        "detached": (
            student(
                "import os, subprocess\n"
                "subprocess.Popen(['setsid', 'sh', '-c', 'while true; do echo 2 >> "
                f"{out}; sleep 0.2; done # {TOKEN}'])\n"
                "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                "        os.execv('/bin/sh', ['sh', '-c', 'sleep 3; echo forged > "
                f"{out}; sleep 600 # {TOKEN}'])\n"
                "    os._exit(0)"
            ),
            1,
        ),
        "exit": (student("import os\nos._exit(1)"), 1),
        "loop": (student("while True:\n    pass"), 1),
        "huge-output": (
            student(
                "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 1_000_000 "
                "+ '\\n')\n"
                "print('tiny-ex-second: 1 / 1 points; TOTAL 2 / 2 points')"
            ),
            1,
        ),
        "fake-points": (
            student(
                "import json, os\nfolder = "
                "os.environ['COURSEWORK_ANSWERS_DIR']\nprint('TOTAL: 2 / 2 points')\n"
                "open(os.path.join(folder, '..', 'report.json'), "
                "'w').write(json.dumps({'ran': [0], 'note': 'ran in 1 s', 'errors': "
                "'x'}))\n"
                "os.makedirs(os.path.join(folder, '..', 'verdicts'), exist_ok=True)\n"
                "open(os.path.join(folder, '..', 'verdicts', "
                "'tiny-ex-second-check.json'), 'w').write('{\"x\": null}')\n"
                "open(os.path.join(folder, '..', 'answers.json'), 'w').write('{}')\n"
                "os.symlink('/etc/passwd', os.path.join(folder, "
                "'tiny-ex-second-check.json'))"
            ),
            1,
        ),
        "forged-answer": (
            student(
                "import json, os\nfolder = os.environ['COURSEWORK_ANSWERS_DIR']\n"
                "forged = {'second': {'type': 'pickle', 'value': "
                "'gASVAAAAAAAAAACMCGJ1aWx0aW5zlIwEZXZhbJSTlIwBMZSFlFKULg=='}}\n"
                "def save_forged():\n    open(os.path.join(folder, "
                "'tiny-ex-second-check.json'), 'w').write(json.dumps(forged))\n"
                "get_ipython().events.register('post_run_cell', lambda result: "
                "save_forged())"
            ),
            1,
        ),
        "context": (
            student(
                "xs = np.zeros(4)\nmean_error = lambda values: 0.0",
                "start",
                solve={"first": "xs.sum()", "second": "mean_error(xs) * D"},
            ),
            0,
        ),
        "lying-object": (
            student(
                "class Close(float):\n    def __eq__(self, other):\n        return "
                "True\n    __le__ = __ge__ = __eq__\n"
                "    def __sub__(self, other):\n        return 0.0\n    __abs__ = "
                "lambda self: 0.0\nsecond = Close(0.0)"
            ),
            1,
        ),
        "kill-worker": (
            student("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
            1,
        ),
        "edited-check": (
            student(
                check_of_second="# Autograded check (1 point): second\nsecond = 10.0"
            ),
            1,
        ),
        "deleted-check": (student(check_of_second=""), 1),
        "forged-numbers": (
            student(
                "import json, os, signal\nfolder = "
                "os.environ['COURSEWORK_ANSWERS_DIR']\n"
                'forged = \'{"second": {"type": "array", "dtype": "int", "shape": [2], '
                "\"values\": [' + str(2**64) + ', NaN]}}'\n"
                "open(os.path.join(folder, 'tiny-ex-second-check.json'), "
                "'w').write(forged)\n"
                "open(os.path.join(folder, '..', 'report.json'), "
                "'w').write(json.dumps({'ran': [0], 'errors': {'\u00b2': 'x'}}))\n"
                "os.kill(os.getppid(), signal.SIGKILL)"
            ),
            1,
        ),
        "forged-shape": (
            student(
                "import os, signal\nfolder = os.environ['COURSEWORK_ANSWERS_DIR']\n"
                'forged = \'{"second": {"type": "array", "dtype": "float", "shape": '
                "[0, ' + str(2**70) + '], \"values\": []}}'\n"
                "open(os.path.join(folder, 'tiny-ex-second-check.json'), "
                "'w').write(forged)\n"
                "os.kill(os.getppid(), signal.SIGKILL)"
            ),
            1,
        ),
        "no-limits": (
            # a fork bomb, a file filling the disk, /tmp filling the memory: bounded, or
            # it scores
            student(
                "import os, resource\nprocesses, size = (resource.getrlimit(r)[0] for "
                "r in (resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE))\n"
                "tmp = os.statvfs('/tmp')\nunbounded = lambda limit: limit == "
                "resource.RLIM_INFINITY or limit > 2**31\n"
                "if unbounded(processes) or unbounded(size) or tmp.f_blocks * "
                "tmp.f_frsize > 2**30:\n    second = 10.0"
            ),
            1,
        ),
    }


def _tree_hash(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(
            p for p in Path(root).rglob("*") if "__pycache__" not in p.parts
        ):
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _survivors() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and TOKEN.encode() in (entry / "cmdline").read_bytes()
            ):
                found.append(entry.name)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """Grade every attack, then an honest solution, one wrong answer and the untouched
    student edition, in one folder."""
    base = tmp_path_factory.mktemp("attacks")
    chapters, submissions, out = (
        base / "chapters",
        base / "submissions",
        base / "grades.csv",
    )
    chapters.mkdir()
    nbformat.write(tiny_chapter(), chapters / "tiny.ipynb")
    paths = {
        "repo": str(ROOT),
        "chapters": str(chapters),
        "out": str(out),
        "submissions": str(submissions),
    }
    expected = {}
    for number, (name, (nb, first)) in enumerate(attacks(paths).items()):
        folder = submissions / f"a{number:02d}-{name}"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "tiny.ipynb")
        expected[f"a{number:02d}-{name}/tiny"] = first
    for name, solve in (
        ("z1-honest", {"first": "xs.sum()", "second": "mean_error(xs) * D"}),
        ("z2-one-wrong", {"first": "xs.sum() + 1", "second": "mean_error(xs) * D"}),
        ("z3-untouched", {}),
    ):
        (submissions / name).mkdir()
        nbformat.write(student(solve=solve), submissions / name / "tiny.ipynb")
    (submissions / "z4-not-a-notebook").mkdir()
    (submissions / "z4-not-a-notebook" / "tiny.ipynb").write_text("{ not a notebook")
    (submissions / "z5-link").mkdir()
    # the solutions, from an archive
    (submissions / "z5-link" / "tiny.ipynb").symlink_to(chapters / "tiny.ipynb")
    instructor = (chapters, ROOT / "notebooks", ROOT / "coursework", ROOT / "tests")
    before = _tree_hash(*instructor), _tree_hash(submissions)
    start = time.perf_counter()
    rows = grade.grade_folder(submissions, out, timeout=TIMEOUT, notebooks_dir=chapters)
    seconds = time.perf_counter() - start
    written = out.read_text()
    time.sleep(4)  # what a detached process would do after grading
    table: dict[str, dict[str, grade.Row]] = {}
    for row in rows:
        table.setdefault(row.submission, {})[row.exercise] = row
    return {
        "table": table,
        "expected": expected,
        "before": before,
        "after": (_tree_hash(*instructor), _tree_hash(submissions)),
        "written": written,
        "out": out,
        "seconds": seconds,
        "submissions": submissions,
        "chapters": chapters,
    }


@needs_bubblewrap
def test_every_attack_scores_zero_where_unsolved(graded):
    wrong = {}
    for name, first in graded["expected"].items():
        rows = graded["table"][name]
        got = (rows["tiny-ex-first"].points, rows["tiny-ex-second"].points)
        if got != (first, 0):
            wrong[name] = (
                got,
                rows["tiny-ex-first"].feedback,
                rows["tiny-ex-second"].feedback,
            )
    assert not wrong, wrong


@needs_bubblewrap
def test_honest_full_marks_and_one_wrong_answer(graded):
    table = graded["table"]
    assert (
        table["z1-honest/tiny"]["TOTAL"].points
        == table["z1-honest/tiny"]["TOTAL"].max_points
        == 2
    )
    one_wrong = table["z2-one-wrong/tiny"]
    assert (one_wrong["tiny-ex-first"].points, one_wrong["tiny-ex-second"].points) == (
        0,
        1,
    )
    assert "`first` is too large" in one_wrong["tiny-ex-first"].feedback
    untouched = table["z3-untouched/tiny"]
    assert untouched["TOTAL"].points == 0 and untouched["TOTAL"].max_points == 2
    assert "not answered yet" in untouched["tiny-ex-second"].feedback


@needs_bubblewrap
def test_feedback_says_what_happened(graded):
    table = graded["table"]
    assert (
        "too small" in table["a12-context/tiny"]["tiny-ex-first"].feedback
    ), "the chapter's xs, not the student's"
    assert "kernel died" in table["a07-exit/tiny"]["tiny-ex-second"].feedback
    assert (
        f"time limit of {TIMEOUT} s"
        in table["a08-loop/tiny"]["tiny-ex-second"].feedback
    )
    assert (
        "should hold numbers"
        in table["a11-forged-answer/tiny"]["tiny-ex-second"].feedback
    ), "a pickle is not read"
    assert "deleted" in table["a16-deleted-check/tiny"]["tiny-ex-second"].feedback
    broken = table["z4-not-a-notebook/tiny"]
    assert (
        broken["TOTAL"].max_points == 2 and broken["tiny-ex-first"].max_points == 1
    ), "its possible points, not 0/0"
    assert "could not read the notebook" in broken["TOTAL"].feedback
    link = table["z5-link/tiny"]["TOTAL"]
    assert (link.points, link.max_points) == (0, 2) and "is a link" in link.feedback


@needs_bubblewrap
def test_instructor_files_and_other_submissions_unchanged(graded):
    assert graded["before"] == graded["after"]
    assert (
        not (ROOT / f"pwned-{TOKEN}").exists()
        and not (graded["chapters"] / "pwned").exists()
    )
    assert (
        graded["out"].read_text() == graded["written"]
    ), "nothing writes the grade table after the grader"


@needs_bubblewrap
def test_no_process_survives(graded):
    assert _survivors() == []


@needs_bubblewrap
def test_rerun_skips_graded_and_regrades_changed(graded, capsys):
    """Same command again: nothing runs; a changed file is graded again; the rest of the
    table stays as it was."""
    submissions, out = graded["submissions"], graded["out"]
    start = time.perf_counter()
    rows = grade.grade_folder(
        submissions, out, timeout=TIMEOUT, notebooks_dir=graded["chapters"]
    )
    assert time.perf_counter() - start < 10 and out.read_text() == graded["written"]
    assert "already graded" in capsys.readouterr().err
    nbformat.write(
        student(solve={"first": "xs.sum()", "second": "mean_error(xs) * D"}),
        submissions / "z3-untouched" / "tiny.ipynb",
    )
    rows = grade.grade_folder(
        submissions, out, timeout=TIMEOUT, notebooks_dir=graded["chapters"]
    )
    totals = {r.submission: r for r in rows if r.exercise == "TOTAL"}
    assert totals["z3-untouched/tiny"].points == 2 and len(totals) == len(
        graded["table"]
    )
    assert (
        sum(r.submission == "z3-untouched/tiny" for r in rows) == 3
    ), "its old rows are replaced, not kept"
    assert "z3-untouched/tiny: running" in capsys.readouterr().err


# ---------------------------------------- the grade table: never lost, never shared

HEADER = ",".join(grade.FIELDS)
GOOD = "alice/tiny,tiny.ipynb,TOTAL,2,2,ran in 3 s," + "a" * 64 + "," + "c" * 64

# (id, content of the table, expected message): a table the grader cannot read whole is
# refused, never rewritten
TABLE_ERRORS = [
    (
        "a row of 3 fields",
        f"{HEADER}\n{GOOD}\nbob/tiny,tiny.ipynb,TOTAL\n",
        r"line 3 \(3 fields, not 8",
    ),
    (
        "points that are not a number",
        f"{HEADER}\n{GOOD}\nbob/tiny,tiny.ipynb,TOTAL,two,2,,{'b' * 64},\n",
        r"line 3 \(could not convert string to float: 'two'",
    ),
    (
        "points that are nan",
        f"{HEADER}\nbob/tiny,tiny.ipynb,TOTAL,nan,2,,{'b' * 64},\n",
        r"line 2 \(points that are not finite",
    ),
]


def _none_box() -> sandbox.Sandbox:
    return sandbox.Sandbox("none", grade.repository_root())


@pytest.mark.parametrize(
    "text, message", [pytest.param(*row[1:], id=row[0]) for row in TABLE_ERRORS]
)
def test_a_table_with_a_row_it_cannot_read_is_refused_and_kept(text, message, tmp_path):
    out = tmp_path / "grades.csv"
    out.write_text(text)
    (tmp_path / "submissions").mkdir()
    with pytest.raises(
        ValueError,
        match=rf"out '.*grades.csv' has a line the grader cannot read, {message}",
    ):
        grade.grade_folder(tmp_path / "submissions", out, box=_none_box())
    assert out.read_text() == text, "the table is left as it was"


def test_a_second_grader_on_the_same_table_is_refused(tmp_path, capsys):
    """While one grader holds the table's lock, another gets one line and writes
    nothing."""
    out, submissions = tmp_path / "grades.csv", tmp_path / "submissions"
    submissions.mkdir()
    out.write_text(f"{HEADER}\n{GOOD}\n")
    with open(tmp_path / ".grades.csv.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first grader
        with pytest.raises(
            grade.GradingError, match=r"another grader is writing '.*grades.csv'"
        ):
            grade.grade_folder(submissions, out, box=_none_box())
        assert (
            grade.main([str(submissions), "--out", str(out), "--sandbox", "none"]) == 1
        )
        assert "grading stopped: another grader is writing" in capsys.readouterr().err
    assert out.read_text() == f"{HEADER}\n{GOOD}\n"
    assert (
        grade.grade_folder(submissions, out, box=_none_box())[0].submission
        == "alice/tiny"
    ), "free again: kept"


# ---------------------------------------- files a submission can write: untrusted

# (id, text of a saved answers file for `second`): each costs that answer only, with a
# message, never a traceback
FORGED_ANSWERS = [
    ("a 401-digit integer", '{"second": {"type": "int", "value": 1%s}}' % ("0" * 400)),
    ("a 401-digit float", '{"second": {"type": "float", "value": 1%s}}' % ("0" * 400)),
    (
        "2**64 in an int array",
        '{"second": {"type": "array", "dtype": "int", "shape": [1], "values": [%d]}}'
        % 2**64,
    ),
    (
        "NaN in an int array",
        '{"second": {"type": "array", "dtype": "int", "shape": [2], "values": [1, '
        "NaN]}}",
    ),
    (
        "a float in an int array",
        '{"second": {"type": "array", "dtype": "int", "shape": [1], "values": [1.5]}}',
    ),
    (
        "10**400 in a float array",
        '{"second": {"type": "array", "dtype": "float", "shape": [1], "values": [1%s]}}'
        % ("0" * 400),
    ),
    (
        "shape [0, 2**70]",
        '{"second": {"type": "array", "dtype": "float", "shape": [0, %d], "values": '
        "[]}}" % 2**70,
    ),
    (
        "40 axes",
        '{"second": {"type": "array", "dtype": "float", "shape": %s, "values": [1.0]}}'
        % ([1] * 40),
    ),
    (
        "10**400 in an expression",
        '{"second": {"type": "expression", "symbols": [], "values": [1%s]}}'
        % ("0" * 400),
    ),
    (
        "100,001 entries",
        '{"second": {"type": "array", "dtype": "float", "shape": [100001], "values": '
        "%s}}" % ([0.0] * 100_001),
    ),
    (
        "an unknown dtype",
        '{"second": {"type": "array", "dtype": "complex", "shape": [1], "values": '
        "[1]}}",
    ),
]


@pytest.mark.parametrize(
    "text", [pytest.param(row[1], id=row[0]) for row in FORGED_ANSWERS]
)
def test_a_forged_answer_file_costs_that_answer_only(text, tmp_path):
    (tmp_path / "second.json").write_text(text)
    saved = transport.load(tmp_path / "second.json", tmp_path, ("second",))
    assert saved["second"]["type"] == "unreadable", saved
    with pytest.raises(
        AssertionError,
        match=(
            "`second` should hold numbers, got a saved answer that is not in the "
            "grader's|`second` should hold numbers, got an integer too large"
        ),
    ):
        answers.close("second", transport.decode(saved["second"]), 10.0, rtol=1e-9)


# (id, a forged report.json): the report only words feedback, so a malformed one is read
# as no report
FORGED_REPORTS = [
    (
        "a non-decimal digit as a key",
        '{"ran": [0], "errors": {"\u00b2": "x"}, "note": "n"}',
    ),
    ("a huge key", '{"ran": [0], "errors": {"%s": "x"}}' % ("9" * 5000)),
    ("a huge cell index", '{"ran": [%s], "errors": {}}' % ("9" * 5000)),
    ("deep nesting", "[" * 100_000 + "]" * 100_000),
]


@pytest.mark.parametrize(
    "text", [pytest.param(row[1], id=row[0]) for row in FORGED_REPORTS]
)
def test_a_forged_report_is_read_as_feedback_only(text, tmp_path):
    (tmp_path / "grading").mkdir()
    (tmp_path / "grading" / "report.json").write_text(text)
    ran, errors, note = grade._report(tmp_path)
    assert ran <= {0} and errors == {} and note in (None, "n")


# ---------------------------------------- the grader's own limits and failures

# (id, --timeout): each refused with one line before anything runs
TIMEOUT_ERRORS = [
    ("inf", "inf"),
    ("nan", "nan"),
    ("zero", "0"),
    ("negative", "-5"),
    ("a year", "31536000"),
]


@pytest.mark.parametrize(
    "value", [pytest.param(row[1], id=row[0]) for row in TIMEOUT_ERRORS]
)
def test_an_absurd_timeout_is_refused(value, tmp_path, capsys):
    (tmp_path / "submissions").mkdir()
    with pytest.raises(SystemExit):
        grade.main(
            [
                str(tmp_path / "submissions"),
                "--out",
                str(tmp_path / "grades.csv"),
                "--sandbox",
                "none",
                "--timeout",
                value,
            ]
        )
    assert (
        "timeout must be a number of seconds from 1 to 86400 (a day)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "grades.csv").exists()


def _tiny_folder(
    tmp_path: Path, names: tuple[str, ...] = ("alice",)
) -> tuple[Path, Path]:
    """``(chapters, submissions)``: the tiny chapter and, for each name, its honest
    solution."""
    chapters, submissions = tmp_path / "chapters", tmp_path / "submissions"
    chapters.mkdir()
    nbformat.write(tiny_chapter(), chapters / "tiny.ipynb")
    for name in names:
        (submissions / name).mkdir(parents=True)
        nbformat.write(
            student(solve={"first": "xs.sum()", "second": "mean_error(xs) * D"}),
            submissions / name / "tiny.ipynb",
        )
    return chapters, submissions


def test_the_graders_own_failure_is_not_recorded_as_a_grade(tmp_path, monkeypatch):
    """A worker that fails before the notebook runs (its kernel cannot start) stops
    grading; no zero is written."""
    from coursework import worker

    chapters, submissions = _tiny_folder(tmp_path)
    monkeypatch.setattr(
        grade,
        "_worker",
        lambda layout, notebook, timeout, limits=False: [
            sys.executable,
            "-c",
            f"import sys; print('no kernel'); sys.exit({worker.GRADER_FAILURE_STATUS})",
        ],
    )
    out = tmp_path / "grades.csv"
    with pytest.raises(
        grade.GradingError,
        match=r"alice/tiny was not graded: no kernel; nothing was recorded for it",
    ):
        grade.grade_folder(
            submissions, out, timeout=20, notebooks_dir=chapters, box=_none_box()
        )
    assert grade.read_table(out) == [], "a rerun grades it"


def test_a_changed_check_grades_again(tmp_path, capsys):
    """The resume key holds the chapter's and the check code's digest: a changed hidden
    test regrades, nothing else does."""
    chapters, submissions = _tiny_folder(tmp_path)
    out = tmp_path / "grades.csv"
    first = grade.grade_folder(
        submissions, out, timeout=30, notebooks_dir=chapters, box=_none_box()
    )
    assert first[-1].points == 2 and first[-1].checks == grade._digest(
        chapters / "tiny.ipynb"
    )
    grade.grade_folder(
        submissions, out, timeout=30, notebooks_dir=chapters, box=_none_box()
    )
    assert "already graded" in capsys.readouterr().err
    chapter = nbformat.read(chapters / "tiny.ipynb", as_version=4)
    check = next(
        c
        for c in chapter.cells
        if markup.nbgrader_meta(c).get("grade_id") == "tiny-ex-second-check"
    )
    check["source"] = check["source"].replace(
        "mean_error(xs) * D, rtol", "mean_error(xs) * D + 1, rtol"
    )  # a new answer
    nbformat.write(chapter, chapters / "tiny.ipynb")
    again = grade.grade_folder(
        submissions, out, timeout=30, notebooks_dir=chapters, box=_none_box()
    )
    assert [r.points for r in again] == [1, 0, 1] and "`second` is too small" in again[
        1
    ].feedback
    assert "alice/tiny: running" in capsys.readouterr().err


def test_a_table_of_the_old_layout_is_read_and_graded_again(tmp_path):
    """A table written before the checks column keeps its rows and grades them again
    (their checks are unknown)."""
    out = tmp_path / "grades.csv"
    out.write_text(
        ",".join(grade.OLD_FIELDS)
        + "\nalice/tiny,tiny.ipynb,TOTAL,2,2,ran in 3 s,"
        + "a" * 64
        + "\n"
    )
    (tmp_path / "submissions").mkdir()
    rows = grade.grade_folder(tmp_path / "submissions", out, box=_none_box())
    assert [(r.submission, r.points, r.checks) for r in rows] == [("alice/tiny", 2, "")]
    assert out.read_text().startswith(HEADER + "\n"), "rewritten in the new layout"


def test_one_slow_check_costs_its_own_row_only(tmp_path):
    """Each submission's check has its own time limit: an answer that makes the check
    slow fails that exercise, and the others of its batch are graded (the checks' run is
    no longer one limit for the whole batch)."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    chapter = nbformat.v4.new_notebook()
    chapter.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    chapter.cells = [
        md("```{exercise} wait\n:label: slow-ex-wait\n\nStore it in `wait`.\n```"),
        md("```{solution-start} slow-ex-wait\n:class: dropdown\n```"),
        code("wait = 0.0"),
        code(
            "# Autograded check (1 point): wait\nimport time\nfrom coursework import "
            "answers\n\n"
            "time.sleep(float(wait))  # a check whose time grows with the answer\n"
            "answers.close('wait', wait, 0.0, rtol=0)"
        ),
        md("```{solution-end}\n```"),
    ]
    for i, cell in enumerate(chapter.cells):
        cell["id"] = f"slow-{i}"
    (tmp_path / "chapters").mkdir()
    nbformat.write(markup.convert(chapter)[0], tmp_path / "chapters" / "slow.ipynb")
    for name, value in (("a", "0.0"), ("b", "1000.0"), ("c", "0.0")):
        nb = student_edition.student_notebook(markup.convert(chapter)[0])
        next(
            c
            for c in nb.cells
            if markup.nbgrader_meta(c).get("grade_id") == "slow-ex-wait-solution-1"
        )["source"] = f"wait = {value}"
        (tmp_path / "submissions" / name).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "submissions" / name / "slow.ipynb")
    rows = grade.grade_folder(
        tmp_path / "submissions",
        tmp_path / "grades.csv",
        timeout=8,
        notebooks_dir=tmp_path / "chapters",
        box=_none_box(),
    )
    totals = {r.submission: r for r in rows if r.exercise == "slow-ex-wait"}
    assert {name: r.points for name, r in totals.items()} == {
        "a/slow": 1,
        "b/slow": 0,
        "c/slow": 1,
    }
    assert (
        "the check ran out of time on this answer (over 8 s)"
        in totals["b/slow"].feedback
    )


# (id, how to make SUBMISSIONS/NAME/tiny.ipynb, its feedback): never read, but a row
# with 0 and the reason
NOT_FILES = [
    (
        "a FIFO",
        lambda path: os.mkfifo(path),
        "the submission is a FIFO, not a notebook file",
    ),
    (
        "a folder",
        lambda path: path.mkdir(),
        "the submission is a folder, not a notebook file",
    ),
    (
        "a socket",
        lambda path: socket.socket(socket.AF_UNIX).bind(str(path)),
        "the submission is a socket, not a notebook file",
    ),
    (
        "33 MiB",
        lambda path: path.write_bytes(b" " * (33 * 2**20)),
        "the notebook is larger than 32 MiB (33 MiB)",
    ),
]


def test_a_fifo_folder_or_socket_named_ipynb_gets_a_row_with_zero(tmp_path):
    submissions = tmp_path / "submissions"
    chapters, _ = _tiny_folder(tmp_path, ())
    for name, make, _ in NOT_FILES:
        (submissions / name).mkdir(parents=True)
        make(submissions / name / "tiny.ipynb")
    rows = grade.grade_folder(
        submissions,
        tmp_path / "grades.csv",
        timeout=20,
        notebooks_dir=chapters,
        box=_none_box(),
    )
    totals = {r.submission: r for r in rows if r.exercise == "TOTAL"}
    for name, _, kind in NOT_FILES:
        total = totals[f"{name}/tiny"]
        assert (total.points, total.max_points) == (0, 2) and kind in total.feedback


def test_stale_work_folders_are_removed_at_the_next_start(tmp_path, monkeypatch):
    """A grader killed with kill -9 leaves its work folder (students' files in it): the
    next start removes it, and leaves alone the folder of a grader still running."""
    temporary = tmp_path / "tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    for name in ("killed", "running", "old-grader", "just-made"):
        (temporary / f"coursework-grade-{name}" / "run-1" / "notebooks").mkdir(
            parents=True
        )
    for name in ("killed", "running"):
        (temporary / f"coursework-grade-{name}" / grade.SCRATCH_LOCK).write_text("")
    os.utime(
        temporary / "coursework-grade-old-grader",
        (time.time() - 2 * grade.UNLOCKED_AGE,) * 2,
    )
    (tmp_path / "submissions").mkdir()
    with open(temporary / "coursework-grade-running" / grade.SCRATCH_LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        grade.grade_folder(
            tmp_path / "submissions", tmp_path / "grades.csv", box=_none_box()
        )
    assert sorted(p.name for p in temporary.iterdir()) == [
        "coursework-grade-just-made",
        "coursework-grade-running",
    ]


def test_ctrl_c_says_one_line_and_leaves_no_work_folder(tmp_path):
    chapters, submissions = _tiny_folder(tmp_path, ())
    (submissions / "loop").mkdir(parents=True)
    nbformat.write(
        student("while True:\n    pass", "start"), submissions / "loop" / "tiny.ipynb"
    )
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    code = (
        "import sys; from coursework import grade; from pathlib import Path; import "
        "coursework.grade as g\n"
        "g.load_chapters = lambda folder, load=g.load_chapters: "
        f"load(Path({str(chapters)!r}))\n"
        "sys.exit(grade.main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(submissions),
            "--out",
            str(tmp_path / "grades.csv"),
            "--sandbox",
            "none",
            "--timeout",
            "60",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temporary), "PYTHONPATH": str(ROOT)},
        # a suite started in the background (as CI may run it) passes SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    while not any("running" in line for line in lines):
        lines.append(process.stderr.readline())
        assert lines[-1], lines
    time.sleep(3)  # the student's kernel is in its loop
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, lines + [rest]
    assert rest.strip().splitlines() == [
        "grading interrupted (Ctrl-C): the submissions graded before it are in the "
        "table; run the same command again to grade the rest"
    ]
    assert list(temporary.iterdir()) == []


# ---------------------------------------- the checks test type, shape, range and values

CHAPTER_1 = ROOT / "notebooks" / "01_icl_as_a_learning_problem.ipynb"
ETA = np.linspace(0.1, 1.2, 12)
# d = 10: the exact errors, smallest at eta = 0.5
STEP_ERRORS = 1 - 2 * ETA + ETA**2 * 21 / 10


def _posterior_error() -> float:
    """Chapter 1's Bayes error, as its check computes it (d = 10, sigma = 0.5)."""
    rng = np.random.default_rng(0)
    return (
        np.mean(
            [
                np.mean(
                    [
                        np.trace(np.linalg.inv(np.eye(10) + x.T @ x / 0.25))
                        for x in rng.standard_normal((400, k, 10))
                    ]
                )
                + 0.25
                for k in range(1, 21)
            ]
        )
        / 10
    )


def _ridge_errors(zeroed: bool) -> np.ndarray:
    errors = _posterior_error() * np.array(
        [1.3, 1.2, 1.1, 1.02, 1.0, 1.02, 1.1, 1.2, 1.3]
    )
    return np.where(np.arange(9) == 4, errors, 0.0) if zeroed else errors


# (id, the check's answers, their values, also the hidden tests, expected AssertionError
# or None for a pass): the answers that used to score 10/10, each beside a right one
# that must still pass
LOOSE_ANSWERS = [
    (
        "best step on the grid",
        "step_errors, best_step",
        lambda: {"step_errors": STEP_ERRORS, "best_step": 0.5},
        True,
        None,
    ),
    (
        "best step off the grid",
        "step_errors, best_step",
        lambda: {"step_errors": STEP_ERRORS, "best_step": 10 / 21},
        False,
        r"`best_step` = 0.4762 is not one of the values the exercise gives",
    ),
    (
        "best step not the smallest error",
        "step_errors, best_step",
        lambda: {"step_errors": STEP_ERRORS, "best_step": 0.4},
        True,
        r"`best_step \(the step size of the smallest of your step_errors\)` is too "
        r"small",
    ),
    (
        "ridge errors",
        "ridge_errors, best_penalty",
        lambda: {"ridge_errors": _ridge_errors(False), "best_penalty": 0.25},
        True,
        None,
    ),
    (
        "ridge errors zeroed but one",
        "ridge_errors, best_penalty",
        lambda: {"ridge_errors": _ridge_errors(True), "best_penalty": 0.25},
        True,
        r"`ridge_errors` is too small at 8 of 9 entries",
    ),
    (
        "best penalty off the grid",
        "ridge_errors, best_penalty",
        lambda: {"ridge_errors": _ridge_errors(False), "best_penalty": 0.3},
        False,
        r"is not one of",
    ),
    (
        "whole neighbour counts",
        "best_m, best_knn_errors",
        lambda: {"best_m": np.array([2, 4]), "best_knn_errors": [0.1, 0.5]},
        False,
        None,
    ),
    (
        "a non-integer neighbour count",
        "best_m, best_knn_errors",
        lambda: {"best_m": np.array([1.5, 4.0]), "best_knn_errors": [0.1, 0.5]},
        False,
        r"`best_m` should hold whole numbers \(it counts\), got 1.5 at index \[0\]",
    ),
    (
        "a non-integer sparsity",
        "lasso_ratios, crossing_sparsity",
        lambda: {"lasso_ratios": np.ones(10), "crossing_sparsity": 3.5},
        False,
        r"`crossing_sparsity` should hold whole numbers",
    ),
]


@pytest.mark.parametrize(
    "names, values, hidden, message",
    [pytest.param(*row[1:], id=row[0]) for row in LOOSE_ANSWERS],
)
def test_chapter_1_checks_reject_loose_answers(names, values, hidden, message):
    """Chapter 1's check cells, run on plain-data answers as when grading (the hidden
    part where it needs no more of the chapter's context than d and sigma)."""
    chapter = nbformat.read(CHAPTER_1, as_version=4)
    source = next(
        c.source
        for c in chapter.cells
        if c.source.startswith(f"# Autograded check (2 points): {names}\n")
    )
    code = source if hidden else source.split("### BEGIN HIDDEN TESTS")[0]
    namespace = {
        "np": np,
        "D": 10,
        "SIGMA": 0.5,
        **{
            name: transport.decode(transport.encode(value))
            for name, value in values().items()
        },
    }
    if message is None:
        exec(code, namespace)  # noqa: S102 - the chapter's own check
    else:
        with pytest.raises(AssertionError, match=message):
            exec(code, namespace)  # noqa: S102
