"""The loopback rule: without authentication the runtime serves on loopback only, unless
told `--insecure`; beyond loopback it never falls back to open mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from auth_kit import SECRET, bearer
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.dispatcher import Dispatcher
from courtyard.generation import BuildError
from courtyard.services.exposure import check_before_bind
from courtyard.services.tokens import is_loopback_host
from courtyard.settings import Settings
from courtyard.testing import free_port, write_plugin
from courtyard_sdk import StartupError

CREDENTIAL = '[[credentials]]\nname = "runqy"\nenv = "RUNQY_API_KEY"\nroles = ["viewer"]\n'


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback_host(host) is loopback


def settings_for(tmp_path, plugin_dir, **values) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "plugin_dirs": [plugin_dir],
            "app_dirs": [tmp_path / "apps"],
            "entry_points": False,
            **values,
        }
    )


async def start(settings: Settings) -> Dispatcher:
    dispatcher = Dispatcher(settings)
    try:
        await dispatcher.start()
    except BaseException:
        await dispatcher.close()
        raise
    return dispatcher


async def test_an_open_runtime_refuses_to_serve_beyond_loopback(tmp_path, plugin_dir):
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0")
    with pytest.raises(StartupError, match=r"refusing to serve on 0\.0\.0\.0 without auth"):
        await check_before_bind(settings)
    with pytest.raises(BuildError, match="courtyard keys create"):
        await start(settings)


async def test_insecure_serves_openly(tmp_path, plugin_dir, caplog):
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0", insecure=True)
    await check_before_bind(settings)
    assert "anyone who can reach it may do anything" in caplog.text
    dispatcher = await start(settings)
    try:
        assert dispatcher.services.auth.exposed is False
        assert await dispatcher.services.auth.enabled() is False
    finally:
        await dispatcher.close()


async def test_loopback_needs_no_auth(tmp_path, plugin_dir):
    settings = settings_for(tmp_path, plugin_dir, host="::1")
    await check_before_bind(settings)
    dispatcher = await start(settings)
    await dispatcher.close()


async def test_a_token_issuer_allows_serving_beyond_loopback(tmp_path, plugin_dir):
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0", jwt_secret=SECRET)
    await check_before_bind(settings)
    dispatcher = await start(settings)
    await dispatcher.close()


async def test_an_exposed_runtime_never_opens_even_without_keys(tmp_path, plugin_dir):
    data = ["--data-dir", str(tmp_path / "data")]
    args = ["keys", "create", "--name", "a", "--role", "admin", *data]
    made = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0")
    await check_before_bind(settings)
    dispatcher = await start(settings)
    try:
        import httpx

        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=dispatcher),
            base_url="http://localhost",
            headers={"Origin": "http://localhost"},
        )
        async with client:
            assert (
                await client.post("/api/plugins/reload", headers=bearer(key))
            ).status_code == 200
            key_id = key.split("_")[1]
            revoked = await client.delete(f"/api/keys/{key_id}", headers=bearer(key))
            assert revoked.status_code == 200
            # No key is left: on loopback that would be open mode; here it stays closed.
            dispatcher.services.auth.keys_changed()
            assert await dispatcher.services.auth.enabled() is True
            answer = await client.post("/api/plugins/reload")
            assert answer.status_code == 401
    finally:
        await dispatcher.close()


async def test_a_plugin_credential_allows_serving_beyond_loopback(
    tmp_path, plugin_dir, monkeypatch
):
    write_plugin(plugin_dir, "queues", CREDENTIAL)
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0")
    monkeypatch.setenv("RUNQY_API_KEY", "")
    with pytest.raises(StartupError):
        await check_before_bind(settings)
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    await check_before_bind(settings)
    dispatcher = await start(settings)
    await dispatcher.close()


async def test_credentials_of_a_plugin_that_fails_do_not_allow_it(
    tmp_path, plugin_dir, monkeypatch
):
    write_plugin(
        plugin_dir,
        "queues",
        CREDENTIAL,
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\ndef courtyard_startup(ctx):\n    raise RuntimeError('no broker')\n",
    )
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    settings = settings_for(tmp_path, plugin_dir, host="0.0.0.0")
    await check_before_bind(settings)  # the manifest declares one...
    with pytest.raises(BuildError, match="refusing to serve"):
        await start(settings)  # ...but the plugin did not load


def test_serve_on_a_public_address_exits_at_once(tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "courtyard",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COURTYARD_ENTRY_POINTS": "0"},
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert "--insecure" in done.stderr
    assert "serving on" not in done.stdout + done.stderr  # it never bound the address
    assert time.monotonic() - started < 30
