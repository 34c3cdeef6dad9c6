"""The bounds of every number the queues plugin accepts, and the checks that enforce them.

Each number a client or a configuration gives must be finite and within these bounds
before anything is stored: a stored `Infinity` or a time past year 9999 cannot be shown
again, so a single such task would break every listing of its queue. docs/queues.md lists
them ("Limits").
"""

from __future__ import annotations

import math
from typing import Any

MAX_SECONDS = 365 * 86400  # every duration: timeouts, delays, TTLs, retentions (365 days)
MAX_RETRY = 100  # retries of one task: 2**100 backoff steps is already far past the cap
MAX_PRIORITY = 1000  # a sub-queue's priority (weights are summed as floats)
MAX_CONCURRENCY = 10_000  # a worker's concurrency (an integer column)
MAX_EXCHANGE = 1000  # reports, and tasks to lease, in one `POST /worker/batch`
MAX_UNIX = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last time an answer can show
MAX_DEPTH = 64  # nesting of arrays and objects in a body (payloads and results included)
MAX_CURSOR_DIGITS = 18  # a listing's cursor: a 64-bit row number or offset


def is_finite_number(value: Any) -> bool:
    """Whether `value` is an int or float (not a bool) that is finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_seconds(name: str, value: float, *, allow_zero: bool = True) -> float:
    """`value` if it is a finite number of seconds within [0, MAX_SECONDS] (or (0, ...]).

    :raises ValueError: naming `name` and the bound.
    """
    if not is_finite_number(value):
        raise ValueError(f"{name} must be a finite number of seconds")
    if value < 0 or (not allow_zero and value == 0):
        raise ValueError(f"{name} must be {'0 or more' if allow_zero else 'more than 0'} seconds")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS} seconds (365 days)")
    return float(value)


def json_depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in `value` nest deeper than `limit` (walked without
    recursion, so that no input can exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def bad_text(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored, or None: a string (or an object key)
    holding a lone surrogate (`"\\ud800"`), which no database or UTF-8 answer can hold."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: list[str] = [item]
        elif isinstance(item, dict):
            strings = [k for k in item if isinstance(k, str)]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (such as \\ud800): not valid Unicode"
    return None


def check_json(value: Any, name: str = "payload") -> None:
    """Refuse a value the routes' body reader would have refused: non-finite numbers,
    nesting deeper than `MAX_DEPTH`, lone surrogates (for values that come from Python,
    such as another plugin's `Queues.enqueue`, not from a request body).

    :raises ValueError: naming `name`.
    """
    if json_depth_exceeds(value):
        raise ValueError(f"{name} nests deeper than {MAX_DEPTH} levels")
    problem = bad_text(value)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{name} holds a number that is not finite (NaN or infinity)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
