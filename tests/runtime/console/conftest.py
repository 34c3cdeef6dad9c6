"""Fixtures of the console's browser tests: one `courtyard serve` on a free loopback port
per test module (with every first-party plugin), its keys, and Debian's Chromium driven
by Playwright (skipped, naming the package, when /usr/bin/chromium is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_kit import CHROMIUM, MASTER_KEY, Console, need_chromium
from courtyard.testing import Server, free_port


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`courtyard serve` with the first-party plugins, an admin key and a viewer key."""
    need_chromium()
    from courtyard.testing import _wait_ready, settings_toml

    root = tmp_path_factory.mktemp("console")
    (root / "plugins").mkdir()
    port = free_port()
    config = root / "courtyard.toml"
    config.write_text(
        settings_toml(
            {
                "plugin_dirs": [root / "plugins"],
                "app_dirs": [root / "apps"],
                "data_dir": root / "data",
            }
        )
    )
    env = {"RUNQY_VAULT_MASTER_KEY": MASTER_KEY}
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "courtyard", "serve", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(process, url, log_path, config_path=config, env=env)
    try:
        _wait_ready(server, 60)
        # The first key through the API while the server is still open (a program's
        # request: the internal header instead of an Origin).
        made = httpx.post(
            f"{url}/api/keys/",
            json={"name": "admin", "roles": ["admin"]},
            headers={"X-Courtyard-Internal": "true"},
        )
        assert made.status_code == 201, made.text
        admin = str(made.json()["secret"])
        api = httpx.Client(base_url=url, headers={"X-API-Key": admin}, timeout=30)
        server.clients.append(api)
        console = Console(server, url, admin, "", api)
        console.viewer = console.key("viewer", "viewer")
        yield console
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    """Chromium, headless."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, console: Console, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context (no cookie) on the console; a screenshot is saved in the
    test's temporary folder when the test ends."""
    context = browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 800})
    # An upload or a removal reloads every plugin: under CI's load (four test workers on
    # two cores) that took over 15 s once.
    context.set_default_timeout(60_000)
    opened = context.new_page()
    yield opened
    opened.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    context.close()
