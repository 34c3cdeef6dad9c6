"""Request-path hooks that concern some paths only.

`courtyard_request` and `courtyard_response` run on every request the runtime serves, so
what they cost, every route pays. An implementation that concerns only some paths (its own
API's envelope, its own rate limits) says so with `only_under`, and the runtime skips it
for every other path: no call, no coroutine, no look at the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PATHS_ATTRIBUTE = "__courtyard_only_under__"


def only_under(*prefixes: str) -> Callable[[F], F]:
    """Call the decorated `courtyard_request` or `courtyard_response` implementation only
    for a request whose path is one of `prefixes` or lies under one (`/api/v1` covers
    `/api/v1` and `/api/v1/jobs`, not `/api/v10`)::

        @hookimpl
        @only_under("/api/v1")
        def courtyard_response(ctx, request, response): ...

    :raises ValueError: a prefix that is not an absolute path without a trailing slash.
    """
    for prefix in prefixes:
        if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/"):
            raise ValueError(f"only_under: {prefix!r} must start with / and not end with /")
    if not prefixes:
        raise ValueError("only_under: name at least one path")

    def mark(function: F) -> F:
        setattr(function, PATHS_ATTRIBUTE, prefixes)
        return function

    return mark


def hook_paths(function: Callable[..., Any]) -> tuple[str, ...] | None:
    """The prefixes `function` was marked with (`only_under`), or None: every path."""
    return getattr(function, PATHS_ATTRIBUTE, None)


__all__ = ["hook_paths", "only_under"]
