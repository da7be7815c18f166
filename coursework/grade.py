"""Grade a folder of submitted notebooks: each runs in a sandbox, its answers are
checked where its code cannot reach.

    python -m coursework.grade SUBMISSIONS --out grades.csv [--timeout 600] [--batch 10]
        [--sandbox bubblewrap]

Every ``*.ipynb`` under ``SUBMISSIONS`` (any depth, e.g.
``SUBMISSIONS/alice/01_icl_as_a_learning_problem.ipynb``) is matched to its chapter in
``notebooks/`` by file name, or else by the ids of its check cells. Then, in two runs:

1. **The student's run.** Each check cell of the submission is replaced by a cell that
   saves the exercise's answers (the names its first line gives) as plain data
   (:mod:`coursework.transport`). The notebook runs top to bottom, errors allowed,
   within ``--timeout`` seconds, in a fresh kernel inside a sandbox
   (:mod:`coursework.sandbox`) that sees a copy of the notebook only, and neither the
   instructor's chapters nor the other submissions nor the grade table, and that ends
   every process it started.
2. **The checks' run.** In another sandbox, a fresh kernel runs the instructor's chapter
   itself, and where the chapter has a check cell it runs that cell, hidden tests
   included, once per submission on that submission's answers
   (:mod:`coursework.checking`), with the chapter's own context (its prompts, models and
   helpers). No student code runs there; up to ``--batch`` submissions of a chapter
   share one such run.

An exercise earns its points when its check passes; otherwise the feedback column holds
the check's message (and the error of the student's own code for that exercise, if it
raised one). A submission that cannot be read, runs out of time or kills its kernel gets
its remaining exercises at zero with the reason and its possible points.

The CSV has one row per exercise and submission (``submission, notebook, exercise,
points, max_points, feedback, sha256, checks``) and one ``TOTAL`` row per submission. It
is rewritten, atomically, as soon as a submission is graded; grading again with the same
``--out`` skips every submission already in it with the same file hash (SHA-256) and the
same ``checks`` digest (of the instructor's chapter and the check code: a changed hidden
test grades again).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (and no sandbox either)
    fcntl = None

from coursework import markup, sandbox, transport, worker
from coursework.student_edition import repository_root

FIELDS = (
    "submission",
    "notebook",
    "exercise",
    "points",
    "max_points",
    "feedback",
    "sha256",
    "checks",
)
# tables written before the checks column: read, and every row graded again
OLD_FIELDS = FIELDS[:-1]
# the modules a check runs: part of its digest
CHECK_CODE = ("answers.py", "checking.py", "transport.py")
EXPORT = (
    "# Grading: the answers of {label} are saved for its check, which runs in another "
    "kernel\n"
    "__import__('coursework.transport').transport.save({check_id!r}, {names!r}, "
    "globals())"
)
VERDICT = (
    "# Grading: the check of {label} runs on each submission's answers\n"
    "__import__('coursework.checking').checking.run({check_id!r}, {names!r}, "
    "{source!r}, globals(), {seconds!r})"
)
STARTUP_SECONDS = (
    60  # allowed on top of --timeout for starting the sandbox and the kernel
)
MAX_REPORT_BYTES = 2**20
# a submitted notebook is read whole, at several times its size: larger ones get 0
MAX_NOTEBOOK_BYTES = 32 * 2**20
CHECK_SECONDS = 300  # at most, for one check on one submission (see check_seconds)
# seconds: --timeout inf (or 1e12) would give every run a limit that nothing reaches
MAX_TIMEOUT = 86_400


@dataclass
class Row:
    """One line of the grade table (``max_points`` None: the possible points are not
    known)."""

    submission: str
    notebook: str
    exercise: str
    points: float
    max_points: float | None
    feedback: str
    sha256: str = ""
    # the digest of the chapter and check code it was graded with (Chapter.digest)
    checks: str = ""


@dataclass
class Chapter:
    """A source chapter: its converted notebook, its check cells by grade id, and its
    autograded exercises."""

    path: Path
    nb: nbformat.NotebookNode
    checks: dict[str, dict]
    exercises: list[markup.Exercise]
    digest: str = ""


@dataclass
class StudentRun:
    """What the student's run of one submission gave: its answers by check id, and what
    happened, for feedback."""

    name: str
    path: Path
    sha256: str
    chapter: Chapter
    present: set[str]
    cells: dict[str, int]  # grade id -> index in the notebook that ran
    answers: dict[str, dict[str, dict]] = field(default_factory=dict)
    ran: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


class GradingError(RuntimeError):
    """The grader cannot go on: the instructor's chapter failed, or a run changed what
    later kernels load."""


def load_chapters(notebooks_dir: Path) -> dict[str, Chapter]:
    """The chapters of ``notebooks_dir`` (converted to nbgrader's markup in memory), by
    file name."""
    chapters = {}
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        nb, exercises = markup.convert(nbformat.read(path, as_version=4))
        checks = {
            markup.nbgrader_meta(c)["grade_id"]: c
            for c in nb.cells
            if markup.is_check(c)
        }
        chapters[path.name] = Chapter(
            path, nb, checks, [e for e in exercises if e.check_id], _digest(path)
        )
    return chapters


def _digest(chapter: Path) -> str:
    """SHA-256 of the instructor's chapter and of the check code: when either changes,
    its grades are stale."""
    digest = hashlib.sha256(chapter.read_bytes())
    for name in CHECK_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def _digest_of_all(chapters: dict[str, Chapter]) -> str:
    """The digest for a file that matched no chapter: a new or changed chapter may match
    it."""
    return hashlib.sha256(
        "".join(sorted(c.digest for c in chapters.values())).encode()
    ).hexdigest()


def _grade_id(cell: dict) -> str | None:
    """The grade id of a submitted cell, None if it has none or its metadata is
    malformed."""
    meta = (
        cell.get("metadata", {}).get("nbgrader")
        if isinstance(cell.get("metadata"), dict)
        else None
    )
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    return grade_id if isinstance(grade_id, str) else None


def _match(
    nb: nbformat.NotebookNode, name: str, chapters: dict[str, Chapter]
) -> Chapter | None:
    if name in chapters:
        return chapters[name]
    ids = {_grade_id(c) for c in nb.cells} - {None}
    best = max(
        chapters.values(), key=lambda ch: len(ids & set(ch.checks)), default=None
    )
    return best if best is not None and ids & set(best.checks) else None


def student_notebook(
    nb: nbformat.NotebookNode, chapter: Chapter
) -> tuple[nbformat.NotebookNode, set[str], dict[str, int]]:
    """The submission as it runs: each check cell replaced by a cell saving its answers,
    nothing after the last one.

    Returns the notebook, the check ids found and the index of every cell with a grade
    id.
    """
    nb = copy.deepcopy(nb)
    by_check = {e.check_id: e for e in chapter.exercises}
    cells = {gid: i for i, c in enumerate(nb.cells) if (gid := _grade_id(c))}
    present, last = set(), -1
    for index, cell in enumerate(nb.cells):
        exercise = by_check.get(_grade_id(cell))
        if exercise is not None:
            nb.cells[index] = nbformat.v4.new_code_cell(
                EXPORT.format(
                    label=exercise.label,
                    check_id=exercise.check_id,
                    names=exercise.answers,
                )
            )
            present.add(exercise.check_id)
            last = index
        elif cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.cells = nb.cells[: last + 1]
    return nb, present, cells


def check_seconds(timeout: float) -> float:
    """The time limit of one check on one submission's answers: as long as a notebook's
    run, at most :data:`CHECK_SECONDS`."""
    return float(min(timeout, CHECK_SECONDS))


def checks_notebook(
    chapter: Chapter, seconds: float | None = None
) -> nbformat.NotebookNode:
    """The instructor's chapter with each check cell replaced by a run of that check on
    every submission's answers (``seconds``: each check's time limit on each submission,
    see :func:`check_seconds`)."""
    nb = copy.deepcopy(chapter.nb)
    by_check = {e.check_id: e for e in chapter.exercises}
    last = -1
    for index, cell in enumerate(nb.cells):
        exercise = by_check.get(markup.nbgrader_meta(cell).get("grade_id"))
        if exercise is not None:
            nb.cells[index] = nbformat.v4.new_code_cell(
                VERDICT.format(
                    label=exercise.label,
                    check_id=exercise.check_id,
                    names=exercise.answers,
                    source=cell["source"],
                    seconds=seconds,
                )
            )
            last = index
    nb.cells = nb.cells[: last + 1]
    return nb


def _worker(
    layout: sandbox.Layout, notebook: str, timeout: float, limits: bool = False
) -> list[str]:
    """The worker's command line (``limits``: it sets the sandbox's process and file
    size limits, see the worker)."""
    return [
        sys.executable,
        "-s",
        "-m",
        "coursework.worker",
        str(layout.notebooks / notebook),
        str(layout.grading / "report.json"),
        "--timeout",
        f"{timeout:g}",
    ] + (["--limits"] if limits else [])


def _report(work: Path) -> tuple[set[int], dict[int, str], str | None]:
    """The cells that ran, their errors and the note of a run's report (untrusted:
    malformed parts are dropped)."""
    raw = transport.read_plain_file(
        work / "grading" / "report.json", work / "grading", MAX_REPORT_BYTES
    )
    try:
        return _parse_report(json.loads(raw) if raw is not None else None)
    # a submission may have forged the report: at worst it words no feedback
    except Exception:  # noqa: BLE001
        return set(), {}, None


def _parse_report(report: object) -> tuple[set[int], dict[int, str], str | None]:
    if not isinstance(report, dict):
        return set(), {}, None
    ran = report.get("ran") if isinstance(report.get("ran"), list) else []
    ran = {
        i
        for i in ran
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31
    }
    errors = report.get("errors") if isinstance(report.get("errors"), dict) else {}
    # keys as the worker writes them: decimal cell indices ("²".isdigit() is true, but
    # int("²") fails)
    errors = {
        int(k): v[:2000]
        for k, v in errors.items()
        if isinstance(k, str) and re.fullmatch(r"[0-9]{1,9}", k) and isinstance(v, str)
    }
    note = report.get("note")
    return ran, errors, note[:300] if isinstance(note, str) else None


def _grader_failure(outcome: str, work: Path) -> str | None:
    """Why a run failed on the grader's side (the sandbox or the worker, before any code
    of the notebook ran), else None.

    A submission cannot cause these: bubblewrap's own errors come before the notebook
    starts, and the worker's status :data:`coursework.worker.GRADER_FAILURE_STATUS`
    means its kernel never ran a cell.
    """
    log = (
        (work / "log.txt").read_text(errors="replace")
        if (work / "log.txt").is_file()
        else ""
    )
    if outcome == f"the run ended with status {worker.GRADER_FAILURE_STATUS}":
        return " ".join(log.split())[-300:] or outcome
    if outcome == "the run ended with status 1" and log.startswith("bwrap:"):
        return " ".join(log.split())[:300]
    return None


def run_student(
    run: StudentRun,
    nb: nbformat.NotebookNode,
    box: sandbox.Sandbox,
    timeout: float,
    scratch: Path,
) -> None:
    """The student's run of one submission, in ``box``: fills ``run``'s answers and what
    happened."""
    work = sandbox.new_work(scratch)
    try:
        nbformat.write(nb, work / "notebooks" / run.chapter.path.name)
        before = sandbox.fingerprint(list(box.watch)) if box.watch else {}
        start = time.perf_counter()
        command = _worker(
            box.layout(work),
            run.chapter.path.name,
            timeout,
            limits=box.kind == "bubblewrap",
        )
        outcome = box.run(work, command, timeout + STARTUP_SECONDS)
        run.seconds = time.perf_counter() - start
        if (failure := _grader_failure(outcome, work)) is not None:
            raise GradingError(
                f"{run.name} was not graded: {failure}; nothing was recorded for it"
            )
        if box.watch and (
            touched := sandbox.changed(before, sandbox.fingerprint(list(box.watch)))
        ):
            raise GradingError(
                f"{run.name} changed {len(touched)} file(s) outside its folder, e.g. "
                f"{touched[:3]}: restore them (they are loaded by later kernels) "
                "before grading again"
            )
        run.ran, run.errors, note = _report(work)
        run.note = (
            note
            if note is not None
            else (
                outcome
                or "the run ended without its report (the notebook's code ended it)"
            )
        )
        names = {e.check_id: e.answers for e in run.chapter.exercises}
        for check_id in run.present:
            saved = transport.load(
                work / "grading" / "answers" / f"{check_id}.json",
                work / "grading",
                names[check_id],
            )
            if saved is not None:
                run.answers[check_id] = saved
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_checks(
    chapter: Chapter,
    runs: list[StudentRun],
    box: sandbox.Sandbox,
    timeout: float,
    scratch: Path,
) -> dict[str, dict[str, str | None]]:
    """The checks' run of ``chapter`` on the answers of ``runs``: the verdict (None:
    passed) by check id and submission."""
    work = sandbox.new_work(scratch)
    try:
        seconds = check_seconds(timeout)
        nbformat.write(
            checks_notebook(chapter, seconds), work / "notebooks" / chapter.path.name
        )
        (work / "grading" / "submitted").mkdir()
        # one file per check: a check cell parses its own answers only
        for exercise in chapter.exercises:
            check_id = exercise.check_id
            answers = {
                r.name: {check_id: r.answers[check_id]}
                for r in runs
                if check_id in r.answers
            }
            (work / "grading" / "submitted" / f"{check_id}.json").write_text(
                json.dumps(answers, allow_nan=True)
            )
        # the chapter's own run, then each check on each submission within its own
        # limit: grows with the batch
        limit = timeout + len(runs) * len(chapter.exercises) * seconds
        outcome = box.run(
            work,
            _worker(box.layout(work), chapter.path.name, limit),
            limit + STARTUP_SECONDS,
        )
        verdicts = {}
        for exercise in chapter.exercises:
            path = work / "grading" / "verdicts" / f"{exercise.check_id}.json"
            verdicts[exercise.check_id] = (
                json.loads(path.read_text()) if path.is_file() else {}
            )
        missing = [
            e.label
            for e in chapter.exercises
            if any(
                e.check_id in r.answers and r.name not in verdicts[e.check_id]
                for r in runs
            )
        ]
        if missing:
            _, errors, note = _report(work)
            why = (
                "; ".join(filter(None, [outcome, note, *list(errors.values())[:1]]))
                or "no verdicts were written"
            )
            log = (
                (work / "log.txt").read_text(errors="replace")[-500:]
                if (work / "log.txt").exists()
                else ""
            )
            raise GradingError(
                f"the checks of {chapter.path.name} did not run for "
                f"{', '.join(missing)}: {why} {log}".strip()
            )
        return verdicts
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _feedback(run: StudentRun, exercise: markup.Exercise, verdict: str) -> str:
    own = [
        e
        for gid in exercise.solution_ids
        if gid in run.cells and (e := run.errors.get(run.cells[gid]))
    ]
    if own and own[0].startswith("NotImplementedError"):
        return (
            "not answered yet (your code still raises NotImplementedError); the check "
            f"said: {verdict}"
        )
    if own:
        return f"your code raised {own[0]}; then the check said: {verdict}"
    if verdict.startswith("NameError"):
        return (
            verdict
            + " (the answer was not computed: assign it in your code for this exercise)"
        )
    return verdict


def rows_for(run: StudentRun, verdicts: dict[str, dict[str, str | None]]) -> list[Row]:
    """The grade rows of one submission, from its run and the checks' verdicts."""
    rows = []
    for exercise in run.chapter.exercises:
        points, feedback = 0.0, ""
        if exercise.check_id not in run.present:
            feedback = "the check cell of this exercise was deleted from the notebook"
        elif exercise.check_id not in run.answers:
            index = run.cells.get(exercise.check_id)
            if index in run.ran:
                saver = run.errors.get(index)
                feedback = "the answers were not saved" + (
                    f": the cell that saves them raised {saver}"
                    if saver
                    else " (the notebook's code removed or replaced them)"
                )
            else:
                feedback = (
                    f"not run: {run.note or 'the run ended before this exercise'}"
                )
        elif (verdict := verdicts[exercise.check_id][run.name]) is None:
            points = float(exercise.points)
        else:
            feedback = _feedback(run, exercise, verdict)
        rows.append(
            Row(
                run.name,
                run.path.name,
                exercise.label,
                points,
                float(exercise.points),
                feedback,
                run.sha256,
                run.chapter.digest,
            )
        )
    total = sum(r.points for r in rows)
    rows.append(
        Row(
            run.name,
            run.path.name,
            "TOTAL",
            total,
            sum(r.max_points for r in rows),
            run.note or f"ran in {run.seconds:.0f} s",
            run.sha256,
            run.chapter.digest,
        )
    )
    return rows


def broken_rows(
    name: str,
    path: Path,
    sha256: str,
    chapter: Chapter | None,
    reason: str,
    checks: str = "",
) -> list[Row]:
    """The rows of a submission that could not be run: zero points, the possible points
    where the chapter is known.

    ``checks``: the digest to record where there is no chapter (else the chapter's).
    """
    if chapter is None:
        return [Row(name, path.name, "TOTAL", 0, None, reason, sha256, checks)]
    rows = [
        Row(
            name, path.name, e.label, 0, float(e.points), reason, sha256, chapter.digest
        )
        for e in chapter.exercises
    ]
    return rows + [
        Row(
            name,
            path.name,
            "TOTAL",
            0,
            sum(r.max_points for r in rows),
            reason,
            sha256,
            chapter.digest,
        )
    ]


def _parse_row(fields: list[str], width: int = len(FIELDS)) -> Row:
    """One row of the table as written by :func:`write_table`; ``ValueError`` if it is
    not one."""
    if len(fields) != width:
        raise ValueError(f"{len(fields)} fields, not {width}")
    points, max_points = float(fields[3]), float(fields[4]) if fields[4] else None
    if not math.isfinite(points) or (
        max_points is not None and not math.isfinite(max_points)
    ):
        raise ValueError("points that are not finite numbers")
    return Row(
        fields[0],
        fields[1],
        fields[2],
        points,
        max_points,
        fields[5],
        fields[6],
        (fields[7:] or [""])[0],
    )


def read_table(out: Path) -> list[Row]:
    """The rows of an earlier grade table at ``out`` (none if there is no such file).

    A line that is not a row is refused with ``ValueError`` naming it, never dropped:
    the table is rewritten from what is read here, so a dropped row would be a lost
    grade.
    """
    if not out.exists():
        return []
    with open(out, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header not in (list(FIELDS), list(OLD_FIELDS)):
            raise ValueError(
                "out must be a grade table written by this grader or a new file, got "
                f"{str(out)!r} (its header is not {','.join(FIELDS)})"
            )
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line holds no grade
            try:
                rows.append(_parse_row(fields, len(header)))
            except ValueError as error:
                raise ValueError(
                    f"out {str(out)!r} has a line the grader cannot read, line "
                    f"{reader.line_num} ({error}: {','.join(fields)[:80]!r}); fix or "
                    "remove that line, or choose another --out (a row is never dropped)"
                ) from None
        return rows


@contextlib.contextmanager
def table_lock(out: Path):
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``.<out>.lock`` while
    grading into ``out``.

    A second grader on the same table is refused (``GradingError``) instead of rewriting
    the table from an old read.
    """
    if fcntl is None:
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GradingError(
                f"another grader is writing {str(out)!r} (it holds the lock "
                f"{str(lock)!r}): wait for it to end, then run the same command again "
                "to grade what it left"
            ) from None
        yield  # the lock goes with the file's closing, also when the process is killed


def write_table(rows: list[Row], out: Path) -> None:
    """Write the grade table atomically: a complete file or the previous one, never half
    of one."""
    temporary = out.with_name(f".{out.name}.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow(
                [
                    row.submission,
                    row.notebook,
                    row.exercise,
                    f"{row.points:g}",
                    "" if row.max_points is None else f"{row.max_points:g}",
                    row.feedback,
                    row.sha256,
                    row.checks,
                ]
            )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, out)


def check_writable(out: Path) -> None:
    """Fail now, not after grading, if the grade table cannot be written at ``out``."""
    try:
        if out.exists() and not out.is_file():
            raise OSError("it exists and is not a file")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}."):
            pass
    except OSError as error:
        raise ValueError(
            f"out must be a file the grader can write, got {str(out)!r}: {error}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _not_a_file(path: Path) -> str | None:
    """None for a regular file, else what ``path`` is (``"a FIFO"``, ...): opening a
    FIFO would wait for ever."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as error:
        return f"a file that cannot be read ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _print(rows: list[Row]) -> None:
    for row in rows[:-1]:
        if row.points < (row.max_points or 0):
            print(
                f"  {row.exercise}: {row.points:g} / {row.max_points:g}: "
                f"{row.feedback}",
                file=sys.stderr,
                flush=True,
            )
    total = rows[-1]
    possible = "?" if total.max_points is None else f"{total.max_points:g}"
    print(
        f"{total.submission}: {total.points:g} / {possible} points ({total.feedback})",
        file=sys.stderr,
        flush=True,
    )


SCRATCH_PREFIX = (
    "coursework-grade-"  # the grader's work folders in the system's temporary folder
)
SCRATCH_LOCK = (
    ".in-use"  # locked (fcntl.flock) by the grader that made the folder, while it runs
)
# seconds after which a work folder without its lock file is stale (made by an older
# grader)
UNLOCKED_AGE = 3600


@contextlib.contextmanager
def scratch_folder():
    """A fresh work folder in the system's temporary folder, locked while it is in use
    and removed afterwards.

    Stale ones first: a grader killed with ``kill -9`` cannot remove its folder, which
    holds students' files, so each start removes every ``coursework-grade-*`` folder
    whose lock no running grader holds.
    """
    removed = remove_stale_scratch()
    if removed:
        print(
            f"removed {len(removed)} work folder(s) left by a grader that was killed: "
            f"{', '.join(removed[:3])}",
            file=sys.stderr,
            flush=True,
        )
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        with open(folder / SCRATCH_LOCK, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch(parent: Path | None = None) -> list[str]:
    """Remove the grader's work folders in ``parent`` (the system's temporary folder)
    that no grader uses; list them."""
    removed = []
    for folder in sorted(
        Path(parent or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*")
    ):
        if folder.is_symlink() or not folder.is_dir() or not _stale(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def _stale(folder: Path) -> bool:
    """Whether no running grader holds ``folder``'s lock (or, without a lock file,
    whether it is over an hour old)."""
    lock = folder / SCRATCH_LOCK
    try:
        if not lock.is_file():
            return time.time() - folder.stat().st_mtime > UNLOCKED_AGE
        if fcntl is None:
            return False
        with open(lock, "a") as handle:
            # free: its grader is gone
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held by a running grader, or not ours to read
        return False


def grade_folder(
    submissions: Path,
    out: Path,
    *,
    timeout: float = 600.0,
    batch: int = 10,
    notebooks_dir: Path | None = None,
    box: sandbox.Sandbox | None = None,
) -> list[Row]:
    """Grade every notebook under ``submissions`` not yet graded in ``out``, writing
    ``out`` after each; return all rows.

    The submission name is its path without ``.ipynb``. ``box`` defaults to bubblewrap
    (``RuntimeError`` where it cannot run). ``GradingError`` stops grading (the rows
    written so far stay in ``out``).
    """
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise ValueError(
            f"submissions must be a folder of notebooks, got {str(submissions)!r}"
        )
    if not (
        isinstance(timeout, (int, float))
        and not isinstance(timeout, bool)
        and 1 <= timeout <= MAX_TIMEOUT
    ):
        raise ValueError(
            f"timeout must be a number of seconds from 1 to {MAX_TIMEOUT} (a day), got "
            f"{timeout!r}"
        )
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(
            f"batch must be a whole number of submissions >= 1, got {batch!r}"
        )
    check_writable(out)
    box = sandbox.choose("bubblewrap") if box is None else box
    with table_lock(out):
        return _grade_locked(submissions, out, timeout, batch, notebooks_dir, box)


def _grade_locked(
    submissions: Path,
    out: Path,
    timeout: float,
    batch: int,
    notebooks_dir: Path | None,
    box: sandbox.Sandbox,
) -> list[Row]:
    """:func:`grade_folder` once it holds the table's lock: read it, grade what it
    lacks, write it after each."""
    table = read_table(out)
    write_table(table, out)
    chapters = load_chapters(
        repository_root() / "notebooks" if notebooks_dir is None else notebooks_dir
    )
    unmatched = _digest_of_all(chapters)
    current = {chapter.digest for chapter in chapters.values()} | {unmatched}
    done = {
        (r.submission, r.sha256)
        for r in table
        if r.exercise == "TOTAL" and r.checks in current
    }
    pending: dict[str, list[tuple[StudentRun, nbformat.NotebookNode]]] = {}
    # every name, whatever it is: a FIFO or a folder named *.ipynb gets a row too, or
    # its student would vanish
    paths = sorted(
        p for p in submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )

    def record(rows: list[Row]) -> None:
        table[:] = [r for r in table if r.submission != rows[0].submission] + rows
        write_table(table, out)
        _print(rows)

    for path in paths:
        name = path.relative_to(submissions).with_suffix("").as_posix()
        link = path.is_symlink() or not path.resolve().is_relative_to(
            submissions.resolve()
        )
        kind = "a link" if link else _not_a_file(path)
        try:
            sha256 = "" if kind else _sha256(path)
        except OSError as error:
            kind = f"a file that cannot be read ({error.strerror})"
        sha256 = (
            sha256 or hashlib.sha256(f"{kind} {path.resolve()}".encode()).hexdigest()
        )
        if (name, sha256) in done:
            print(f"{name}: already graded in {out}", file=sys.stderr, flush=True)
            continue
        # e.g. a link to the instructor's chapter, from an unpacked archive, or a FIFO:
        # never read
        if kind:
            record(
                broken_rows(
                    name,
                    path,
                    sha256,
                    chapters.get(path.name),
                    f"the submission is {kind}, not a notebook file",
                    unmatched,
                )
            )
            continue
        if (size := path.stat().st_size) > MAX_NOTEBOOK_BYTES:
            reason = (
                f"the notebook is larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB "
                f"({size / 2**20:.0f} MiB): clear its outputs"
            )
            record(
                broken_rows(
                    name, path, sha256, chapters.get(path.name), reason, unmatched
                )
            )
            continue
        try:
            nb = nbformat.read(path, as_version=4)
            chapter = _match(nb, path.name, chapters)
            if chapter is not None:
                ready, present, cells = student_notebook(nb, chapter)
        # any unreadable file is the student's, not the grader's, problem
        except Exception as error:  # noqa: BLE001
            record(
                broken_rows(
                    name,
                    path,
                    sha256,
                    chapters.get(path.name),
                    f"could not read the notebook: {type(error).__name__}: "
                    f"{str(error)[:200]}",
                    unmatched,
                )
            )
            continue
        if chapter is None:
            record(
                broken_rows(
                    name,
                    path,
                    sha256,
                    None,
                    "not a chapter of the book (no matching name or check cells)",
                    unmatched,
                )
            )
            continue
        pending.setdefault(chapter.path.name, []).append(
            (StudentRun(name, path, sha256, chapter, present, cells), ready)
        )
    with scratch_folder() as scratch:
        for group in pending.values():
            for start in range(0, len(group), batch):
                runs, stopped = [], None
                for run, ready in group[start : start + batch]:
                    print(f"{run.name}: running ...", file=sys.stderr, flush=True)
                    try:
                        run_student(run, ready, box, timeout, Path(scratch))
                    except GradingError as error:
                        # the submissions run before it are still checked and written
                        stopped = error
                        break
                    runs.append(run)
                if runs:
                    verdicts = run_checks(
                        runs[0].chapter, runs, box, timeout, Path(scratch)
                    )
                    for run in runs:
                        record(rows_for(run, verdicts))
                if stopped is not None:
                    raise stopped
    return table


def main(argv: list[str] | None = None) -> int:
    """The command line; Ctrl-C ends it with one line (exit status 130), the graded rows
    kept in the table."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(
            "grading interrupted (Ctrl-C): the submissions graded before it are in the "
            "table; run the same command again to grade the rest",
            file=sys.stderr,
        )
        return 130


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coursework.grade",
        description=(
            "Run submitted notebooks in sandboxes, check their answers apart, write a "
            "grade table (CSV)."
        ),
    )
    parser.add_argument(
        "submissions",
        type=Path,
        help="folder of submitted notebooks (searched recursively)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("grades.csv"),
        help="CSV to write and resume (default grades.csv)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help=f"seconds allowed per notebook, 1 to {MAX_TIMEOUT} (default 600)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=10,
        help=(
            "submissions of a chapter checked in one run of the instructor's chapter "
            "(default 10)"
        ),
    )
    parser.add_argument(
        "--sandbox",
        choices=("bubblewrap", "none"),
        default="bubblewrap",
        help=(
            "bubblewrap (default; refuses to start where it cannot run) or none "
            "(grades with a warning)"
        ),
    )
    args = parser.parse_args(argv)
    try:
        box = sandbox.choose(args.sandbox)
    except RuntimeError as error:
        print(
            f"no sandbox: {error}. Without one a submission can do all of this:",
            file=sys.stderr,
        )
        print(
            "".join(f"  - {item}\n" for item in sandbox.UNPROTECTED),
            end="",
            file=sys.stderr,
        )
        print(
            "Install bubblewrap, or grade anyway with --sandbox none (only submissions "
            "you trust).",
            file=sys.stderr,
        )
        return 2
    print(f"sandbox: {box.kind}", file=sys.stderr)
    if box.kind == "none":
        print("WARNING: no sandbox. A submission can do all of this:", file=sys.stderr)
        print(
            "".join(f"  - {item}\n" for item in sandbox.UNPROTECTED),
            end="",
            file=sys.stderr,
        )
    try:
        rows = grade_folder(
            args.submissions, args.out, timeout=args.timeout, batch=args.batch, box=box
        )
    except ValueError as error:
        parser.error(str(error))
    except GradingError as error:
        print(f"grading stopped: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {sum(r.exercise == 'TOTAL' for r in rows)} notebook(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
