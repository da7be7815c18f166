"""The book's Python code fits 88 columns, like the chapters' code.

Readers and reviewers read the library, the grader, the tools, the benchmarks, the tests
and the book's extensions at 88 columns, the width of the chapters' code
(tests/test_chapter_style.py). The code is formatted with ``ruff format``
(``[tool.ruff]`` in pyproject.toml); ruff leaves long comments, docstrings and strings
alone, so they are wrapped by hand, and this test reads the files and needs no ruff. A
line may be wider only where it cannot be broken:

* it holds a URL (``http``);
* it is a ``def`` with nothing to wrap: a test's long name, which only a rename would
  shorten;
* only a ``# noqa`` or ``# type:`` pragma runs past 88 columns: the pragma stays on the
  line it silences (ruff's formatter does not count it either);
* it is one of :data:`ALLOWED`, each with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ["icl_lib", "coursework", "tools", "benchmarks", "tests", "book/_ext"]
WIDTH = 88

BARE_DEF = re.compile(r"\s*(?:async )?def \w+\((?:\):)?")
PRAGMA = re.compile(r"(?P<code>.*?)\s+# (?:noqa|type:)")

# (file, the start of the stripped line): lines that stay wider than WIDTH.
ALLOWED = [
    # argparse's description is the docstring's first line (__doc__.split("\n")[0])
    ("tools/record_replay_kernels.py", '"""Replay committed runs here'),
    # a line of the setup cell's template: 88 columns in the chapters, where its
    # doubled braces are single
    ("tools/setup_cell.py", 'f"installed nothing (torch {{torch.__version__}}'),
    # one f-string field each: its expression cannot be split across lines
    ("benchmarks/train_throughput.py", 'f"{sum(r.mean_loss * r.steps for r in rs)'),
    ("coursework/answers.py", 'f"{np.unravel_index(worst, reference.shape)'),
    # a comment of the docstring's TOML example, which breaks only at its own "#"
    ("icl_lib/sweep.py", "# one run per seed: the config's own seed keeps the stem"),
]


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def exempt(path: Path, line: str) -> bool:
    """True if ``line`` of ``path`` may be wider than WIDTH (see the module's
    docstring)."""
    pragma = PRAGMA.match(line)
    name = path.relative_to(ROOT).as_posix()
    return (
        "http" in line
        or BARE_DEF.fullmatch(line) is not None
        or (pragma is not None and len(pragma.group("code")) <= WIDTH)
        or any(name == f and line.strip().startswith(s) for f, s in ALLOWED)
    )


def long_lines(path: Path) -> list[str]:
    """``file:line: length`` for every line of ``path`` wider than WIDTH and not
    exempt."""
    found = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > WIDTH and not exempt(path, line):
            found.append(f"{path.relative_to(ROOT)}:{number}: {len(line)} columns")
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_line_fits_88_columns(folder):
    assert files(folder), f"no Python files in {folder}"
    found = [line for path in files(folder) for line in long_lines(path)]
    assert not found, (
        f"{folder}: {len(found)} lines wider than {WIDTH} columns:\n" + "\n".join(found)
    )


def test_every_allowed_line_is_still_there_and_still_wide():
    """The allow-list names only lines that need it: a line since wrapped leaves it."""
    for name, start in ALLOWED:
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        wide = [line for line in lines if line.strip().startswith(start)]
        assert len(wide) == 1 and len(wide[0]) > WIDTH, (name, start, wide)
