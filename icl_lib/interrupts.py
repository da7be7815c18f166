"""Ctrl-C on the command lines: one line and exit code 130, never a traceback, never a
record half marked.

Imports nothing heavy: :func:`quiet_start` runs before ``torch`` is imported, which
takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def quiet_start(prog: str) -> None:
    """Until :func:`take_over`: a Ctrl-C while ``prog`` loads its modules exits 130 with
    one line on stderr.

    A SIGINT that the shell set to be ignored (a background job) stays ignored.
    """
    if _main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_starting(prog))


def _stop_starting(prog: str):  # noqa: ANN202 - a signal handler
    def stop(signum: int, frame: FrameType | None) -> None:
        sys.stderr.write(
            f"error: interrupted while {prog} was starting; nothing was written: run "
            "the same command again\n"
        )
        sys.stderr.flush()
        # inside an import: no cleanup to do, and none that a traceback could interrupt
        os._exit(130)

    stop.quiet_start = True  # type: ignore[attr-defined]
    return stop


def take_over() -> None:
    """From here on a Ctrl-C raises ``KeyboardInterrupt``, which the command handles (if
    :func:`quiet_start` ran)."""
    if _main_thread() and getattr(
        signal.getsignal(signal.SIGINT), "quiet_start", False
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the block: while an interrupted run marks its record, a second
    one must not stop it."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
