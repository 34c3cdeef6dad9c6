"""Throwaway servers for tests, on loopback and free ports only: `redis_server` and
`postgres_server` (context managers; the session fixtures in conftest.py use them)."""

from __future__ import annotations

import glob
import http.server
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from courtyard.testing import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    """Whether a redis-server binary is installed."""
    return Path(REDIS_SERVER).is_file()


def need_redis() -> None:
    """Skip the calling test, naming the Debian package, when redis-server is missing."""
    if not available():
        pytest.skip("redis-server is not installed (Debian package redis-server)")


def need_postgres() -> None:
    """Skip the calling test, naming the Debian package, when PostgreSQL is missing."""
    if postgres_bin("initdb") is None or postgres_bin("postgres") is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")


@dataclass
class RedisServer:
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
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.folder / "redis.log").read_text()[-2000:]
                raise RuntimeError(f"redis-server did not start: {log_text}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(folder: Path, timeout: float = 5.0) -> Iterator[RedisServer]:
    """Run redis-server in `folder` on a free loopback port until the block ends (the
    test is skipped without redis-server)."""
    need_redis()
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
    `postgres` user cannot enter pytest's, which is private to root) and is removed after.
    The test is skipped without PostgreSQL.
    """
    need_postgres()
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


# A stand-in HTTP service ---------------------------------------------------------------


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """A request handler for `http_server`: `answer(status, body)` sends JSON; quiet."""

    def answer(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (a free port), in a thread, until the block ends;
    yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
