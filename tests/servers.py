"""Throwaway servers for tests, on loopback and free ports only: Redis and PostgreSQL
(courtyard.throwaway, shared with the benches; the session fixtures in conftest.py use
them), skipped with the Debian package's name where missing, and a stand-in HTTP service."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from courtyard import throwaway
from courtyard.throwaway import (
    REDIS_SERVER,
    PostgresServer,
    RedisServer,
    create_database,
    ping,
    postgres_bin,
)

__all__ = [
    "REDIS_SERVER",
    "PostgresServer",
    "RedisServer",
    "create_database",
    "http_server",
    "need_postgres",
    "need_redis",
    "ping",
    "postgres_bin",
    "postgres_server",
    "redis_server",
    "serve_on_taken_port",
]


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


def serve_on_taken_port(
    folder: Path, *options: str, reuse_port: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `courtyard serve <options>` on a port another socket listens on (with
    SO_REUSEPORT, as granian's do, when `reuse_port`), and return how it ended."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return subprocess.run(
            [
                *(sys.executable, "-m", "courtyard", "serve", *options),
                *("--port", str(port), "--data-dir", str(folder / "data")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "COURTYARD_ENTRY_POINTS": "0"},
            cwd=folder,
        )


@contextmanager
def redis_server(folder: Path, timeout: float = 5.0) -> Iterator[RedisServer]:
    """`courtyard.throwaway.redis_server`; the test is skipped without redis-server."""
    need_redis()
    with throwaway.redis_server(folder, timeout) as server:
        yield server


@contextmanager
def postgres_server(timeout: float = 30.0) -> Iterator[PostgresServer]:
    """`courtyard.throwaway.postgres_server`; the test is skipped without PostgreSQL."""
    need_postgres()
    with throwaway.postgres_server(timeout) as server:
        yield server


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
