"""Fixtures of the releases tests: a runtime with the plugin that verifies JWTs, and
callers of two tenants."""

from __future__ import annotations

from typing import Any

import pytest
from releases_kit import ALL, SECRET, User


class Releases:
    """A started runtime and a way to make callers."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.client = runtime.client

    def user(
        self,
        name: str = "alice",
        tenant: str | None = "acme",
        roles: list[str] | None = None,
        permissions: list[str] | None = None,
    ) -> User:
        """A caller with a token of `tenant`."""
        return User(
            self.client, name, tenant, roles or [], ALL if permissions is None else permissions
        )


@pytest.fixture
async def releases(courtyard: Any) -> Releases:
    """An in-process runtime serving only the releases plugin, verifying HS256 tokens."""
    runtime = await courtyard(only_plugins=["releases"], strict=True, jwt_secret=SECRET)
    return Releases(runtime)


@pytest.fixture
async def releases_db(courtyard: Any, database_url: str) -> Releases:
    """The same, once on SQLite and once on PostgreSQL (`database_url`)."""
    runtime = await courtyard(
        only_plugins=["releases"], strict=True, jwt_secret=SECRET, database_url=database_url
    )
    return Releases(runtime)
