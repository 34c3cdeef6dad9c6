"""Fixtures of the platform tests: `platform` starts a runtime serving the queues and
platform plugins (on SQLite by default) with fast clocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from courtyard.testing import Runtime
from platform_kit import settings


@pytest.fixture
def platform(courtyard: Any) -> Callable[..., Any]:
    """`rt = await platform(workers=1)`: a runtime with the platform plugin's settings
    (and `queues={...}` for the queues plugin's, `runtime={...}` for the runtime's,
    `vaults=True` to load the vaults plugin too)."""

    async def start(
        queues: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        vaults: bool = False,
        **plugin: Any,
    ) -> Runtime:
        return await courtyard(**settings(queues, vaults, **plugin), **(runtime or {}))

    return start
