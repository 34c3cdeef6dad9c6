"""`courtyard audit list`: read a running server's audit log (`GET /api/audit/`).

A table for humans, `--json` for scripts; `--all` follows `next_cursor` to the end.
Errors are printed as the other remote commands print them (see errors.py).
"""

from __future__ import annotations

from typing import Any

import click

from .client import RemoteError, Server
from .errors import reported
from .options import json_option, remote_options
from .output import Column, field, note, print_rows

PATH = "/api/audit/"
# (option name, query parameter, help)
_FILTERS = (
    ("identity", "identity", "Only this identity (the key id, token subject, ...)."),
    ("tenant", "tenant", "Only this tenant's entries."),
    ("kind", "kind", "request (mutating requests) or event (plugins' domain events)."),
    ("method", "method", "Only this HTTP method (POST, PUT, PATCH, DELETE)."),
    ("status", "status", "Only this status (404) or class of statuses (5xx)."),
    ("path", "path", "Only paths starting with this prefix (/api/plugins)."),
    ("action", "action", "Only this domain event action (release.promoted)."),
    ("plugin", "plugin", "Only entries of this plugin's routes or events."),
    ("request_id", "request_id", "Only the entries of this request id."),
    ("since", "since", "From this ISO 8601 time on (2025-01-31T00:00:00Z)."),
    ("until", "until", "Before this ISO 8601 time."),
)


def _filter_options(func: Any) -> Any:
    for name, _, text in reversed(_FILTERS):
        func = click.option(f"--{name.replace('_', '-')}", name, help=text)(func)
    return func


def _what(entry: dict[str, Any]) -> str:
    """A request's `METHOD path`, or an event's `action target`."""
    if entry.get("kind") == "event":
        return " ".join(str(v) for v in (entry.get("action"), entry.get("target")) if v)
    return f"{entry.get('method') or ''} {entry.get('path') or ''}".strip()


_COLUMNS = (
    Column("Id", lambda entry: str(entry.get("id", ""))),
    Column("Time", lambda entry: str(entry.get("time", ""))),
    Column("Identity", field("identity", "-")),
    Column("Tenant", field("tenant", "-")),
    Column("What", _what),
    Column("Status", field("status", "-")),
    Column("Plugin", field("plugin", "-")),
)


def _page(body: Any) -> tuple[list[dict[str, Any]], str | None]:
    entries = body.get("entries") if isinstance(body, dict) else None
    cursor = body.get("next_cursor") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RemoteError("BAD_RESPONSE", "expected {'entries': [...]}: is --url right?")
    if cursor is not None and not isinstance(cursor, str):
        raise RemoteError("BAD_RESPONSE", "next_cursor is not a string: is --url right?")
    return entries, cursor


@click.group()
def audit() -> None:
    """Read the audit log of a running server."""


@audit.command("list")
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(1, 500),
    default=50,
    show_default=True,
    help="Entries per page (the server's maximum is 500).",
)
@click.option("--cursor", help="Start after this page: the next_cursor of the previous one.")
@click.option("--all", "follow", is_flag=True, help="Follow next_cursor to the oldest entry.")
@remote_options()
@json_option
@reported
def list_entries(
    limit: int,
    cursor: str | None,
    follow: bool,
    url: str,
    api_key: str | None,
    as_json: bool,
    **filters: str | None,
) -> None:
    """List audit log entries, newest first, a page at a time (or all with --all).

    Needs the permission audit:read; a key or token of a tenant sees that tenant's
    entries only. With --json: {"entries": [...], "next_cursor": ...} (next_cursor is
    null after --all).
    """
    params = {query: value for name, query, _ in _FILTERS if (value := filters[name])}
    params["limit"] = str(limit)
    server = Server(url, api_key)
    entries: list[dict[str, Any]] = []
    while True:
        if cursor:
            params["cursor"] = cursor
        page, cursor = _page(server.request("GET", PATH, params=params))
        entries += page
        if not follow or cursor is None:
            break
    print_rows(
        entries,
        _COLUMNS,
        as_json=as_json,
        empty="no audit entries",
        data={"entries": entries, "next_cursor": cursor},
    )
    if cursor is not None and not as_json:
        note(f"more entries: --cursor {cursor} (or --all)")
