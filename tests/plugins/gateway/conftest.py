"""Fixtures of the gateway tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from courtyard.testing import write_plugin
from gateway_kit import GATEWAY, IDENTITY_STUB, ROUTES


@pytest.fixture
def start(courtyard: Any, plugin_dir: Path) -> Any:
    """Start a runtime with the gateway (as a directory plugin) and the `svc` routes."""
    shutil.copytree(GATEWAY, plugin_dir / "gateway")
    write_plugin(plugin_dir, "svc", code=ROUTES)

    async def go(runtime: dict[str, Any] | None = None, **gateway: Any) -> Any:
        """`gateway`: the plugin's settings; `runtime`: more runtime settings."""
        return await courtyard(entry_points=False, plugins={"gateway": gateway}, **(runtime or {}))

    return go


@pytest.fixture
def identified(start: Any, plugin_dir: Path) -> Any:
    """`start`, with a plugin that sets the identity from `gateway_kit.as_identity()`."""
    write_plugin(plugin_dir, "auth-stub", code=IDENTITY_STUB)
    return start
