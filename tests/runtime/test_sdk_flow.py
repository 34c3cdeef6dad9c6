"""The plugin author's whole path, end to end: scaffold, pack, upload with the CLI to a
running server, use, upgrade with no failed request in between, remove."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real `courtyard` command line."""
    return subprocess.run(
        [sys.executable, "-m", "courtyard", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COURTYARD_ENTRY_POINTS": "false"},
        check=False,
    )


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_scaffold_pack_upload_upgrade_remove(courtyard_server, tmp_path):
    server = courtyard_server(entry_points=False)
    work = tmp_path / "work"
    work.mkdir()
    made = cli("new", "plugin", "hello", "--dir", "hello", cwd=work)
    assert made.returncode == 0, made.stderr
    (package,) = (work / "hello" / "src").iterdir()
    assert (package / "plugin.toml").is_file()

    uploaded = cli("plugins", "upload", str(package), "--url", server.url, "--json", cwd=work)
    assert uploaded.returncode == 0, uploaded.stderr
    assert json.loads(uploaded.stdout)["data"]["plugin"]["name"] == "hello"

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/hello/ada")).json() == {"message": "Hello, ada"}
        loaded = cli("plugins", "loaded", "--url", server.url, "--json", cwd=work)
        (entry,) = [p for p in json.loads(loaded.stdout) if p["name"] == "hello"]
        assert entry["menus"][0]["path"] == "/hello"

        # A changed version goes up while a client keeps calling: nothing may fail.
        plugin_py = package / "plugin.py"
        plugin_py.write_text(
            plugin_py.read_text().replace('f"{greeting}, {who}"', 'f"{greeting}, {who}!"')
        )
        failures: list[str] = []
        stop = asyncio.Event()

        async def keep_calling() -> int:
            calls = 0
            while not stop.is_set():
                answer = await client.get("/hello/ada")
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text}")
                calls += 1
            return calls

        caller = asyncio.create_task(keep_calling())
        upgraded = await asyncio.to_thread(
            cli, "plugins", "upload", str(package), "--url", server.url, cwd=work
        )
        await asyncio.sleep(0.2)
        stop.set()
        calls = await caller
        assert upgraded.returncode == 0, upgraded.stderr
        assert failures == [] and calls > 0
        assert (await client.get("/hello/ada")).json() == {"message": "Hello, ada!"}

        removed = cli("plugins", "remove", "hello", "--url", server.url, cwd=work)
        assert removed.returncode == 0, removed.stderr
        assert (await client.get("/hello/ada")).status_code == 404
        names = [p["name"] for p in (await client.get("/api/plugins/loaded")).json()]
        assert "hello" not in names

    gone = cli("plugins", "remove", "hello", "--url", server.url, cwd=work)
    assert gone.returncode == 1
    assert "PLUGIN_NOT_FOUND" in gone.stderr
