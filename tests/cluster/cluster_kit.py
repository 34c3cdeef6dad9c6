"""Helpers of the cluster tests: `courtyard serve` instances sharing one PostgreSQL and one
Redis (`Instance`, `Cluster`), archives to upload, and waiting for an instance to apply
what another one did. nginx in front of them is `courtyard.throwaway.nginx_balancer`.

Everything listens on 127.0.0.1 only, on free ports. Each instance has its own data
folder (so its own plugin and app folders) and its own port, which it keeps across
restarts (the load balancer's upstreams name it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from archive_kit import tar_file, tgz_bytes
from courtyard.testing import free_port, settings_toml, terminate

# Sent by every client: the runtime's CSRF check passes programs that say so.
INTERNAL = {"X-Courtyard-Internal": "true"}
# The contract: what A answered, B serves within 2 s in any case.
PROPAGATION_SECONDS = 2.0

# A directory plugin with a route at its base answering {"message": MESSAGE}.
MESSAGE_PLUGIN = """\
from courtyard_sdk import Blueprint, hookimpl

MESSAGE = {message!r}


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint({blueprint!r}, __name__)

    @bp.get("/")
    async def index():
        return {{"message": MESSAGE}}

    return bp
"""

# Server-Sent Events of the event bus, and a route that publishes (as in
# tests/runtime/test_events.py).
FEED_PLUGIN = """\
from courtyard_sdk import Blueprint, hookimpl, request
from courtyard_sdk.events import sse_response


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("feed", __name__)

    @bp.get("/sse")
    async def sse():
        return sse_response(ctx.events, *request.args.get("topics", "notes.*").split(","))

    @bp.post("/publish")
    async def publish():
        body = await request.get_json()
        event = await ctx.events.publish(body["topic"], body["data"])
        return {"id": event.id}

    return bp
"""


# -- archives ------------------------------------------------------------------------------

Files = dict[str, bytes]


def plugin_files(name: str, message: str, version: str = "1.0.0") -> Files:
    """A plugin whose route at `/<name>` answers {"message": message}."""
    manifest = f'name = "{name}"\nversion = "{version}"\nmodule = "plugin"\nbase = "/{name}"\n'
    code = MESSAGE_PLUGIN.format(message=message, blueprint=name)
    return {"plugin.toml": manifest.encode(), "plugin.py": code.encode()}


def app_files(name: str, version: str, page: str, padding: int = 0) -> Files:
    """A static app whose index.html says `page`, with `padding` bytes of random data
    beside it (random: gzip cannot shrink it, so the upload takes as long as its size)."""
    files = {
        "package.json": json.dumps({"name": name, "version": version}).encode(),
        "index.html": page.encode(),
    }
    if padding:
        files["padding.bin"] = os.urandom(padding)
    return files


def tgz(files: Files) -> bytes:
    return tgz_bytes([tar_file(name, data) for name, data in files.items()])


def multipart(filename: str, data: bytes, boundary: str = "cluster-boundary") -> bytes:
    """A multipart/form-data body with `data` as the form field `file`."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


# -- instances -----------------------------------------------------------------------------


@dataclass
class Instance:
    """One `courtyard serve` process of the cluster, restartable on the same port."""

    name: str  # its instance_id too
    folder: Path
    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def config_path(self) -> Path:
        return self.folder / "courtyard.toml"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def log(self) -> str:
        """Everything the instance wrote, over all its runs."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def env(self) -> dict[str, str]:
        """The environment it runs with: the instance's own id, and health details on (the
        cluster settings are read from the environment: a config file with a setting the
        runtime does not know yet is refused, an environment variable is not read)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("COURTYARD_")}
        return {
            **base,
            "COURTYARD_INSTANCE_ID": self.name,
            "COURTYARD_HEALTH_DETAILS": "true",
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        """Start the process; do not wait for it."""
        assert not self.running, f"{self.name} already runs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(settings_toml(self.settings), encoding="utf-8")
        with self.log_path.open("ab") as log:
            log.write(f"---- start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "courtyard", "serve"),
                    *("--config", str(self.config_path)),
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.folder,
            )

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait until `/api/health/ready` answers 200; the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.running:
                raise AssertionError(f"{self.name} exited early:\n{self.log[-5000:]}")
            if self.ready():
                return time.monotonic() - started
            time.sleep(0.03)
        raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.log[-5000:]}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60) -> Instance:
        self.launch()
        self.wait_ready(timeout)
        return self

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the instance drains), wait; its exit status."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.process is None:
            return 0
        if not terminate(self.process, timeout):
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout} s")
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 60) -> Instance:
        assert self.stop() == 0, self.log[-5000:]
        return self.start(timeout)

    def client(self, headers: dict[str, str] | None = None, timeout: float = 30) -> httpx.Client:
        """An HTTP client on this instance (closed when it stops)."""
        client = httpx.Client(
            base_url=self.url, headers={**INTERNAL, **(headers or {})}, timeout=timeout
        )
        self.clients.append(client)
        return client

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """One GET on a fresh connection."""
        return httpx.get(self.url + path, headers={**INTERNAL, **(headers or {})}, timeout=30)

    def details(self) -> dict[str, Any]:
        """`instance` of `GET /api/health/` (with `health_details` on)."""
        answer = self.get("/api/health/")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "instance" in body, f"{self.name}: /api/health/ has no `instance`: {body}"
        return body["instance"]

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`courtyard <args>` with this instance's settings (its config file)."""
        return subprocess.run(
            [sys.executable, "-m", "courtyard", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.folder,
            timeout=timeout,
        )

    def create_key(self, *roles: str, name: str = "test", permissions: Iterable[str] = ()) -> str:
        """A new key in the shared database (`courtyard keys create`); its secret."""
        command = ["keys", "create", "--json", "--name", name, "--config", str(self.config_path)]
        command += [arg for role in roles for arg in ("--role", role)]
        command += [arg for permission in permissions for arg in ("--permission", permission)]
        done = self.run_cli(*command)
        assert done.returncode == 0, done.stdout + done.stderr
        return str(json.loads(done.stdout)["secret"])


@dataclass
class Cluster:
    """Instances on one database and one Redis, each with its own data folder, plus a
    plugin folder all of them read (as a volume every instance mounts would be)."""

    folder: Path
    database_url: str
    redis_url: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def shared_plugins(self) -> Path:
        return self.folder / "shared-plugins"

    def write_shared_plugin(self, name: str, code: str, manifest: str = "") -> Path:
        root = self.shared_plugins / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "plugin.py").write_text(code, encoding="utf-8")
        text = f'name = "{name}"\nmodule = "plugin"\nbase = "/{name}"\n{manifest}'
        (root / "plugin.toml").write_text(text, encoding="utf-8")
        return root

    def instance(self, name: str, **settings: Any) -> Instance:
        """A new instance (not started). Settings override the cluster's: the shared
        database and Redis bus, no entry-point plugins, its own data folder, whose
        `plugins/` is its first plugin folder (uploads go there) before the shared one."""
        folder = self.folder / name
        data = folder / "data"
        merged: dict[str, Any] = {
            "data_dir": str(data),
            "plugin_dirs": [str(data / "plugins"), str(self.shared_plugins)],
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "event_bus": "redis",
            "entry_points": False,
            "drain_timeout": 10,
            **settings,
        }
        instance = Instance(name, folder, merged)
        self.instances.append(instance)
        return instance

    def start(self, *instances: Instance, timeout: float = 90) -> None:
        """Start instances side by side and wait until every one is ready."""
        for instance in instances:
            instance.launch()
        for instance in instances:
            instance.wait_ready(timeout)

    def close(self) -> None:
        for instance in self.instances:
            with suppress(AssertionError):  # it ignored SIGTERM: killed below
                instance.stop(timeout=15)
            instance.kill()


# -- waiting for the others -----------------------------------------------------------------


def applied_at_once(
    instance: Instance, check: Callable[[], bool], what: str, within: float = PROPAGATION_SECONDS
) -> None:
    """`check()` holds on `instance` right away: the instance that answered the change
    waited for every live instance to apply it. Failing that, the message says whether
    it came later (and when) or not within the contract's 2 s."""
    if check():
        return
    started = time.monotonic()
    while time.monotonic() - started < within:
        time.sleep(0.02)
        if check():
            took = time.monotonic() - started
            raise AssertionError(
                f"{instance.name} applied {what} {took:.2f} s after the answer, "
                "not before it was answered"
            )
    raise AssertionError(f"{instance.name} did not apply {what} within {within} s")


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Wait until `check()` holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.03)
    return time.monotonic() - started


def upload(
    client: httpx.Client, kind: str, filename: str, data: bytes, **params: str
) -> httpx.Response:
    """POST /api/<kind>s/upload (kind: plugin or app)."""
    return client.post(
        f"/api/{kind}s/upload",
        params=params or None,
        files={"file": (filename, data, "application/octet-stream")},
    )


def page_of(instance: Instance, path: str) -> str | None:
    """What `path` serves on `instance`: its text on 200, else None."""
    answer = instance.get(path)
    return answer.text if answer.status_code == 200 else None


def message_of(instance: Instance, base: str) -> str | None:
    """The `message` a plugin route answers on `instance`, or None when it is not there."""
    answer = instance.get(base)
    return answer.json().get("message") if answer.status_code == 200 else None


def app_names(instance: Instance) -> list[str]:
    answer = instance.get("/api/apps/")
    assert answer.status_code == 200, answer.text
    return [app["name"] for app in answer.json()]


def paths_named(root: Path, fragment: str) -> list[Path]:
    """Every file or folder under `root` whose name holds `fragment`."""
    return [p for p in root.rglob("*") if fragment in p.name] if root.exists() else []
