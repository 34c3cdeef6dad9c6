"""Fixtures of the runtime's tests that several modules share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURE_APPS = Path(__file__).parents[1] / "fixtures" / "apps"


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    """The fixture apps (tests/fixtures/apps), copied so that their __pycache__ stays out
    of the repository."""
    target = tmp_path / "apps"
    shutil.copytree(FIXTURE_APPS, target)
    return target
