"""Times and JSON columns, as RustCI's runner API shows them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def iso(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (`2024-01-15T10:30:00Z`), to the millisecond when
    there is a fraction; None stays None."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """An RFC 3339 time (or Unix seconds) as Unix seconds.

    :raises ValueError: for anything else, or a time without its offset.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("an ISO 8601 time needs its offset (Z for UTC)")
    return moment.timestamp()


def dumps(value: Any) -> str:
    """Compact JSON for a column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None, default: Any = None) -> Any:
    """A JSON column's value (`default` for NULL)."""
    return default if text is None else json.loads(text)
