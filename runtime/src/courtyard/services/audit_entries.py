"""The audit log's table and what goes in a row: who and where a request came from, and a
plugin's domain event checked before it is queued (`services/audit.py` writes the rows).

Every text value is cut to its column and cleaned of what no database accepts, so that
one odd request cannot make a batch of others fail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from courtyard_sdk.db import model_base
from courtyard_sdk.identity import current_identity
from courtyard_sdk.request_ids import REQUEST_ID
from quart import has_request_context, has_websocket_context
from quart.globals import request_ctx, websocket_ctx
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlmodel import Field

from ..redaction import redact

if TYPE_CHECKING:
    from sqlmodel import SQLModel

MAX_ACTION, MAX_TARGET, MAX_DETAILS = 128, 1024, 65_536
KINDS = ("request", "event")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC datetime (SQLite keeps no
    offset, PostgreSQL a `timestamptz`)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; naive values are taken as UTC already."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """An aware datetime in UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A base class of its own (its own registry and MetaData); a type checker sees SQLModel.
if TYPE_CHECKING:
    Model = SQLModel
else:
    Model = model_base()


class AuditEntry(Model, table=True):
    """One row of `audit_log` (its migrations: `migrations/audit/`)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        *(
            Index(f"ix_audit_log_{c}", c, "id")
            for c in ("identity", "tenant", "kind", "status", "action", "plugin")
        ),
        Index("ix_audit_log_time", "time"),
        Index("ix_audit_log_request_id", "request_id"),
        Index("ix_audit_log_path", "path", postgresql_ops={"path": "text_pattern_ops"}),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    time: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    identity: str | None = Field(default=None, sa_column=Column(String(255)))
    identity_kind: str | None = Field(default=None, sa_column=Column(String(16)))
    tenant: str | None = Field(default=None, sa_column=Column(String(128)))
    method: str | None = Field(default=None, sa_column=Column(String(16)))
    path: str | None = Field(default=None, sa_column=Column(Text()))
    route: str | None = Field(default=None, sa_column=Column(Text()))
    plugin: str | None = Field(default=None, sa_column=Column(String(255)))
    status: int | None = Field(default=None, sa_column=Column(Integer()))
    request_id: str | None = Field(default=None, sa_column=Column(String(128)))
    action: str | None = Field(default=None, sa_column=Column(String(128)))
    target: str | None = Field(default=None, sa_column=Column(Text()))
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON()))


# SQLModel's types do not declare the `__table__` every table model has.
TABLE = AuditEntry.__table__  # type: ignore[attr-defined]


def clean_text(value: str | None, limit: int) -> str | None:
    """`value` cut to `limit` characters, with what no database accepts in text (NUL,
    lone surrogates) replaced, so that one odd request cannot make a batch fail."""
    if value is None:
        return None
    value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def caller_fields() -> dict[str, Any]:
    """Who and where: the identity, tenant and request (or WebSocket) being served, if
    any; outside one (a background task) nobody."""
    # The request itself, not its proxy: each access through the proxy is a lookup.
    if has_request_context():
        current: Any = request_ctx.request
        method = current.method
    elif has_websocket_context():
        current, method = websocket_ctx.websocket, None
    else:
        return {"identity": None, "identity_kind": None, "tenant": None, "request_id": None}
    identity = current_identity()
    rid = REQUEST_ID.get()
    return {
        "identity": clean_text(identity.subject, 255),
        "identity_kind": identity.kind,
        "tenant": clean_text(identity.tenant_id, 128),
        "request_id": None if rid == "-" else clean_text(rid, 128),
        "method": method,
        # A credential sent in the path (`DELETE /api/keys/cyk_...`) is not recorded.
        "path": clean_text(redact(current.path), 4096),
        "route": current.url_rule.rule if current.url_rule is not None else None,
    }


def event_entry(
    action: str,
    *,
    plugin: str | None,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checked `event` row; see `PluginAudit.record` for what is refused."""
    if not isinstance(action, str):
        raise TypeError(f"audit action must be a string, not {type(action).__name__}")
    if not action.strip() or len(action) > MAX_ACTION or not action.isprintable():
        raise ValueError(
            f"audit action {action!r}: expected 1 to {MAX_ACTION} printable characters"
        )
    if target is not None and not isinstance(target, str):
        raise TypeError(f"audit target must be a string or None, not {type(target).__name__}")
    if target is not None and len(target) > MAX_TARGET:
        raise ValueError(f"audit target is {len(target)} characters long; at most {MAX_TARGET}")
    if details is not None:
        if not isinstance(details, Mapping):
            raise TypeError(f"audit details must be a mapping, not {type(details).__name__}")
        try:
            encoded = json.dumps(dict(details), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"audit details are not plain JSON: {exc}") from None
        if len(encoded) > MAX_DETAILS:
            raise ValueError(f"audit details are {len(encoded)} bytes of JSON; at most 64 KiB")
        details = json.loads(encoded)  # a copy: later changes by the caller do not count
    return {
        "time": datetime.now(UTC),
        "kind": "event",
        "method": None,
        "path": None,
        "route": None,
        **caller_fields(),
        "plugin": plugin,
        "status": None,
        "action": clean_text(action, MAX_ACTION),
        "target": None if target is None else clean_text(redact(target), MAX_TARGET),
        "details": details,
    }


__all__ = [
    "KINDS",
    "TABLE",
    "AuditEntry",
    "caller_fields",
    "clean_text",
    "event_entry",
]
