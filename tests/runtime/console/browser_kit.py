"""Shared pieces of the console's browser tests: the running server's handle, Chromium's
place, signing in through the form, and axe-core."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard.testing import Server

CHROMIUM = "/usr/bin/chromium"
FIXTURES = Path(__file__).parent / "fixtures"
DOCS_IMAGES = Path(__file__).resolve().parents[3] / "docs" / "images"
MASTER_KEY = "Y29uc29sZS10ZXN0cy1tYXN0ZXIta2V5LTMyLWJ5dGU="  # 32 bytes, base64


@dataclass
class Console:
    """A running server, its admin and viewer keys, and an API client as the admin."""

    server: Server
    url: str
    admin: str
    viewer: str
    api: httpx.Client

    def key(self, role: str, name: str, tenant: str | None = None) -> str:
        """A new key's secret, made through the API as the admin."""
        answer = self.api.post("/api/keys/", json={"name": name, "roles": [role], "tenant": tenant})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["secret"])


def need_chromium() -> None:
    """Skip the calling test, naming the Debian package, when Chromium is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (Debian package chromium)")


def sign_in(page: Any, secret: str, target: str = "/") -> None:
    """Sign in through the form and wait for the console."""
    page.goto(target)
    page.get_by_label("API key or token").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#sidebar", state="attached")
    # The console's script (deferred) listens for drops and clicks once the page has
    # loaded: under load, a test acting at once on the parsed page would act too early.
    page.wait_for_load_state("load")


def axe_results(page: Any) -> dict[str, Any]:
    """axe-core's findings on the page (the script is injected by the test's context,
    which bypasses the page's Content Security Policy)."""
    page.add_script_tag(path=str(FIXTURES / "axe.min.js"))
    return json.loads(page.evaluate("async () => JSON.stringify(await axe.run())"))
