"""Fixtures of the vaults tests: a clean key environment and a runtime with the plugin."""

from __future__ import annotations

from typing import Any

import pytest
from courtyard_vaults import generate_key
from vaults_kit import KEY_VARS


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key of the developer's environment leaks into a test."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh master key in RUNQY_VAULT_MASTER_KEY."""
    key = generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", key)
    return key


@pytest.fixture
def start(courtyard: Any) -> Any:
    """Start an in-process runtime serving only the vaults plugin (and `also`)."""

    async def go(*also: str, **settings: Any) -> Any:
        return await courtyard(only_plugins=["vaults", *also], **settings)

    return go
