"""A throwaway `redis-server` for tests: loopback only, free port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from courtyard_sdk.testing import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    """Whether a redis-server binary is installed."""
    return Path(REDIS_SERVER).is_file()


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
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
    """Run redis-server in `folder` on a free loopback port until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder / "redis.log").open("wb")
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(
        args,
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(process, port, f"redis://127.0.0.1:{port}/0")
    try:
        deadline = time.monotonic() + timeout
        while not _ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}"
                )
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        log.close()
