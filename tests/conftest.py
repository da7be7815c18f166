"""Shared settings for the icl_lib unit tests: a headless matplotlib backend, a fixed
hypothesis profile, and a check that the whole session leaves the committed runs in
``checkpoints/`` byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # headless: the plotting tests must never need a display

from hypothesis import settings  # noqa: E402

# Property tests: few examples, no deadline (the first call of a torch op is slow), and
# derandomised so that the examples, like every other number in the suite, are the same
# from run to run (and no example database is written).
settings.register_profile(
    "icl_lib", max_examples=25, deadline=None, derandomize=True, database=None
)
settings.load_profile("icl_lib")


CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
_CHECKPOINTS_KEY = pytest.StashKey[dict]()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pytest_sessionstart(session) -> None:
    session.config.stash[_CHECKPOINTS_KEY] = (
        _digest(CHECKPOINTS) if CHECKPOINTS.is_dir() else {}
    )


def pytest_sessionfinish(session, exitstatus) -> None:
    before = session.config.stash.get(_CHECKPOINTS_KEY, None)
    if before is None:
        return
    after = _digest(CHECKPOINTS) if CHECKPOINTS.is_dir() else {}
    changed = sorted(
        name
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    )
    if changed:
        print(
            "\nerror: the test session changed the committed runs in checkpoints/: "
            f"{changed[:10]}"
        )
        session.exitstatus = 1
