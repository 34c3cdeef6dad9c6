"""The vaults' tables (created by `migrations/`): vaults, and their encrypted entries.

No column ever holds a plaintext value: an entry keeps the id of the master key that
sealed it, the nonce and the ciphertext (see `crypto.py`). Times are naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from courtyard_sdk.db import model_base
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field

Model = model_base()


def utcnow() -> datetime:
    """Now, as the naive UTC the tables store (SQLite keeps no time zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Vault(Model, table=True):
    """A named set of entries (`api-keys`)."""

    __tablename__ = "vaults_vault"
    __table_args__ = (UniqueConstraint("name", name="uq_vaults_vault_name"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    name: str = Field(sa_column=Column(String(64), nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime, nullable=False))


class Entry(Model, table=True):
    """One key of a vault and its sealed value."""

    __tablename__ = "vaults_entry"
    __table_args__ = (UniqueConstraint("vault_id", "key", name="uq_vaults_entry_vault_key"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    vault_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("vaults_vault.id", ondelete="CASCADE", name="fk_vaults_entry_vault"),
            nullable=False,
        )
    )
    key: str = Field(sa_column=Column(String(128), nullable=False))
    is_secret: bool = Field(default=True, sa_column=Column(Boolean, nullable=False))
    key_id: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    nonce: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime, nullable=False))


VAULTS: Table = Vault.__table__  # type: ignore[attr-defined]
ENTRIES: Table = Entry.__table__  # type: ignore[attr-defined]
