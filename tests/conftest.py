"""Shared test set-up. The runtime fixtures (`courtyard`, `courtyard_server`, `plugin_dir`)
come from the runtime's pytest plugin, courtyard.testing: one harness for plugin authors
and for this project."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import (
    PostgresServer,
    RedisServer,
    create_database,
    need_postgres,
    need_redis,
    postgres_server,
    redis_server,
)

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers per core. A test spends much of its time waiting (on
    subprocesses, servers, timers), so twice as many workers keep the cores busy: on 2
    cores the default run takes two thirds of the time it takes with one per core."""
    return 2 * len(os.sched_getaffinity(0))


@pytest.fixture
def add_fixture_plugins(plugin_dir: Path) -> Callable[..., None]:
    """Copy fixture plugins (tests/fixtures/plugins/<name>) into the plugin directory."""

    def add(*names: str) -> None:
        for name in names:
            shutil.copytree(FIXTURES / "plugins" / name, plugin_dir / name)

    return add


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install tests/fixtures/installed as a distribution with a `courtyard.plugins` entry
    point, on a site folder prepended to sys.path (and PYTHONPATH, for subprocesses).
    Its module is forgotten afterwards: the next test's install is imported from its own
    site folder, not found in `sys.modules`."""
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
    yield site
    for name in [n for n in sys.modules if n.split(".")[0] == "courtyard_fixture_ep"]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run, on a free loopback port."""
    need_postgres()  # skipped, naming the Debian package, without PostgreSQL
    with postgres_server() as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return create_database(postgres, f"test_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once on SQLite and once on a fresh PostgreSQL database; pass it as
    the runtime's `database_url` setting."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis server for the whole run, on a free loopback port (tests that share it
    use keys or databases of their own, or flush it)."""
    need_redis()  # skipped, naming the Debian package, without redis-server
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
