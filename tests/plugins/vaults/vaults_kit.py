"""Helpers shared by the vaults tests."""

from __future__ import annotations

import os
import re
from typing import Any

from courtyard_vaults import Vaults
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

KEY_VARS = (
    "RUNQY_VAULT_MASTER_KEY",
    "COURTYARD_VAULT_MASTER_KEY",
    "COURTYARD_VAULT_READ_KEYS",
    "RUNQY_API_KEY",
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


def secret(label: str = "s") -> str:
    """A value no other test (and no file) contains: a random marker."""
    return f"{label}-{os.urandom(12).hex()}-end"


def service(runtime: Any) -> Vaults:
    """The `Vaults` the serving generation's vaults plugin provides."""
    record = runtime.dispatcher.current.record("vaults")
    assert record is not None, "the vaults plugin is not loaded"
    return record.service


def engine(runtime: Any) -> AsyncEngine:
    """A separate engine on the runtime's database, as an outside reader would have."""
    return create_async_engine(runtime.dispatcher.services.database.url)


async def fill(client: Any, vault: str, entries: dict[str, str], **extra: Any) -> None:
    """Create `vault` and set `entries` in it through the API."""
    answer = await client.post("/api/vaults", json={"name": vault, **extra})
    assert answer.status_code == 201, answer.text
    for key, value in entries.items():
        answer = await client.post(
            f"/api/vaults/{vault}/entries", json={"key": key, "value": value}
        )
        assert answer.status_code == 200, answer.text
