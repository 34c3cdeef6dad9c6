"""The bodies of the vault endpoints, as models for the OpenAPI document only: the routes
read and check bodies by hand (`validation.py`), as runqy's API answers them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .validation import MAX_DESCRIPTION, MAX_VALUE_BYTES


class NewVault(BaseModel):
    """`POST /api/vaults`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", examples=["api-keys"])
    description: str = Field("", max_length=MAX_DESCRIPTION)


class NewEntry(BaseModel):
    """`POST /api/vaults/{name}/entries`: set or replace an entry."""

    key: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="An environment variable's name",
        examples=["OPENAI_API_KEY"],
    )
    value: str = Field(description=f"At most {MAX_VALUE_BYTES} bytes (UTF-8)")
    is_secret: bool = Field(True, description="Mask the value in answers")


class VaultRef(BaseModel):
    """A vault's name and description."""

    name: str
    description: str


class VaultSummary(VaultRef):
    """A vault in the list."""

    entry_count: int


class VaultList(BaseModel):
    """Every vault."""

    vaults: list[VaultSummary]
    count: int


class EntryOut(BaseModel):
    """An entry; a secret's value is masked (`sk****yz`). A stored value that cannot be
    decrypted shows as `value` null with `error` saying why."""

    key: str
    value: str | None
    is_secret: bool
    created_at: str
    updated_at: str
    error: str | None = None


class VaultOut(VaultRef):
    """A vault with its entries."""

    entries: list[EntryOut]
    created_at: str
    updated_at: str


class EntryList(BaseModel):
    """A vault's entries."""

    entries: list[EntryOut]
    count: int


class Created(BaseModel):
    """The vault created."""

    message: str
    vault: VaultRef


class Message(BaseModel):
    """What was done."""

    message: str
