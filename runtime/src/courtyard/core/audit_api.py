"""`GET /api/audit/`: the audit log, filtered, newest first, a page at a time.

Pages are keyset-paginated on the entry id: `next_cursor` says "entries older than the
last one shown", so entries written while a client pages never shift a page, and no
entry is shown twice or skipped. An identity acting for a tenant only sees that tenant's
entries. See docs/audit.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from courtyard_sdk import ApiError
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors
from pydantic import BaseModel, Field
from quart import Blueprint, request
from quart_schema import document_querystring, document_response, tag
from sqlalchemy import func, select

from ..services.audit_entries import KINDS, TABLE
from . import current_runtime

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import RowMapping

    from ..services.database import Database

blueprint = Blueprint("audit", __name__, url_prefix="/api/audit")

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
_EQUAL = ("identity", "tenant", "action", "plugin", "request_id")  # compared as given
_PARAMETERS = (*_EQUAL, "kind", "method", "status", "path", "since", "until", "limit", "cursor")
_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_CURSOR = re.compile(r"^v1:([1-9][0-9]{0,18})$")


class AuditQuery(BaseModel):
    """The filters of `GET /api/audit/`; every one is optional, and they combine (AND)."""

    identity: str | None = Field(None, description="The identity's subject, exactly.")
    tenant: str | None = Field(None, description="The tenant, exactly.")
    kind: Literal["request", "event"] | None = Field(
        None, description="Mutating requests, or plugins' domain events."
    )
    method: str | None = Field(None, description="The HTTP method, any case.")
    status: str | None = Field(
        None, description="A status (404) or a class of statuses (4xx).", examples=["5xx"]
    )
    path: str | None = Field(None, description="A path prefix, case-sensitive.")
    action: str | None = Field(None, description="An event's action, exactly.")
    plugin: str | None = Field(None, description="The plugin owning the route or event.")
    request_id: str | None = Field(None, description="One request's entries.")
    since: str | None = Field(None, description="ISO 8601 time, inclusive; UTC without an offset.")
    until: str | None = Field(None, description="ISO 8601 time, exclusive.")
    limit: int | None = Field(
        None, ge=1, le=MAX_LIMIT, description=f"Page size (default {DEFAULT_LIMIT})."
    )
    cursor: str | None = Field(None, description="The previous page's next_cursor.")


class AuditEntryOut(BaseModel):
    """One entry: a mutating request (`kind` = `request`) or a plugin's domain event
    (`kind` = `event`)."""

    id: int
    time: str
    kind: str
    identity: str | None
    identity_kind: str | None
    tenant: str | None
    method: str | None
    path: str | None
    route: str | None
    plugin: str | None
    status: int | None
    request_id: str | None
    action: str | None
    target: str | None
    details: dict[str, Any] | None


class AuditPage(BaseModel):
    """A page of entries, newest first; pass `next_cursor` as `cursor` for the next."""

    entries: list[AuditEntryOut]
    next_cursor: str | None


def as_json(row: RowMapping) -> dict[str, Any]:
    """An `audit_log` row as the API shows it."""
    moment: datetime = row["time"]
    return {
        "id": row["id"],
        "time": moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "kind": row["kind"],
        "identity": row["identity"],
        "identity_kind": row["identity_kind"],
        "tenant": row["tenant"],
        "method": row["method"],
        "path": row["path"],
        "route": row["route"],
        "plugin": row["plugin"],
        "status": row["status"],
        "request_id": row["request_id"],
        "action": row["action"],
        "target": row["target"],
        "details": row["details"],
    }


def path_prefix(dialect: str, prefix: str) -> Sequence[Any]:
    """Conditions for `path` starting with `prefix`, exact and index-friendly: LIKE on
    PostgreSQL (case-sensitive there, and served by the text_pattern_ops index); on
    SQLite, whose LIKE ignores case, a range on its binary order checked by substr."""
    column = TABLE.c.path
    if dialect == "postgresql":
        return [column.startswith(prefix, autoescape=True)]
    conditions = [column >= prefix, func.substr(column, 1, len(prefix)) == prefix]
    if ord(prefix[-1]) < 0x10FFFF:
        conditions.append(column < prefix[:-1] + chr(ord(prefix[-1]) + 1))
    return conditions


async def _page(
    database: Database, statement: Any, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Run a select of `audit_log` rows (filters applied), newest first.

    :return: up to `limit` entries as the API shows them, and the id of the last one when
        more follow (None on the last page).
    """
    statement = statement.order_by(TABLE.c.id.desc()).limit(limit + 1)
    async with database.engine.connect() as connection:
        rows = (await connection.execute(statement)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [as_json(row) for row in rows], (rows[-1]["id"] if more else None)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER", message)


def _arguments() -> dict[str, str]:
    """The query parameters, each given at most once and not empty."""
    unknown = sorted(set(request.args) - set(_PARAMETERS))
    if unknown:
        raise _invalid(f"unknown parameter {unknown[0]!r}; known: {', '.join(_PARAMETERS)}")
    values: dict[str, str] = {}
    for name in request.args:
        given = request.args.getlist(name)
        if len(given) > 1:
            raise _invalid(f"{name} is given {len(given)} times; give it once")
        if not given[0].strip():
            raise _invalid(f"{name} is empty; leave it out to not filter on it")
        values[name] = given[0].strip()
    return values


def _moment(name: str, value: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    for candidate in (value, value.replace(" ", "+")):  # an unescaped + arrives as a space
        try:
            moment = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    raise _invalid(f"{name}={value!r} is not an ISO 8601 time such as 2025-01-31T12:00:00Z")


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise _invalid(f"limit={value!r}: expected a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def encode_cursor(entry_id: int) -> str:
    """The opaque cursor of the page after the entry `entry_id`."""
    return base64.urlsafe_b64encode(f"v1:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id a cursor from `encode_cursor` holds.

    :raises ApiError: 400 `INVALID_CURSOR` for anything `encode_cursor` did not make.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        text = ""
    match = _CURSOR.match(text)
    if match is None:
        raise ApiError(
            400, "INVALID_CURSOR", "cursor is not one this server gave out: use next_cursor"
        )
    return int(match[1])


def _statement(args: dict[str, str], dialect: str) -> Any:
    """The select of the entries `args` asks for (no order or limit yet)."""
    statement = select(TABLE)
    for name in _EQUAL:
        if name in args:
            statement = statement.where(TABLE.c[name] == args[name])
    if (kind := args.get("kind")) is not None:
        if kind not in KINDS:
            raise _invalid(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
        statement = statement.where(TABLE.c.kind == kind)
    if (method := args.get("method")) is not None:
        if not method.isalpha() or len(method) > 16:
            raise _invalid(f"method={method!r}: expected an HTTP method such as POST")
        statement = statement.where(TABLE.c.method == method.upper())
    if (status := args.get("status")) is not None:
        if match := _STATUS_CLASS.match(status):
            low = int(match[1]) * 100
            statement = statement.where(TABLE.c.status.between(low, low + 99))
        elif status.isdigit() and 100 <= int(status) <= 599:
            statement = statement.where(TABLE.c.status == int(status))
        else:
            raise _invalid(f"status={status!r}: expected a status such as 404, or a class: 4xx")
    if (path := args.get("path")) is not None:
        if not path.startswith("/"):
            raise _invalid(f"path={path!r}: expected a path prefix starting with /")
        statement = statement.where(*path_prefix(dialect, path))
    since = _moment("since", args["since"]) if "since" in args else None
    until = _moment("until", args["until"]) if "until" in args else None
    if since is not None and until is not None and until <= since:
        raise _invalid("until must be later than since")
    if since is not None:
        statement = statement.where(TABLE.c.time >= since)
    if until is not None:
        statement = statement.where(TABLE.c.time < until)
    if "cursor" in args:
        statement = statement.where(TABLE.c.id < decode_cursor(args["cursor"]))
    return statement


@blueprint.get("/")
@tag(["audit"])
@document_querystring(AuditQuery)
@document_response(AuditPage)
@errors((400, "INVALID_PARAMETER"), (400, "INVALID_CURSOR"))
@require("audit:read")
async def list_entries() -> dict[str, Any]:
    """Audit log entries, newest first.

    Filters: `identity` (subject), `tenant`, `kind` (`request` or `event`), `method`,
    `status` (`404`, or a class: `4xx`), `path` (a prefix), `action`, `plugin`,
    `request_id`, `since` (inclusive) and `until` (exclusive) as ISO 8601 times. `limit`:
    1 to 500, default 50. `cursor`: the previous page's `next_cursor`. A caller acting for
    a tenant sees only that tenant's entries. Bad parameters answer 400
    `INVALID_PARAMETER` or `INVALID_CURSOR`.
    """
    args = _arguments()
    own = current_identity().tenant_id
    if own is not None:
        if args.get("tenant", own) != own:
            raise ApiError(
                403, "AUTHORIZATION_FAILED", f"this identity can only read tenant {own}'s entries"
            )
        args["tenant"] = own
    limit = _limit(args.pop("limit", None))
    database = current_runtime().services.database
    entries, last = await _page(database, _statement(args, database.dialect), limit)
    return {"entries": entries, "next_cursor": None if last is None else encode_cursor(last)}
