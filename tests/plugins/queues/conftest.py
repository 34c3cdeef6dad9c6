"""Fixtures of the queues tests: `backend` runs a test on SQLite, PostgreSQL and Redis;
`queues` starts a runtime with the queues plugin on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from courtyard.testing import Runtime
from queues_kit import FAST, Backend, write_config


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backend under test: the SQL store on SQLite or PostgreSQL, or the Redis store
    (a key prefix of its own on the session's Redis)."""
    if request.param == "sqlite":
        return Backend("sqlite", {"database_url": f"sqlite:///{tmp_path / 'queues.db'}"})
    if request.param == "postgresql":
        return Backend("postgresql", {"database_url": request.getfixturevalue("postgres_url")})
    redis = request.getfixturevalue("redis")
    return Backend(
        "redis",
        plugin={
            "backend": "redis",
            "redis_url": redis.url,
            "redis_prefix": f"test:{uuid.uuid4().hex}",
        },
    )


@pytest.fixture
def queues(courtyard: Any, backend: Backend, tmp_path: Path) -> Callable[..., Any]:
    """Start a runtime serving the queues plugin (only it) on `backend`, with the kit's
    configuration file and fast clocks: `rt = await queues(max_retry=1)`."""
    config = write_config(tmp_path / "config")

    async def start(config_files: list[str] | None = None, **settings: Any) -> Runtime:
        plugin = {
            "config_files": [str(config)] if config_files is None else config_files,
            **FAST,
            **backend.plugin,
            **settings,
        }
        return await courtyard(
            only_plugins=["queues"], plugins={"queues": plugin}, **backend.runtime
        )

    return start
