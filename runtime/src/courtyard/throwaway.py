"""Throwaway servers on loopback and free ports, for the tests and the benches:
`redis_server`, `postgres_server` and `nginx_balancer` (context managers). Nothing here
is served to anyone; the servers go when their block ends.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .testing import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class Missing(RuntimeError):
    """The server's program is not installed (the message names the Debian package)."""


@dataclass
class RedisServer:
    """A redis-server process on a loopback port (`redis_server` makes and starts it)."""

    port: int
    url: str
    args: list[str]
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        """(Re)start the server on its port and wait until it answers."""
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.folder / "redis.log").read_text()[-2000:]
                raise RuntimeError(f"redis-server did not start: {log_text}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ping(port: int) -> bool:
    """Whether a Redis server answers PING on `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(folder: Path, timeout: float = 5.0) -> Iterator[RedisServer]:
    """Run redis-server in `folder` on a free loopback port until the block ends.

    :raises Missing: redis-server is not installed.
    """
    if not Path(REDIS_SERVER).is_file():
        raise Missing("redis-server is not installed (Debian package redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(folder)]
    server = RedisServer(port, f"redis://127.0.0.1:{port}/0", args, folder)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


# PostgreSQL ----------------------------------------------------------------------------


def postgres_bin(tool: str) -> str | None:
    """The path of a PostgreSQL server tool (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return found[-1] if found else shutil.which(tool)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster's server on a loopback port (`postgres_server` makes it)."""

    port: int
    folder: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """(Re)start the server on its port and wait until it accepts connections."""
        with (self.folder / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                **_as_postgres_user(),
            )
        deadline = time.monotonic() + timeout
        while not _ready(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.folder / "postgres.log").read_text()[-2000:]
                raise RuntimeError(f"postgres did not start: {log_text}")
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for `database` on this server (superuser, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (a fast shutdown, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            # Fast shutdown: ends the sessions clients left open (a smart shutdown would
            # wait for them) and exits cleanly in a fraction of a second.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run initdb and postgres, which refuse to run as root, as
    Debian's `postgres` user. Not through runuser: it would stand between us and the
    server, turn every stop into SIGTERM (a smart shutdown) and sleep 2 s after it."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _ready(port: int) -> bool:
    ready = postgres_bin("pg_isready")
    command = [str(ready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    return subprocess.run(command, check=False).returncode == 0


def create_database(server: PostgresServer, name: str) -> str:
    """Create database `name` on `server` and return its URL."""
    psql = postgres_bin("psql") or "psql"
    subprocess.run(
        [
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-q",
            "-c",
            f'CREATE DATABASE "{name}"',
        ],
        check=True,
        capture_output=True,
    )
    return server.url(name)


@contextmanager
def postgres_server(timeout: float = 30.0) -> Iterator[PostgresServer]:
    """Run a fresh PostgreSQL cluster on a free loopback port until the block ends.

    The cluster lives in its own folder under the system's temporary directory (the
    `postgres` user cannot enter a caller's, private to root) and is removed after.

    :raises Missing: PostgreSQL is not installed.
    """
    if postgres_bin("initdb") is None or postgres_bin("postgres") is None:
        raise Missing("PostgreSQL is not installed (Debian package postgresql)")
    initdb, postgres = str(postgres_bin("initdb")), str(postgres_bin("postgres"))
    folder = Path(tempfile.mkdtemp(prefix="courtyard-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        cwd=folder,
        **_as_postgres_user(),
    )
    port = free_port()
    args = [postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    args += ["-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200"]
    server = PostgresServer(port, folder, args)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# nginx, as a load balancer ------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$status|$upstream_addr|$upstream_status|$request_method $request_uri';
    access_log {access_log};
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    client_max_body_size 100m;

    upstream courtyard {{
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://courtyard;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            # A draining, restarting or catching-up instance is skipped.
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@dataclass
class Balancer:
    """nginx (one process) on a free loopback port, round robin over instances."""

    process: subprocess.Popen[bytes]
    folder: Path
    port: int

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> list[list[str]]:
        """Each request (when logged): its status, the upstreams tried (`a, b` when it
        was passed on), their statuses, and the request."""
        path = self.folder / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line.split("|") for line in lines]

    @property
    def error_log(self) -> str:
        """What nginx logged of its errors."""
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop gracefully (SIGQUIT), then SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def nginx_balancer(
    folder: Path, ports: Iterable[int], tuning: str = "", *, access_log: bool = True
) -> Iterator[Balancer]:
    """Run nginx in front of the servers on loopback `ports` until the block ends: it
    passes a request on to the next server when one refuses, times out, or answers 502 or
    503 (a draining, restarting or catching-up instance), as docs/deployment.md sets it.

    :param tuning: extra parameters of each `server` line, such as `max_fails=0`.
    :param access_log: log each request (`Balancer.access_log`); off for benches.
    :raises Missing: nginx is not installed.
    """
    if not Path(NGINX).is_file():
        raise Missing("nginx is not installed (Debian package nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} {tuning};" for p in ports)
    conf = folder / "nginx.conf"
    log = f"{folder}/access.log upstream" if access_log else "off"
    conf.write_text(NGINX_CONF.format(folder=folder, port=port, servers=servers, access_log=log))
    with (folder / "nginx.out").open("wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    balancer = Balancer(process, folder, port)
    try:
        deadline = time.monotonic() + 10
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                output = (folder / "nginx.out").read_text(errors="replace")
                raise RuntimeError(f"nginx did not start:\n{output}{balancer.error_log}")
            time.sleep(0.02)
        yield balancer
    finally:
        balancer.stop()


def _accepts(port: int) -> bool:
    """Whether something accepts connections on the loopback `port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True
