"""Checks for the exercises' autograded cells: compare an answer with the solution, with
a tolerance, and say what is wrong (missing, not numbers, shape, not finite, sign,
scale, offset, too large or too small), never just "wrong".

Every check raises ``AssertionError`` with a message for the student when the answer is
wrong and returns ``None`` otherwise; the grader shows the message in its feedback
column. The expected value never appears in a message. When grading, the answers arrive
as plain data (:mod:`coursework.transport`): arrays, numbers, strings, a sympy
expression's values at N = 1..10, or an :class:`~coursework.transport.Unreadable` for
anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coursework.transport import POINTS, Sampled, Unreadable


def _as_array(name: str, answer: Any) -> np.ndarray:
    """``answer`` as a float array (numbers, lists, numpy arrays, torch tensors, sympy
    numbers), else a message."""
    if answer is None:
        raise AssertionError(
            f"`{name}` is None: assign your answer to `{name}` (a function without "
            "`return` gives None)"
        )
    if isinstance(answer, Unreadable):
        raise AssertionError(f"`{name}` should hold numbers, got {answer.text}")
    if hasattr(answer, "detach"):  # a torch tensor, without importing torch here
        answer = answer.detach().cpu().numpy()
    try:
        array = np.asarray(answer, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise AssertionError(
            f"`{name}` should hold numbers, got a {type(answer).__name__}: "
            f"{answer!r:.80}"
        ) from None
    return array


def shape(name: str, answer: Any, expected_shape: tuple[int, ...]) -> np.ndarray:
    """Check that ``answer`` is finite numbers of shape ``expected_shape`` (``()`` for
    one number); return it as an array."""
    array = _as_array(name, answer)
    expected_shape = tuple(expected_shape)
    if array.shape != expected_shape:
        hint = ""
        if array.squeeze().shape == expected_shape:
            hint = " (extra axes of length 1: squeeze them)"
        elif array.size == int(np.prod(expected_shape)):
            hint = (
                " (the right number of entries in another layout: check the order of "
                "your loops, or reshape)"
            )
        elif expected_shape and array.ndim == len(expected_shape):
            hint = (
                " (one entry per value of the grid the exercise gives: "
                f"{expected_shape[0]} values along the first axis)"
            )
        raise AssertionError(
            f"`{name}` has shape {array.shape}, expected {expected_shape}{hint}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        where = np.argwhere(bad)[0].tolist() if array.ndim else []
        raise AssertionError(
            f"`{name}` contains {int(bad.sum())} non-finite value(s) (nan or inf), the "
            f"first at index {where}: look for a division by zero or an empty mean"
        )
    return array


def close(
    name: str, answer: Any, expected: Any, *, rtol: float, atol: float = 0.0
) -> None:
    """Check ``|answer - expected| <= atol + rtol |expected|`` entrywise, after checking
    shape and finiteness.

    When the check fails, the message says whether the answer has the wrong sign, is off
    by a constant factor (a missing normalisation) or by a constant offset, or else
    where it is too large or too small and by how much.
    """
    reference = np.asarray(expected, dtype=float)
    array = shape(name, answer, reference.shape)
    allowed = atol + rtol * np.abs(reference)
    error = array - reference
    if np.all(np.abs(error) <= allowed):
        return
    tolerance = f"relative tolerance {rtol:g}" + (
        f", absolute tolerance {atol:g}" if atol else ""
    )
    if np.all(np.abs(array + reference) <= allowed) and np.any(reference != 0):
        raise AssertionError(
            f"`{name}` has the wrong sign: it is close to minus the expected value "
            f"({tolerance})"
        )
    norm = float(np.sum(reference * reference))
    # for one number every wrong answer is "a factor" off: said below instead
    if norm > 0 and reference.size > 1:
        # the least-squares factor c in answer ~ c * expected
        factor = float(np.sum(array * reference)) / norm
        if (
            factor != 0
            and np.all(np.abs(array - factor * reference) <= allowed)
            and abs(factor - 1) > rtol
        ):
            raise AssertionError(
                f"`{name}` is off by a constant factor of about {factor:.3g} (answer / "
                "expected): check a normalisation (dividing by d, by the zero "
                "predictor's error, by the number of prompts) or a scale factor "
                f"({tolerance})"
            )
    if reference.size > 1:
        offset = float(np.mean(error))
        if np.all(np.abs(error - offset) <= allowed):
            raise AssertionError(
                f"`{name}` is off by a constant offset of about {offset:+.3g} at every "
                f"entry ({tolerance})"
            )
    wrong = np.abs(error) > allowed
    worst = int(
        np.argmax(np.where(wrong, np.abs(error) / np.maximum(allowed, 1e-300), 0.0))
    )
    relative = float(
        np.abs(error.flat[worst]) / max(abs(float(reference.flat[worst])), 1e-300)
    )
    direction = "too large" if error.flat[worst] > 0 else "too small"
    where = (
        ""
        if reference.ndim == 0
        else (
            f" at {int(wrong.sum())} of {reference.size} entries, worst at index "
            f"{np.unravel_index(worst, reference.shape) if reference.ndim > 1 else worst}"
        )
    )
    ratio = (
        float(array.flat[worst] / reference.flat[worst])
        if reference.flat[worst] != 0
        else 0.0
    )
    times = (
        f"; about {ratio:.3g} times the expected value: a missing factor?"
        if ratio >= 2 or 0 < ratio <= 0.5
        else ""
    )
    raise AssertionError(
        f"`{name}` is {direction}{where}: off by {relative:.1%} of the expected "
        f"value{times} ({tolerance})"
    )


def equal(name: str, answer: Any, expected: Any) -> None:
    """Check that ``answer`` equals ``expected`` exactly (integers, labels): say whether
    it is too large or too small."""
    if answer is None:
        raise AssertionError(f"`{name}` is None: assign your answer to `{name}`")
    if isinstance(expected, (int, np.integer)) and not isinstance(expected, bool):
        try:
            value = float(answer)
        except (TypeError, ValueError, OverflowError):
            kind = (
                answer.text
                if isinstance(answer, Unreadable)
                else f"a {type(answer).__name__}"
            )
            raise AssertionError(f"`{name}` should be an integer, got {kind}") from None
        if value != int(expected):
            direction = "too large" if value > int(expected) else "too small"
            raise AssertionError(f"`{name}` = {answer!r} is {direction}")
        return
    if answer != expected:
        raise AssertionError(f"`{name}` = {answer!r} is not the expected answer")


def within(name: str, answer: Any, low: float, high: float, why: str) -> None:
    """Check ``low <= answer <= high`` for one number; ``why`` says what the range means
    (shown when it fails)."""
    value = float(shape(name, answer, ()))
    if not low <= value <= high:
        direction = "too large" if value > high else "too small"
        raise AssertionError(f"`{name}` = {value:.4g} is {direction}: {why}")


def one_of(name: str, answer: Any, values: Any, why: str) -> None:
    """Check that ``answer`` is one number equal (to a relative 1e-9) to one of
    ``values``, the grid an exercise gives."""
    value = float(shape(name, answer, ()))
    if not np.any(
        np.isclose(value, np.asarray(values, dtype=float), rtol=1e-9, atol=0.0)
    ):
        raise AssertionError(
            f"`{name}` = {value:.4g} is not one of the values the exercise gives: {why}"
        )


def integers(name: str, answer: Any, expected_shape: tuple[int, ...]) -> np.ndarray:
    """Check that ``answer`` holds whole numbers (counts, sizes, indices) of shape
    ``expected_shape``; return them."""
    array = shape(name, answer, expected_shape)
    fractional = array != np.round(array)
    if fractional.any():
        where = f" at index {np.argwhere(fractional)[0].tolist()}" if array.ndim else ""
        raise AssertionError(
            f"`{name}` should hold whole numbers (it counts), got "
            f"{float(array[fractional][0]):.4g}{where}"
        )
    return array


def all_within(name: str, answer: Any, low: float, high: float, why: str) -> None:
    """Check ``low <= entry <= high`` for every entry of ``answer`` (finite numbers);
    ``why`` says what the range means."""
    array = _as_array(name, answer)
    array = shape(name, array, array.shape)
    outside = (array < low) | (array > high)
    if outside.any():
        index = np.argwhere(outside)[0].tolist() if array.ndim else []
        value = float(array[tuple(index)]) if array.ndim else float(array)
        direction = "too large" if value > high else "too small"
        raise AssertionError(
            f"`{name}` is {direction} at {int(outside.sum())} of {array.size} entries, "
            f"the first at index {index} ({value:.4g}): {why}"
        )


def sympy_expression(name: str, answer: Any) -> None:
    """Check that ``answer`` is a sympy expression (when grading: its values at
    N = 1..10, as the grader sends it)."""
    if not isinstance(answer, Sampled) and not (
        hasattr(answer, "free_symbols") and hasattr(answer, "subs")
    ):
        kind = (
            answer.text
            if isinstance(answer, Unreadable)
            else f"a {type(answer).__name__}"
        )
        raise AssertionError(f"`{name}` should be a sympy expression in N, got {kind}")


def expression(name: str, answer: Any, expected: Any, *, rtol: float = 1e-9) -> None:
    """Check a sympy expression in one free symbol against ``expected`` by evaluating
    both at 1, 2, ..., 10.

    ``answer`` may be the expression or, when grading, its values there (a
    :class:`~coursework.transport.Sampled`).
    """
    sympy_expression(name, answer)
    free = (
        list(answer.symbols)
        if isinstance(answer, Sampled)
        else sorted(answer.free_symbols, key=str)
    )
    free_expected = sorted(getattr(expected, "free_symbols", set()), key=str)
    if len(free) > 1:
        raise AssertionError(
            f"`{name}` should depend on one symbol only, it depends on "
            f"{[str(s) for s in free]}"
        )

    def values(expr: Any, symbols: list) -> list[float]:
        return [
            float(expr.subs(symbols[0], n)) if symbols else float(expr) for n in POINTS
        ]

    try:
        got = (
            list(answer.values) if isinstance(answer, Sampled) else values(answer, free)
        )
    except (TypeError, ValueError, AttributeError):
        raise AssertionError(
            f"`{name}` should be a sympy expression that evaluates to numbers, got "
            f"{answer!r:.80}"
        ) from None
    if not got:
        raise AssertionError(
            f"`{name}` should be a sympy expression that evaluates to numbers at N = "
            "1..10"
        )
    close(f"{name} at N = 1..10", got, values(expected, free_expected), rtol=rtol)
