"""Shared test set-up. The runtime fixtures (`courtyard`, `courtyard_server`, `plugin_dir`)
come from the SDK's pytest plugin, courtyard_sdk.testing: one harness for plugin authors
and for this project."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def add_fixture_plugins(plugin_dir: Path) -> Callable[..., None]:
    """Copy fixture plugins (tests/fixtures/plugins/<name>) into the plugin directory."""

    def add(*names: str) -> None:
        for name in names:
            shutil.copytree(FIXTURES / "plugins" / name, plugin_dir / name)

    return add


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install tests/fixtures/installed as a distribution with a `courtyard.plugins` entry
    point, on a site folder prepended to sys.path (and PYTHONPATH, for subprocesses)."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURES / "installed", site)
    info = site / "courtyard_fixture_ep-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: courtyard-fixture-ep\nVersion: 2.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[courtyard.plugins]\nfixture-ep = courtyard_fixture_ep\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site
