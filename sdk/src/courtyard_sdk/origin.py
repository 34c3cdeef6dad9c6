"""Routes that clients other than browsers call: state changes without an `Origin` header.

Browsers send `Origin` with every POST, PUT, PATCH and DELETE, so a state-changing request
without one comes from a program (a CLI, a worker, a client library). The runtime refuses
such a request when it carries no verified credential, unless it names itself internal
(`X-Courtyard-Internal: true`) or its route accepts programs as they are: mark those routes
with `allow_without_origin`. A present `Origin` that is not the server's own is refused
everywhere, marked or not (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

NO_ORIGIN_ATTRIBUTE = "__courtyard_allow_without_origin__"
INTERNAL_HEADERS = ("X-Courtyard-Internal", "X-Buntime-Internal")
"""The headers by which a program without `Origin` says it is internal (`true`); a CORS
preflight never allows them, so no page on another site can send them."""


def allow_without_origin(view: F) -> F:
    """Let a state-changing request with no `Origin` header and no credential reach `view`.

    Use it for routes that documented non-browser clients call as they are (a queue's
    enqueue route posted to by a client library that sends only its key), and say why
    in the plugin's docs. Put it below the route decorator::

        @bp.post("/queue/add")
        @allow_without_origin
        async def add() -> dict: ...
    """
    setattr(view, NO_ORIGIN_ATTRIBUTE, True)
    return view


def allows_without_origin(view: Callable[..., Any] | None) -> bool:
    """Whether `view` was marked with `allow_without_origin`."""
    return bool(getattr(view, NO_ORIGIN_ATTRIBUTE, False))


__all__ = ["INTERNAL_HEADERS", "allow_without_origin", "allows_without_origin"]
