"""The pytest plugin for testing Courtyard plugins (installed with `courtyard[testing]`),
shipped with the runtime it starts, as pytest ships pytester.

Fixtures:

- `plugin_dir`: an empty plugin directory; `write_plugin()` puts a plugin in it.
- `courtyard`: starts an in-process runtime, `await courtyard(**settings)`, and gives a
  `Runtime` with an HTTP client on it. Stopped (every shutdown hook run) after the test.
- `courtyard_server`: starts `courtyard serve` in a subprocess on a free loopback port,
  `courtyard_server(**settings)`, and stops it with SIGTERM after the test.

Identities: `await rt.client_as(roles=["viewer"], tenant="t1")` (and `server.client_as(...)`)
gives a client carrying a fresh API key with those roles, permissions and tenant. The
first key switches the runtime out of open mode: from then on `rt.client`, which carries
no credential, is an anonymous caller.

Settings are those of `courtyard.toml` (`plugin_dirs`, `plugins`, `strict`, ...). By
default the runtime loads the plugin directory and installed entry-point plugins, and keeps
its data under the test's temporary folder.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

async_fixture: Callable[..., Any]  # pytest-asyncio's, else pytest's (their overloads differ)
try:  # an async fixture that works whatever the author's asyncio_mode
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - the [testing] extra installs pytest-asyncio
    async_fixture = pytest.fixture

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import httpx

    from .dispatcher import Dispatcher

ORIGIN = "http://localhost"


def _asgi(dispatcher: Dispatcher) -> Callable[..., Awaitable[None]]:
    """`dispatcher` as the ASGI app httpx calls: it takes the dicts httpx passes (typed there as
    mutable mappings, here as dicts)."""
    return dispatcher


def write_plugin(plugin_dir: Path, name: str, manifest: str = "", code: str | None = None) -> Path:
    """Create plugin `name` in `plugin_dir`.

    :param manifest: extra `plugin.toml` lines (the name is written for you).
    :param code: the source of `plugin.py`; when given, `module = "plugin"` is set.
    :return: the plugin's folder.
    """
    root = plugin_dir / name
    root.mkdir(parents=True, exist_ok=True)
    lines = [f'name = "{name}"']
    if code is not None:
        lines.append('module = "plugin"')
        (root / "plugin.py").write_text(code, encoding="utf-8")
    # Top-level keys must precede tables in TOML: put ours first.
    (root / "plugin.toml").write_text("\n".join(lines) + "\n" + manifest, encoding="utf-8")
    return root


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Runtime:
    """An in-process runtime and an HTTP client on it (no network involved).

    `client` sends `Origin` matching the server, as a browser on the same site would.
    """

    dispatcher: Dispatcher
    client: httpx.AsyncClient
    clients: list[httpx.AsyncClient] = field(default_factory=list)  # closed after the test

    async def reload(self) -> httpx.Response:
        """POST /api/plugins/reload and return the answer."""
        return await self.client.post("/api/plugins/reload")

    async def create_key(
        self,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        tenant: str | None = None,
        name: str = "test",
    ) -> str:
        """Create an API key in the runtime's database and return its secret.

        :raises ApiError: `UNKNOWN_ROLE`, `INVALID_PERMISSION`, `NO_PERMISSIONS`, ...
        """
        _, secret = await self.dispatcher.services.auth.create_key(
            name=name, roles=tuple(roles), permissions=tuple(permissions), tenant=tenant
        )
        return secret

    async def client_as(
        self,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        tenant: str | None = None,
        name: str = "test",
    ) -> httpx.AsyncClient:
        """A client acting as a new key's holder: `Authorization: Bearer <key>` on every
        request (and the matching `Origin`). Closed after the test."""
        import httpx

        secret = await self.create_key(
            roles=roles, permissions=permissions, tenant=tenant, name=name
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_asgi(self.dispatcher)),
            base_url=ORIGIN,
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {secret}"},
        )
        self.clients.append(client)
        return client


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """An empty plugin directory under the test's temporary folder."""
    path = tmp_path / "plugins"
    path.mkdir()
    return path


def _settings(tmp_path: Path, plugin_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "plugin_dirs": [plugin_dir],
        "app_dirs": [tmp_path / "apps"],
        "data_dir": tmp_path / "data",
        **overrides,
    }


@async_fixture
async def courtyard(tmp_path: Path, plugin_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start an in-process runtime: `rt = await courtyard(strict=True, plugins={...})`."""
    import httpx

    from .dispatcher import Dispatcher
    from .settings import Settings

    started: list[Runtime] = []

    async def start(**overrides: Any) -> Runtime:
        settings = Settings.model_validate(_settings(tmp_path, plugin_dir, overrides))
        dispatcher = Dispatcher(settings)
        try:
            await dispatcher.start()
        except BaseException:
            await dispatcher.close()  # its services had started (database, audit writer, ...)
            raise
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_asgi(dispatcher)),
            base_url=ORIGIN,
            headers={"Origin": ORIGIN},
        )
        runtime = Runtime(dispatcher, client)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        for client in (runtime.client, *runtime.clients):
            await client.aclose()
        await runtime.dispatcher.close()
    # Finalize what the runtimes left for the garbage collector (a database connection a
    # cancelled task still held) while their event loop runs: later, its driver's thread
    # would report to a closed loop, and pytest would blame whichever test came next.
    gc.collect()


@dataclass
class Server:
    """A `courtyard serve` process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    stopped: bool = field(default=False)
    config_path: Path | None = None
    env: dict[str, str] | None = None
    clients: list[httpx.Client] = field(default_factory=list)  # closed by stop()

    @property
    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the server, wait for it, and return its exit code."""
        for client in self.clients:
            client.close()
        if not self.stopped:
            self.stopped = True
            terminate(self.process, timeout)
        return int(self.process.returncode)

    def create_key(
        self,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        tenant: str | None = None,
        name: str = "test",
    ) -> str:
        """Create an API key with `courtyard keys create` on the server's database and
        return its secret (the server accepts it at once).

        :raises RuntimeError: with the command's output when it fails.
        """
        command = [sys.executable, "-m", "courtyard", "keys", "create", "--json", "--name", name]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        command += [arg for role in roles for arg in ("--role", role)]
        command += [arg for permission in permissions for arg in ("--permission", permission)]
        if tenant is not None:
            command += ["--tenant", tenant]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **(self.env or {})}
        )
        if done.returncode != 0:
            raise RuntimeError(f"courtyard keys create failed:\n{done.stdout}{done.stderr}")
        return str(json.loads(done.stdout)["secret"])

    def client_as(
        self,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        tenant: str | None = None,
        name: str = "test",
    ) -> httpx.Client:
        """An httpx client on the server carrying a new key (`Authorization: Bearer`).
        Closed when the server stops."""
        import httpx

        secret = self.create_key(roles=roles, permissions=permissions, tenant=tenant, name=name)
        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {secret}"})
        self.clients.append(client)
        return client


def terminate(process: subprocess.Popen[Any], timeout: float) -> bool:
    """SIGTERM `process` (a server drains, then exits) and wait for it; killed if it has not
    exited within `timeout` seconds. Whether it exited by itself."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"courtyard serve exited early:\n{server.log}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"courtyard serve not ready after {timeout} s:\n{server.log}")


@pytest.fixture
def courtyard_server(tmp_path: Path, plugin_dir: Path) -> Iterator[Callable[..., Server]]:
    """Start `courtyard serve` on a free 127.0.0.1 port: `server = courtyard_server()`.

    Keyword arguments are settings, written to a `courtyard.toml` the server reads;
    `command` runs another serving command instead (`("dev", str(plugin_folder))`).
    """
    servers: list[Server] = []

    def start(
        ready_timeout: float = 30,
        env: dict[str, str] | None = None,
        command: Sequence[str] = ("serve",),
        **overrides: Any,
    ) -> Server:
        port = free_port()
        config = tmp_path / f"courtyard-{port}.toml"
        settings = _settings(tmp_path, plugin_dir, overrides)
        config.write_text(settings_toml(settings), encoding="utf-8")
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "courtyard",
                    *command,
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        server = Server(process, f"http://127.0.0.1:{port}", log_path, config_path=config, env=env)
        servers.append(server)
        _wait_ready(server, ready_timeout)
        return server

    yield start
    for server in servers:
        server.stop()


def settings_toml(values: dict[str, Any]) -> str:
    """Settings as a `courtyard.toml` (the subset settings use: scalars, lists, tables;
    `plugins` as tables, None left out)."""
    top: list[str] = []
    tables: list[str] = []

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list | tuple):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f'"{k}" = {literal(v)}' for k, v in value.items()) + "}"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    for key, value in values.items():
        if value is None:  # TOML has no null: an unset setting is left out
            continue
        if key == "plugins":
            for name, table in value.items():
                tables.append(f'[plugins."{name}"]')
                tables.extend(f"{k} = {literal(v)}" for k, v in table.items())
        else:
            top.append(f"{key} = {literal(value)}")
    return "\n".join([*top, *tables]) + "\n"
