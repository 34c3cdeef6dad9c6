"""App workers in their bubblewrap sandbox: what an app can no longer reach, the uid drop,
the headers it is not sent, and what happens without bwrap.

The escape tests run the `probe` fixture app, which tries each escape and reports what it
could do. They need bwrap (the Debian package bubblewrap) and are skipped without it; CI
installs it and runs them as root, as the uid drop needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard.apps.pool import APP_DATA_ENV, START_FAILED, AppSettings, WorkerApp, WorkerPool
from courtyard.apps.sandbox import DEBIAN_PACKAGE, Sandbox

FIXTURES = Path(__file__).parents[1] / "fixtures" / "apps"
ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason=f"bwrap is not installed (Debian package {DEBIAN_PACKAGE})",
)
needs_root = pytest.mark.skipif(not ROOT, reason="the uid drop happens when run as root")
CREDENTIALS = {
    "Authorization": "Bearer cyk_secret-key",
    "Cookie": "session=secret-cookie",
    "X-API-Key": "cyk_secret-api-key",
    "X-Courtyard-Internal": "true",
    "X-Buntime-Internal": "true",
}


def copy_app(target: Path, name: str, **settings: Any) -> Path:
    """Copy a fixture app into `target/<name>/1.0.0`, with extra `app.toml` settings."""
    root = target / name / "1.0.0"
    shutil.copytree(FIXTURES / name / "1.0.0", root)
    if settings:
        with (root / "app.toml").open("a") as manifest:
            for key, value in settings.items():
                text = str(value).lower() if isinstance(value, bool) else repr(value)
                manifest.write(f"{key} = {text}\n")
    return root


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[Callable[..., WorkerPool]]:
    """`make_pool(**options)`: a pool on `tmp_path/run`, closed after the test."""
    pools: list[WorkerPool] = []

    def make(**options: Any) -> WorkerPool:
        options.setdefault("grace", 1.0)
        pool = WorkerPool(tmp_path / "run", **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def client(pool: WorkerPool, app: WorkerApp) -> httpx.AsyncClient:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await pool.handle(app, scope, receive, send)

    transport = httpx.ASGITransport(app=asgi)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://apps.test", timeout=30)


def worker_app(root: Path, **settings: Any) -> WorkerApp:
    name = root.parent.name
    return WorkerApp(f"{name}@1.0.0", root, f"{name}_app:app", AppSettings(**settings))


# -- escapes, end to end -----------------------------------------------------------------


@needs_bwrap
async def test_an_app_reaches_nothing_of_the_runtime(courtyard_server, tmp_path, plugin_dir):
    """Through a real `courtyard serve`: the runtime's data, configuration, plugins,
    other apps and /proc stay out of reach; the app's data folder is its own."""
    jwt_secret = "jwt-" + secrets.token_hex(16)
    env_secret = "env-" + secrets.token_hex(16)
    db_secret = "db-" + secrets.token_hex(16)
    apps = tmp_path / "apps"
    data = tmp_path / "data"
    data.mkdir()
    # The runtime's files, as a server holds them (the real database is created too).
    (data / "secrets.db").write_text(f"admin key {db_secret}")
    (data / "courtyard.toml").write_text(f'jwt_secret = "{jwt_secret}"\n')
    probe = copy_app(apps, "probe", ttl=0)  # a fresh worker for every request
    other = copy_app(apps, "echo")
    (other / "secret.txt").write_text(db_secret)
    host_tmp = Path("/tmp") / f"courtyard-host-{secrets.token_hex(8)}"
    host_tmp.write_text(db_secret)
    try:
        server = courtyard_server(
            entry_points=False,
            jwt_secret=jwt_secret,
            env={"COURTYARD_SANDBOX_TEST_SECRET": env_secret},
        )
        query = {
            "data_dir": str(data),
            "plugin_dir": str(plugin_dir),
            "other_app": str(other),
            "run_dir": str(data / "run"),
            "server_pid": str(server.process.pid),
            "host_tmp_file": str(host_tmp),
        }
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = await http.get("/probe/escape", params=query)
            second = await http.get("/probe/escape", params=query)
    finally:
        host_tmp.unlink()
    assert first.status_code == 200, first.text
    seen = first.json()
    for secret in (jwt_secret, env_secret, db_secret):
        assert secret not in first.text
        assert secret not in second.text

    # The runtime's data folder shows only the app's own data folder, bound into it.
    assert not seen["read_db"]["ok"] and not seen["read_config"]["ok"]
    assert seen["list_data_dir"] == {"ok": True, "value": ["app-data"]}
    assert not seen["list_run_dir"]["ok"]
    assert "FileNotFoundError" in seen["read_db"]["error"]
    # Plugins cannot be planted; other apps and the server's /proc entries are not there.
    if ROOT:  # (else it may write to folders of its own sandbox, which vanish with it)
        assert not seen["write_plugin"]["ok"] and not seen["write_plugin_dir_file"]["ok"]
    assert not any(plugin_dir.rglob("*evil*"))
    assert not seen["read_other_app"]["ok"]
    assert not seen["read_server_environ"]["ok"] and not seen["read_server_cmdline"]["ok"]
    assert seen["pids"] == ["1"]  # only itself
    # Its own version folder is read-only.
    assert not seen["write_own_version"]["ok"]
    assert "Read-only file system" in seen["write_own_version"]["error"]
    assert not (probe / "evil.py").exists()
    # Nothing of the host's /root, whatever the interpreter's path.
    assert (
        seen["list_root_home"] == {"ok": True, "value": [".pyenv"]}
        or not seen["list_root_home"]["ok"]
    )

    # Its data folder: writable, outside its version folder, kept across workers.
    app_data = data / "app-data" / "probe"
    assert seen["app_data"] == seen["home"] == str(app_data)
    assert seen["write_data"]["ok"]
    assert (app_data / "note").read_text() == "kept"
    assert seen["starts"]["value"] == 1
    assert second.json()["starts"]["value"] == 2
    # A private /tmp: its file is not the host's, the host's is not its, nor the last
    # worker's.
    assert seen["tmp_write"]["ok"]
    assert not Path(seen["tmp_write"]["value"]).exists()
    assert not seen["tmp_host_file"]["ok"]
    assert Path(seen["tmp_write"]["value"]).name not in second.json()["tmp_listing"]["value"]

    # Not root, and no capability, when the runtime is root.
    if ROOT:
        assert seen["uid"] != 0 and seen["euid"] != 0 and seen["gid"] != 0
        for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(seen["status"][name][0], 16) == 0, name
        assert seen["status"]["Groups"] == []


# -- the uid drop, seen from the host ----------------------------------------------------


@needs_bwrap
@needs_root
async def test_the_worker_runs_as_the_sandbox_user_as_the_kernel_sees_it(tmp_path, make_pool):
    pool = make_pool()
    app = worker_app(copy_app(tmp_path / "apps", "probe"))
    async with client(pool, app) as http:
        assert (await http.get("/")).status_code == 200
    (stats,) = pool.stats()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{stats['pid']}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == ["65534"] * 4  # nobody
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert int(status["NoNewPrivs"]) == 1
    data = tmp_path / "app-data" / "probe"
    assert data.stat().st_uid == 65534 and oct(data.stat().st_mode & 0o777) == "0o700"


@needs_bwrap
@needs_root
async def test_an_unknown_sandbox_user_refuses_to_start_workers(tmp_path, make_pool, caplog):
    pool = make_pool(sandbox_user="courtyard-no-such-user")
    app = worker_app(copy_app(tmp_path / "apps", "echo"))
    async with client(pool, app) as http:
        answer = await http.get("/")
    assert answer.status_code == 502
    assert answer.json()["error"] == {"code": "APP_START_FAILED", "message": START_FAILED}
    assert "courtyard-no-such-user" in caplog.text


# -- headers and network ------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("forward", [False, True])
async def test_credentials_reach_the_app_only_when_it_asks(tmp_path, make_pool, forward):
    pool = make_pool()
    app = worker_app(copy_app(tmp_path / "apps", "probe"), forward_credentials=forward)
    async with client(pool, app) as http:
        answer = await http.get("/", headers={**CREDENTIALS, "X-Other": "kept"})
    headers = answer.json()["headers"]
    assert headers["x-other"] == "kept"
    for name, value in CREDENTIALS.items():
        assert (headers.get(name.lower()) == value) is forward, name
    # The same for a WebSocket handshake.
    messages = await websocket(pool, app, CREDENTIALS)
    (text,) = [m["text"] for m in messages if m["type"] == "websocket.send"]
    seen = json.loads(text)["headers"]
    for name, value in CREDENTIALS.items():
        assert (seen.get(name.lower()) == value) is forward, name


async def websocket(pool: WorkerPool, app: WorkerApp, headers: dict[str, str]) -> list[Any]:
    """Drive one WebSocket session through the pool; the messages it sent back."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "scheme": "ws",
        "client": ("127.0.0.1", 1),
        "server": ("apps.test", 80),
        "subprotocols": [],
        "headers": [(b"host", b"apps.test")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "extensions": {"websocket.http.response": {}},
    }
    await asyncio.wait_for(pool.handle(app, scope, incoming.get, send), 30)
    return sent


@needs_bwrap
async def test_network_false_leaves_the_app_without_a_network(tmp_path, make_pool):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pool = make_pool()
    online = worker_app(copy_app(tmp_path / "apps", "probe"))
    offline = WorkerApp("probe@2.0.0", online.root, online.entry, AppSettings(network=False))
    try:
        async with client(pool, online) as http:
            assert (await http.get("/connect", params={"port": port})).json()["ok"]
        async with client(pool, offline) as http:
            refused = (await http.get("/connect", params={"port": port})).json()
    finally:
        listener.close()
    assert not refused["ok"]
    assert "ConnectionRefused" in refused["error"] or "unreachable" in refused["error"]


@needs_bwrap
async def test_a_socket_the_app_swaps_for_a_link_is_not_followed(tmp_path, make_pool, caplog):
    """The socket's folder is the app's: a link to another program's socket there must not
    make the runtime relay requests (with the worker's secret) to that program."""
    received: list[bytes] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.close()

    target = tmp_path / "service.sock"
    server = await asyncio.start_unix_server(service, target)
    pool = make_pool()
    app = worker_app(copy_app(tmp_path / "apps", "probe"))
    try:
        async with client(pool, app) as http:
            hijacked = (await http.get("/hijack", params={"target": str(target)})).json()
            assert hijacked["ok"], hijacked
            first = pool.stats()[0]["pid"]
            for worker in pool._workers[app.key]:  # the next request connects anew
                for kept in worker.connections:
                    kept.close()
                worker.connections.clear()
            answer = await http.get("/connect", params={"port": 1})
    finally:
        server.close()
    assert answer.status_code == 200  # by a fresh worker
    assert [s["pid"] for s in pool.stats()] != [first]
    await asyncio.sleep(0.1)
    assert not any(received)  # the other program got nothing: no request, no secret
    assert "leads to process" in caplog.text


# -- without bwrap -------------------------------------------------------------------------


async def test_without_bwrap_workers_do_not_start(tmp_path, make_pool, caplog):
    pool = make_pool(bwrap="courtyard-no-such-bwrap")
    app = worker_app(copy_app(tmp_path / "apps", "echo"))
    async with client(pool, app) as http:
        answer = await http.get("/")
        ws = await websocket(pool, app, {})
    assert answer.status_code == 502
    assert answer.json()["error"] == {"code": "APP_START_FAILED", "message": START_FAILED}
    assert ws[0]["type"] == "websocket.http.response.start" and ws[0]["status"] == 502
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and DEBIAN_PACKAGE in errors[0].getMessage()
    assert "apps_allow_unsandboxed" in errors[0].getMessage()
    assert pool.stats() == []


async def test_allow_unsandboxed_serves_without_bwrap_and_warns_once(tmp_path, make_pool, caplog):
    pool = make_pool(bwrap="courtyard-no-such-bwrap", allow_unsandboxed=True)
    apps = tmp_path / "apps"
    echo, probe = worker_app(copy_app(apps, "echo")), worker_app(copy_app(apps, "probe"))
    async with client(pool, echo) as http:
        answer = await http.get("/")
    async with client(pool, probe) as http:
        assert (await http.get("/")).status_code == 200
    assert answer.status_code == 200
    env = answer.json()["env"]
    assert env[APP_DATA_ENV] == env["HOME"] == str(tmp_path / "app-data" / "echo")
    warnings = [r for r in caplog.records if "UNSANDBOXED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_static_apps_serve_without_bwrap(courtyard, tmp_path, monkeypatch):
    """The runtime with no bwrap on PATH: static apps serve, ASGI apps answer 502."""
    apps = tmp_path / "apps"
    site = apps / "site" / "1.0.0"
    site.mkdir(parents=True)
    (site / "package.json").write_text('{"name": "site", "version": "1.0.0"}')
    (site / "index.html").write_text("<h1>site</h1>")
    copy_app(apps, "echo")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/site/")).text == "<h1>site</h1>"
    answer = await rt.client.get("/echo/")
    assert answer.status_code == 502
    assert answer.json()["error"] == {"code": "APP_START_FAILED", "message": START_FAILED}


# -- the command line ----------------------------------------------------------------------


@needs_bwrap
def test_the_command_binds_only_what_the_worker_needs(tmp_path):
    sandbox = Sandbox.locate()
    root, data, sockets = tmp_path / "apps" / "x" / "1.0.0", tmp_path / "data", tmp_path / "s"
    command = sandbox.command(["python"], socket_dir=sockets, root=root, data=data)
    pairs = {(a, b, c) for a, b, c in zip(command, command[1:], command[2:], strict=False)}
    assert ("--ro-bind", str(root), str(root)) in pairs
    assert ("--bind", str(data), str(data)) in pairs
    assert ("--bind", str(sockets), "/run/courtyard") in pairs
    for flag in ("--unshare-pid", "--unshare-ipc", "--die-with-parent", "--as-pid-1"):
        assert flag in command
    assert "--unshare-net" not in command
    assert "--unshare-net" in sandbox.command(["python"], socket_dir=sockets, network=False)
    # Writable binds: only the data and socket folders.
    writable = [command[i + 1] for i, arg in enumerate(command) if arg == "--bind"]
    assert writable == [str(data), str(sockets)]
    if ROOT:
        assert command[command.index("--") + 1].endswith("setpriv")
