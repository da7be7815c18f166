"""The checks' side of grading: in a kernel that runs the instructor's chapter and no
student code.

The grader replaces each check cell of the chapter by a call to :func:`run`. There, for
every submission, the exercise's answer names are set to that submission's answers
(decoded from plain data by :mod:`coursework.transport`; a missing answer is left
undefined), the chapter's own check cell runs, hidden tests included, and its verdict is
recorded; then the chapter's own values are put back, so the cells that follow see the
chapter's context exactly as the book build does. Whatever the check reads besides the
answers (``xs``, a trained model, a helper function) is the chapter's, never a
student's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path

from coursework import transport

# holds submitted/CHECK_ID.json (the grader's) and receives verdicts/
GRADING_DIR_ENV = "COURSEWORK_GRADING_DIR"
_MISSING = object()


class CheckTimeout(BaseException):
    """A check ran past its time limit on one submission's answers (a BaseException: a
    check's ``except`` keeps it)."""


def _expire(signum: int, frame: object) -> None:
    raise CheckTimeout()


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`CheckTimeout` in this (the main) thread after ``seconds`` (None: no
    limit)."""
    if seconds is None:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(
    check_id: str,
    names: tuple[str, ...],
    source: str,
    namespace: dict,
    seconds: float | None = None,
) -> None:
    """Run the check ``source`` once per submission of ``submitted/check_id.json`` with
    its answers ``names``; save the verdicts.

    ``seconds``: the time limit of the check on each submission's answers; one that runs
    past it fails that submission's exercise only.
    """
    folder = Path(os.environ[GRADING_DIR_ENV])
    submissions = json.loads((folder / "submitted" / f"{check_id}.json").read_text())
    code = compile(source, f"<check {check_id}>", "exec")
    own = {name: namespace.get(name, _MISSING) for name in names}
    verdicts = {}
    try:
        for key, saved in submissions.items():
            answers = saved.get(check_id) if isinstance(saved, dict) else None
            if not isinstance(answers, dict):
                continue  # the submission's run never got to this exercise
            try:
                for name in names:
                    namespace.pop(name, None)
                    if name in answers:
                        namespace[name] = transport.decode(answers[name])
                with contextlib.redirect_stdout(io.StringIO()), time_limit(seconds):
                    # the instructor's check, run on data
                    exec(code, namespace)  # noqa: S102
                verdicts[key] = None
            except CheckTimeout:
                verdicts[key] = (
                    f"the check ran out of time on this answer (over {seconds:g} s): "
                    "an answer far too large or of another kind can make it slow"
                )
            # every failure of a check is a verdict
            except Exception as error:  # noqa: BLE001
                verdicts[key] = f"{type(error).__name__}: {error}".strip().rstrip(":")[
                    :2000
                ]
    finally:
        for name, value in own.items():
            namespace.pop(name, None)
            if value is not _MISSING:
                namespace[name] = value
    (folder / "verdicts").mkdir(exist_ok=True)
    (folder / "verdicts" / f"{check_id}.json").write_text(json.dumps(verdicts))
    print(f"{check_id}: checked {len(verdicts)} submission(s)")
