"""Fixtures of the gateway tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from courtyard_sdk.testing import write_plugin
from gateway_kit import GATEWAY, ROUTES


@pytest.fixture
def start(courtyard: Any, plugin_dir: Path) -> Any:
    """Start a runtime with the gateway (as a directory plugin) and the `svc` routes."""
    shutil.copytree(GATEWAY, plugin_dir / "gateway")
    write_plugin(plugin_dir, "svc", code=ROUTES)

    async def go(**gateway: Any) -> Any:
        return await courtyard(entry_points=False, plugins={"gateway": gateway})

    return go
