"""The audit log's watch over the request path: every mutating request is recorded with
its caller, the plugin owning its route and the status it was answered with.

Quart runs the after-request functions for every answer, also those of error handlers and
of the 500 it makes when an after-request function or an error handler raises; but not
when the client goes away (the handler is cancelled), nor when an after-request function
raises a second time while the 500 is finalised. The teardown function, which always
runs, records those: status 499 for a client that went away, the request limits' answer
(413, 408, 503) for a body they stopped, 500 otherwise. Entries are queued: the audit
log's writer stores them in batches, off the request (services/audit.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from quart import Quart, g, request

from .limits import REFUSED
from .routes import CORE, owner_of
from .security import STATE_CHANGING
from .services.audit import AuditLog
from .services.audit_entries import caller_fields

CLIENT_CLOSED = 499  # the status recorded when the client went away before the answer
_AUDITED = "courtyard_audited"  # flag on `g`: this request's entry is queued


def watch_requests(audit: AuditLog, app: Quart) -> RequestAudit | None:
    """Watch `app`'s mutating requests; None while the audit log is off.

    The app's after-request function calls `RequestAudit.after` for POST, PUT, PATCH and
    DELETE; a teardown function catches those it never saw.
    """
    if not audit.enabled:
        return None
    watcher = RequestAudit(audit, app)
    app.teardown_request(watcher.teardown)
    return watcher


class RequestAudit:
    """Records one Quart app's mutating requests (see the module docstring)."""

    def __init__(self, audit: AuditLog, app: Quart) -> None:
        self._audit = audit

        def plugin_of() -> str | None:
            rule = request.url_rule
            owner = None if rule is None else owner_of(app, rule)
            return None if owner == CORE else owner

        self._plugin_of: Callable[[], str | None] = plugin_of

    def _entry(self, status: int) -> dict[str, Any]:
        g.setdefault(_AUDITED, True)
        return {
            "time": datetime.now(UTC),
            "kind": "request",
            **caller_fields(),
            "plugin": self._plugin_of(),
            "status": status,
            "action": None,
            "target": None,
            "details": None,
        }

    async def after(self, status: int) -> None:
        """Record the current (mutating) request, answered with `status`."""
        if _AUDITED not in g:
            await self._audit.add(self._entry(status))

    async def teardown(self, exc: BaseException | None) -> None:
        """Record a mutating request that `after` never saw."""
        if request.method in STATE_CHANGING and _AUDITED not in g:
            # The request limits (limits.py) answered while the body arrived: the route
            # was stopped as if the client had gone, but the client got that answer.
            status = cast(int | None, request.scope.get(REFUSED))  # set by the limits
            if status is None:
                status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500
            self._audit.add_nowait(self._entry(status))
