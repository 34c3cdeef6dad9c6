"""API keys: made here, stored only as hashes, looked up on every request that shows one.

A key reads `cyk_<id>_<secret>`: a recognisable prefix (so that secret scanners and people
can tell what leaked), the key's public id (16 hex digits: what lists show and what
`revoke` takes) and 256 random bits. The table keeps the SHA-256 of the whole key, never
the key; it is shown once, when made.

SHA-256 rather than bcrypt or argon2: those are slow on purpose because passwords are
guessable; a key is 256 random bits, which no hash speed makes guessable, and a slow hash
would cost every request that presents a key tens of milliseconds of CPU.

No positive cache: every request that presents a key reads its row (one primary-key
lookup), so that a revoked key stops working at once, on every instance.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import sqlalchemy as sa
from courtyard_sdk.db import model_base
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field

from .database import Database

if TYPE_CHECKING:
    from sqlmodel import SQLModel

log = logging.getLogger("courtyard.auth")

OWNER = "courtyard-auth"
MIGRATIONS = Path(__file__).parent / "migrations" / "auth"
PREFIX = "cyk_"
_ID_LENGTH = 16  # hex digits: 64 bits, unique enough for a primary key chosen at random
_SECRET_BYTES = 32
TOUCH_INTERVAL = 60.0  # seconds between two writes of a key's last use

# A base class of its own (its own registry and MetaData); a type checker sees SQLModel.
if TYPE_CHECKING:
    Model = SQLModel
else:
    Model = model_base()


class ApiKey(Model, table=True):
    """One API key (its hash, never the key)."""

    __tablename__ = "courtyard_api_keys"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    secret_hash: str = Field(max_length=64)
    roles: list[str] = Field(sa_type=sa.JSON)
    permissions: list[str] = Field(sa_type=sa.JSON)
    tenant_id: str | None = Field(default=None, max_length=128, index=True)
    created_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    created_by: str | None = Field(default=None, max_length=256)
    expires_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    last_used_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


# SQLModel's types do not declare the `__table__` every table model has.
TABLE: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone: they were stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the table stores it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def is_key_id(text: str) -> bool:
    """Whether `text` has the shape of a key id (16 lowercase hex digits)."""
    return len(text) == _ID_LENGTH and all(c in "0123456789abcdef" for c in text)


def key_id_of(key: str) -> str | None:
    """The id in a key that has this module's shape, else None."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    return key_id if sep and secret and is_key_id(key_id) else None


def looks_like_key(text: str) -> bool:
    """Whether `text` has a key's prefix (it may still be malformed or unknown)."""
    return text.startswith(PREFIX)


@dataclass(frozen=True)
class KeyInfo:
    """What is known of a key, without its secret."""

    id: str
    name: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    tenant: str | None
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, at: datetime | None = None) -> str:
        """`active`, `revoked` or `expired`."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (at or now()):
            return "expired"
        return "active"

    def to_json(self) -> dict[str, Any]:
        """The key as the API and `courtyard keys list --json` show it."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "permissions": list(self.permissions),
            "tenant": self.tenant,
            "status": self.status(),
            "createdAt": iso(self.created_at),
            "createdBy": self.created_by,
            "expiresAt": iso(self.expires_at),
            "revokedAt": iso(self.revoked_at),
            "lastUsedAt": iso(self.last_used_at),
        }


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        roles=tuple(row.roles or ()),
        permissions=tuple(row.permissions or ()),
        tenant=row.tenant_id,
        created_at=_utc(row.created_at),
        created_by=row.created_by,
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
        last_used_at=_utc(row.last_used_at),
    )


class KeyStore:
    """The `courtyard_api_keys` table (see the module docstring)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._touched: dict[str, float] = {}  # key id -> when this process last wrote its use
        self._touches: set[asyncio.Task[None]] = set()

    async def create(
        self,
        *,
        name: str,
        roles: tuple[str, ...],
        permissions: tuple[str, ...],
        tenant: str | None,
        expires_at: datetime | None,
        created_by: str | None,
    ) -> tuple[KeyInfo, str]:
        """Store a new key and return it with its secret (the only time it exists)."""
        key_id = secrets.token_hex(_ID_LENGTH // 2)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        created_at = now()
        values = {
            "id": key_id,
            "name": name,
            "secret_hash": hash_key(key),
            "roles": list(roles),
            "permissions": list(permissions),
            "tenant_id": tenant,
            "created_at": created_at,
            "created_by": created_by,
            "expires_at": expires_at,
        }
        async with self.database.engine.begin() as connection:
            await connection.execute(TABLE.insert().values(**values))
        info = KeyInfo(
            id=key_id,
            name=name,
            roles=roles,
            permissions=permissions,
            tenant=tenant,
            created_at=created_at,
            created_by=created_by,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        return info, key

    async def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        """Every key (revoked and expired ones too), oldest first; only `tenant`'s if
        given."""
        query = sa.select(TABLE).order_by(TABLE.c.created_at, TABLE.c.id)
        if tenant is not None:
            query = query.where(TABLE.c.tenant_id == tenant)
        async with self.database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_info(row) for row in rows]

    async def get(self, key_id: str) -> KeyInfo | None:
        """The key with id `key_id`, if any."""
        async with self.database.engine.connect() as connection:
            row = await self._row(connection, key_id)
        return None if row is None else _info(row)

    async def revoke(self, key_id: str) -> KeyInfo | None:
        """Revoke key `key_id` now (a revoked key stays revoked: revoking it again keeps
        the first date). None when there is no such key."""
        async with self.database.engine.begin() as connection:
            await connection.execute(
                TABLE.update()
                .where(TABLE.c.id == key_id, TABLE.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            row = await self._row(connection, key_id)
        return None if row is None else _info(row)

    async def find(self, key: str) -> KeyInfo | None:
        """The key whose secret is `key`, whatever its status; None for an unknown key or
        a wrong secret (the hashes compared in constant time)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        async with self.database.engine.connect() as connection:
            row = await self._row(connection, key_id)
        if row is None or not hmac.compare_digest(row.secret_hash, hash_key(key)):
            return None
        info = _info(row)
        if info.status() == "active":
            self._touch(info)
        return info

    async def any_active(self) -> bool:
        """Whether at least one key is neither revoked nor expired."""
        query = (
            sa.select(TABLE.c.id)
            .where(
                TABLE.c.revoked_at.is_(None),
                sa.or_(TABLE.c.expires_at.is_(None), TABLE.c.expires_at > now()),
            )
            .limit(1)
        )
        async with self.database.engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def _row(self, connection: AsyncConnection, key_id: str) -> Any:
        query = sa.select(TABLE).where(TABLE.c.id == key_id)
        return (await connection.execute(query)).first()

    def _touch(self, info: KeyInfo) -> None:
        """Record the key's use, at most once a minute per key and process, in the
        background: a request never waits for this write."""
        moment = time.monotonic()
        if moment - self._touched.get(info.id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        self._touched[info.id] = moment
        # A fresh context: a copy of the request's would keep the request alive.
        task = asyncio.get_running_loop().create_task(
            self._write_use(info.id), context=contextvars.Context()
        )
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _write_use(self, key_id: str) -> None:
        try:
            async with self.database.engine.begin() as connection:
                await connection.execute(
                    TABLE.update().where(TABLE.c.id == key_id).values(last_used_at=now())
                )
        except Exception as exc:  # a lost "last used" is no reason to fail anything
            log.warning("could not record the use of key %s: %s", key_id, exc)

    async def close(self) -> None:
        """Let the pending writes of last uses finish."""
        if self._touches:
            await asyncio.gather(*self._touches, return_exceptions=True)
