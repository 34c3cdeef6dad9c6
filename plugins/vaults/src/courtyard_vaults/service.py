"""The vaults: every operation the routes, the page, the CLI and other plugins use.

`Vaults` is also the service this plugin provides (`ctx.get_plugin("vaults")`); the part
meant for other plugins is `enabled`, `disabled_reason` and `values`.

Values are sealed before any statement is built and opened only after rows are read, so
that no plaintext ever reaches the database, its driver or an error message. Each write
is one transaction that starts with a write (SQLite then takes its write lock at once,
and a PostgreSQL row lock keeps a concurrent delete of the vault out).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from courtyard_sdk.services import Database
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from . import validation
from .crypto import DecryptionError, KeyConfigError, Keyring, Sealed
from .errors import DecryptionFailed, EntryNotFound, VaultExists, VaultNotFound, VaultsDisabled
from .models import ENTRIES, VAULTS, utcnow

log = logging.getLogger("courtyard.plugin.vaults")


def timestamp(moment: datetime) -> str:
    """A stored (naive UTC) time as runqy's API writes it: `2024-01-15T10:30:00Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class EntryView:
    """One entry as the API shows it: `value` masked when `is_secret`; None, with `error`
    saying why, when the stored value cannot be decrypted (the vault's other entries are
    still shown)."""

    key: str
    value: str | None
    is_secret: bool
    created_at: datetime
    updated_at: datetime
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """runqy's entry object, in its key order (and `error` for an unreadable one)."""
        shown = {
            "key": self.key,
            "value": self.value,
            "is_secret": self.is_secret,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
        }
        return shown if self.error is None else {**shown, "error": self.error}


@dataclass(frozen=True)
class VaultSummary:
    """One vault in the list: its name, description and number of entries."""

    name: str
    description: str
    entry_count: int

    def to_json(self) -> dict[str, Any]:
        """runqy's vault summary, in its key order."""
        return {
            "name": self.name,
            "description": self.description,
            "entry_count": self.entry_count,
        }


@dataclass(frozen=True)
class VaultDetail:
    """A vault with its (masked) entries."""

    name: str
    description: str
    entries: list[EntryView]
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """runqy's vault detail, in its key order."""
        return {
            "name": self.name,
            "description": self.description,
            "entries": [entry.to_json() for entry in self.entries],
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
        }


class Vaults:
    """The vaults of one database, sealed and opened with one keyring.

    With no valid master key (`keyring` None) every operation raises `VaultsDisabled`
    with `disabled_reason`, which names the variable to set.
    """

    def __init__(
        self, db: Database, keyring: Keyring | None, disabled_reason: str | None = None
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.disabled_reason = None if keyring is not None else disabled_reason or "disabled"

    @classmethod
    def from_environ(cls, db: Database, environ: Mapping[str, str] | None = None) -> Vaults:
        """Vaults keyed from the environment (see `Keyring.from_environ`)."""
        try:
            return cls(db, Keyring.from_environ(os.environ if environ is None else environ))
        except KeyConfigError as exc:
            return cls(db, None, str(exc))

    @property
    def enabled(self) -> bool:
        """Whether a valid master key is set."""
        return self.keyring is not None

    def ensure_enabled(self) -> Keyring:
        """The keyring.

        :raises VaultsDisabled: without a valid master key.
        """
        if self.keyring is None:
            raise VaultsDisabled(self.disabled_reason or "disabled")
        return self.keyring

    # Reading ------------------------------------------------------------------------------

    async def list_vaults(self) -> list[VaultSummary]:
        """Every vault, by name, with its number of entries."""
        self.ensure_enabled()
        count = func.count(ENTRIES.c.id)
        query = (
            select(VAULTS.c.name, VAULTS.c.description, count)
            .select_from(VAULTS.outerjoin(ENTRIES, ENTRIES.c.vault_id == VAULTS.c.id))
            .group_by(VAULTS.c.id, VAULTS.c.name, VAULTS.c.description)
            .order_by(VAULTS.c.name)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [VaultSummary(name, description, int(n)) for name, description, n in rows]

    async def vault(self, name: str) -> VaultDetail:
        """The vault `name` with its entries, secret values masked.

        :raises VaultNotFound: when there is no such vault.
        """
        keyring = self.ensure_enabled()
        validation.vault_name(name)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(VAULTS).where(VAULTS.c.name == name))).first()
            if row is None:
                raise VaultNotFound(name)
            entries = await self._entry_rows(conn, row.id)
        return VaultDetail(
            name=row.name,
            description=row.description,
            entries=[self._view(keyring, name, entry) for entry in entries],
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def entries(self, name: str) -> list[EntryView]:
        """The entries of vault `name`, by key, secret values masked.

        :raises VaultNotFound: when there is no such vault.
        """
        return (await self.vault(name)).entries

    async def values(self, vault_names: Iterable[str]) -> dict[str, str]:
        """The decrypted entries of the named vaults, merged in the order given: when two
        vaults have the same key, the later vault's value wins. Names given twice count
        once (at their first place). No names: `{}`, even with vaults disabled.

        This is what a worker gets as environment variables; keep it out of logs.

        :raises VaultsDisabled: without a valid master key.
        :raises InvalidRequest: for a name that cannot be a vault's.
        :raises VaultNotFound: naming every vault that does not exist.
        :raises DecryptionFailed: naming every entry that was tampered with or whose key
            is unknown (the others are not returned either: a worker must not start with
            part of its secrets).
        """
        if isinstance(vault_names, str):  # a lone name would be read as its characters
            raise TypeError("values() takes a list of vault names, not a string")
        names = list(dict.fromkeys(vault_names))
        if not names:
            return {}
        keyring = self.ensure_enabled()
        for name in names:
            validation.vault_name(name)
        known = select(VAULTS.c.name, VAULTS.c.id).where(VAULTS.c.name.in_(names))
        async with self.db.engine.connect() as conn:
            ids: dict[str, int] = {name: id_ for name, id_ in (await conn.execute(known)).all()}
            missing = [name for name in names if name not in ids]
            if missing:
                raise VaultNotFound(*missing)
            rows = (
                await conn.execute(
                    select(ENTRIES)
                    .where(ENTRIES.c.vault_id.in_(list(ids.values())))
                    .order_by(ENTRIES.c.key)
                )
            ).all()
        by_vault: dict[int, list[Row[Any]]] = {}
        for row in rows:
            by_vault.setdefault(row.vault_id, []).append(row)
        merged: dict[str, str] = {}
        unreadable: list[str] = []
        for name in names:
            for row in by_vault.get(ids[name], []):
                try:
                    merged[row.key] = _open(keyring, name, row)
                except DecryptionFailed as exc:
                    unreadable.append(exc.message)
        if unreadable:
            raise DecryptionFailed("; ".join(unreadable))
        return merged

    # Writing ------------------------------------------------------------------------------

    async def create_vault(self, name: str, description: str = "") -> VaultSummary:
        """Create an empty vault.

        :raises VaultExists: when the name is taken.
        """
        self.ensure_enabled()
        validation.vault_name(name)
        validation.description(description)
        now = utcnow()
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(VAULTS).values(
                        name=name, description=description, created_at=now, updated_at=now
                    )
                )
        except IntegrityError:
            raise VaultExists(name) from None
        return VaultSummary(name, description, 0)

    async def delete_vault(self, name: str) -> None:
        """Delete vault `name` and every entry in it.

        :raises VaultNotFound: when there is no such vault.
        """
        self.ensure_enabled()
        validation.vault_name(name)
        async with self.db.engine.begin() as conn:
            deleted = (
                await conn.execute(
                    delete(VAULTS).where(VAULTS.c.name == name).returning(VAULTS.c.id)
                )
            ).scalar_one_or_none()
            if deleted is None:
                raise VaultNotFound(name)
            # The foreign key cascades too; this does not depend on SQLite's pragma.
            await conn.execute(delete(ENTRIES).where(ENTRIES.c.vault_id == deleted))

    async def set_entry(self, vault: str, key: str, value: str, is_secret: bool = True) -> None:
        """Set (create or replace) entry `key` of `vault`, sealed under the master key.

        :raises VaultNotFound: when there is no such vault.
        """
        keyring = self.ensure_enabled()
        validation.vault_name(vault)
        validation.entry_key(key)
        validation.value(value)
        sealed = keyring.seal(vault, key, is_secret, value)
        now = utcnow()
        async with self.db.engine.begin() as conn:
            vault_id = await _touch(conn, vault, now)
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            upsert = dialect.insert(ENTRIES).values(
                vault_id=vault_id,
                key=key,
                is_secret=is_secret,
                key_id=sealed.key_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                created_at=now,
                updated_at=now,
            )
            fresh = upsert.excluded
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[ENTRIES.c.vault_id, ENTRIES.c.key],
                    set_={
                        "is_secret": fresh.is_secret,
                        "key_id": fresh.key_id,
                        "nonce": fresh.nonce,
                        "ciphertext": fresh.ciphertext,
                        "updated_at": fresh.updated_at,
                    },
                )
            )

    async def delete_entry(self, vault: str, key: str) -> None:
        """Delete entry `key` of `vault`.

        :raises VaultNotFound: when there is no such vault.
        :raises EntryNotFound: when the vault has no such key.
        """
        self.ensure_enabled()
        validation.vault_name(vault)
        validation.entry_key(key)
        async with self.db.engine.begin() as conn:
            vault_id = await _touch(conn, vault, utcnow())
            deleted = await conn.execute(
                delete(ENTRIES).where(ENTRIES.c.vault_id == vault_id, ENTRIES.c.key == key)
            )
            if deleted.rowcount == 0:
                raise EntryNotFound(vault, key)  # rolls back the touch

    # Helpers ------------------------------------------------------------------------------

    async def _entry_rows(self, conn: Any, vault_id: int) -> list[Row[Any]]:
        query = select(ENTRIES).where(ENTRIES.c.vault_id == vault_id).order_by(ENTRIES.c.key)
        return list((await conn.execute(query)).all())

    def _view(self, keyring: Keyring, vault: str, row: Row[Any]) -> EntryView:
        shown: str | None
        error = None
        try:
            plain = _open(keyring, vault, row)
            shown = validation.mask(plain) if row.is_secret else plain
        except DecryptionFailed as exc:
            shown, error = None, f"{exc.message}; set the entry again to replace it"
        return EntryView(
            key=row.key,
            value=shown,
            is_secret=row.is_secret,
            created_at=row.created_at,
            updated_at=row.updated_at,
            error=error,
        )


async def _touch(conn: Any, vault: str, now: datetime) -> int:
    """Mark vault `vault` updated and return its id; its row stays locked until commit.

    :raises VaultNotFound: when there is no such vault.
    """
    vault_id = (
        await conn.execute(
            update(VAULTS)
            .where(VAULTS.c.name == vault)
            .values(updated_at=now)
            .returning(VAULTS.c.id)
        )
    ).scalar_one_or_none()
    if vault_id is None:
        raise VaultNotFound(vault)
    return int(vault_id)


def _open(keyring: Keyring, vault: str, row: Row[Any]) -> str:
    """Decrypt one entry row, turning a failure into `DecryptionFailed`."""
    sealed = Sealed(row.key_id, bytes(row.nonce), bytes(row.ciphertext))
    try:
        return keyring.open(vault, row.key, row.is_secret, sealed)
    except DecryptionError as exc:
        log.error("%s", exc)  # names the vault, the key and the key id; never a value
        raise DecryptionFailed(str(exc)) from None
