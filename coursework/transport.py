"""Answers as plain data: how a submission's answers travel from its own kernel to the
kernel of the checks.

The student's kernel saves each exercise's named answers with :func:`save` (the grader
puts that call where the exercise's check cell was); the checks' kernel gets them back
with :func:`decode`. On the way they are JSON: numbers, arrays of numbers (shape and
values), strings, booleans, None, and a sympy expression as its values at N = 1, 2, ...,
10 (:data:`POINTS`). Nothing is pickled and no string is evaluated, so whatever a
student's code puts there is at worst a wrong answer. A value that is none of these, or
a file that does not read as this format, becomes an :class:`Unreadable`, which every
check of :mod:`coursework.answers` rejects with a message.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# where a sympy expression is evaluated (as coursework.answers.expression does)
POINTS = tuple(range(1, 11))
# entries of one array answer (the largest of the book's answers has 10,000)
MAX_ENTRIES = 100_000
MAX_TEXT = 10_000  # characters of one string answer
# one exercise's saved answers (100,000 numbers are about 2.5 MB of JSON)
MAX_FILE_BYTES = 8 * 2**20
INT_LIMIT = 2**63  # integers must fit numpy's int64, as every check reads them
# where save() writes, set by the grader in the student's kernel
ANSWERS_DIR_ENV = "COURSEWORK_ANSWERS_DIR"


@dataclass(frozen=True)
class Unreadable:
    """An answer that is not plain data: what it was, for the check's message (e.g. ``"a
    dict (...): {'a': 1}"``)."""

    text: str


@dataclass(frozen=True)
class Sampled:
    """A sympy expression, as its values at :data:`POINTS` of its one free symbol (or a
    constant's value)."""

    symbols: tuple[str, ...]
    values: tuple[float, ...]


def _expression(value: Any) -> dict:
    symbols = sorted(value.free_symbols, key=str)
    if len(symbols) > 1:
        return {
            "type": "expression",
            "symbols": [str(s) for s in symbols],
            "values": [],
        }
    try:
        values = [
            float(value.subs(symbols[0], n)) if symbols else float(value)
            for n in POINTS
        ]
    except (TypeError, ValueError, AttributeError):
        return _unreadable(
            value, "a sympy expression that does not evaluate to numbers"
        )
    return {
        "type": "expression",
        "symbols": [str(s) for s in symbols],
        "values": values,
    }


def _unreadable(value: Any, why: str) -> dict:
    try:
        text = repr(value)[:80]
    except Exception:  # noqa: BLE001 - a student's object may fail in __repr__
        text = "?"
    return {
        "type": "unreadable",
        "text": f"a {type(value).__name__[:80]} ({why}): {text}",
    }


def encode(value: Any) -> dict:
    """``value`` as JSON-ready plain data (see the module's docstring); never raises for
    a student's value."""
    try:
        if value is None:
            return {"type": "none"}
        if isinstance(value, (bool, np.bool_)):
            return {"type": "bool", "value": bool(value)}
        if isinstance(value, (int, np.integer)):
            return {"type": "int", "value": int(value)}
        if isinstance(value, (float, np.floating)):
            return {"type": "float", "value": float(value)}
        if isinstance(value, str):
            return {"type": "str", "value": value[:MAX_TEXT]}
        # sympy, without importing it here
        if hasattr(value, "free_symbols") and hasattr(value, "subs"):
            return _expression(value)
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            value = value.detach().cpu().numpy()
        if isinstance(value, (list, tuple, np.ndarray)):
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                return _unreadable(value, "not an array of real numbers")
            if array.size > MAX_ENTRIES:
                return _unreadable(value, f"more than {MAX_ENTRIES} entries")
            kind = {"b": "bool", "i": "int", "u": "int", "f": "float"}[array.dtype.kind]
            return {
                "type": "array",
                "dtype": kind,
                "shape": list(array.shape),
                "values": array.ravel().tolist(),
            }
        return _unreadable(
            value, "not a number, an array, a string or a sympy expression"
        )
    except Exception as error:  # noqa: BLE001 - a student's object may raise anywhere
        return _unreadable(value, f"could not be read ({type(error).__name__})")


def _number(item: Any) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool)


def _integer(item: Any) -> bool:
    """An int that fits the checks' int64 (a file may hold ``2**64`` or a 400-digit
    number)."""
    return (
        isinstance(item, int)
        and not isinstance(item, bool)
        and -INT_LIMIT <= item < INT_LIMIT
    )


def _shape(shape: Any, values: Any) -> bool:
    """A shape numpy can make of ``values``: at most 32 axes, each at most
    :data:`MAX_ENTRIES` (``[0, 2**70]`` is not)."""
    return (
        isinstance(shape, list)
        and len(shape) <= 32
        and all(_integer(n) and 0 <= n <= MAX_ENTRIES for n in shape)
        and isinstance(values, list)
        and len(values) <= MAX_ENTRIES
        and math.prod(shape) == len(values)
    )


def _array(data: dict) -> Any:
    """The array of an ``"array"`` answer, None if any part of it is malformed (NaN in
    an int array, 10**400, ...)."""
    shape, values, dtype = data.get("shape"), data.get("values"), data.get("dtype")
    if not _shape(shape, values):
        return None
    accepted = {
        "bool": lambda v: isinstance(v, bool),
        "int": _integer,
        "float": lambda v: _number(v) and (isinstance(v, float) or _integer(v)),
    }.get(dtype)
    if accepted is None or not all(accepted(v) for v in values):
        return None
    return np.array(
        values, dtype={"bool": bool, "int": np.int64, "float": float}[dtype]
    ).reshape(shape)


def decode(data: Any) -> Any:
    """The answer that :func:`encode` gave ``data`` for; an :class:`Unreadable` for
    anything malformed. Never raises: ``data`` comes from a file that a submission's
    code may have written.
    """
    try:
        return _decode(data)
    except Exception:  # noqa: BLE001 - whatever the file holds costs that answer only
        return Unreadable(_BAD)


_BAD = "a saved answer that is not in the grader's format"


def _decode(data: Any) -> Any:
    bad = Unreadable(_BAD)
    if not isinstance(data, dict):
        return bad
    kind = data.get("type")
    value = data.get("value")
    if kind == "none":
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return (
            value
            if _integer(value)
            else Unreadable("an integer too large for the checks (at least 2**63)")
        )
    if kind == "float" and (isinstance(value, float) or _integer(value)):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value[:MAX_TEXT]
    if kind == "expression":
        symbols, values = data.get("symbols"), data.get("values")
        if (
            isinstance(symbols, list)
            and len(symbols) <= 32
            and all(isinstance(s, str) for s in symbols)
            and isinstance(values, list)
            and all(isinstance(v, float) or _integer(v) for v in values)
            and len(values) in (0, len(POINTS))
        ):
            return Sampled(
                tuple(s[:80] for s in symbols), tuple(float(v) for v in values)
            )
        return bad
    if kind == "array":
        array = _array(data)
        return bad if array is None else array
    if kind == "unreadable" and isinstance(data.get("text"), str):
        return Unreadable(data["text"][:200])
    return bad


def save(check_id: str, names: tuple[str, ...], namespace: dict) -> None:
    """Write the answers ``names`` of ``namespace`` (missing ones left out) to
    ``$COURSEWORK_ANSWERS_DIR/check_id.json``."""
    folder = Path(os.environ[ANSWERS_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    answers = {name: encode(namespace[name]) for name in names if name in namespace}
    temporary = folder / f".{check_id}.json.tmp"
    temporary.write_text(json.dumps(answers, allow_nan=True))
    os.replace(temporary, folder / f"{check_id}.json")
    print(f"answers saved for grading: {', '.join(answers) or 'none'}")


def read_plain_file(path: Path, folder: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link) inside ``folder`` of
    at most ``limit`` bytes, else None.

    For files that a submission's code could have written: a link to another file is
    never followed.
    """
    try:
        if not Path(os.path.realpath(path)).is_relative_to(
            Path(os.path.realpath(folder))
        ):
            return None
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        status = os.fstat(descriptor)
        if not (status.st_mode & 0o170000 == 0o100000) or status.st_size > limit:
            return None
        with os.fdopen(descriptor, "rb") as handle:
            descriptor = -1
            return handle.read(limit + 1)[:limit]
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def load(path: Path, folder: Path, names: tuple[str, ...]) -> dict[str, dict] | None:
    """The saved answers ``names`` in ``path`` (written by a submission's code),
    re-encoded; None if there is no such file.

    Every value is decoded and encoded again, so what reaches the checks is always in
    the grader's format.
    """
    raw = read_plain_file(path, folder, MAX_FILE_BYTES)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        data = {name: None for name in names}  # every answer unreadable
    return {name: _safe_reencode(decode(data[name])) for name in names if name in data}


def _safe_reencode(value: Any) -> dict:
    try:
        return _reencode(value)
    # an answer that cannot be written again costs that answer only
    except Exception:  # noqa: BLE001
        return {"type": "unreadable", "text": _BAD}


def _reencode(value: Any) -> dict:
    if isinstance(value, Unreadable):
        return {"type": "unreadable", "text": value.text}
    if isinstance(value, Sampled):
        return {
            "type": "expression",
            "symbols": list(value.symbols),
            "values": list(value.values),
        }
    return encode(value)
