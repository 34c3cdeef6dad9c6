"""Serving ASGI apps from worker processes, never inside the runtime's process.

`WorkerPool.handle(app, scope, receive, send)` is a plain ASGI pass-through: the runtime
resolves `/<app>[@range]/...` to a `WorkerApp` and hands the request over, with `root_path`
and `path` as it wants the app to see them.

Design
    One worker process per app version (`worker_main.py`, run by the runtime's own Python)
    imports the app and serves it with Hypercorn on a unix socket in a folder of its own
    under `runtime_dir`. The pool starts it on the first request, waits until the socket
    accepts, and reuses it (and its keep-alive connections) for the requests that follow.
    Requests and responses stream both ways with h11, WebSocket sessions are relayed with
    wsproto: no body sits whole in memory. The worker's environment is the app's own `env`
    plus a short allow-list, never the runtime's variables.

Sandbox (sandbox.py)
    Each worker runs under bubblewrap: it sees its version folder (read-only), its app's
    data folder under `app_data_dir` (read-write, kept across restarts), its socket folder,
    a private /tmp and the Python installation, and nothing else of the runtime; a runtime
    running as root drops it to `sandbox_user`. Without a working bwrap, workers are not
    started (502 APP_START_FAILED, and one error in the log) unless `allow_unsandboxed`.
    bwrap leads a session (process group) of its own, the sandboxed worker inside it:
    SIGTERM goes to the worker itself (it is PID 1 of its namespace, so bwrap would not pass
    it on), SIGKILL to the whole group; the worker's end takes the rest of the sandbox.

Failures (the body is always `{"error": {"code", "message"}}`)
    - worker crash, before or during a request: 502 APP_CRASHED if the response had not
      started (if it had, the connection is closed); the next request starts a new worker.
    - no response within `timeout`: 504 APP_TIMEOUT; the worker is killed at once (its
      other in-flight requests end as crashes) and replaced on the next request. A response
      that started but is unfinished at `timeout` is cut off, and the worker is recycled
      (stopped after its other requests) rather than killed: it may just have a slow client.
    - the worker cannot start (import error, bad entry, exits or hangs before listening,
      no sandbox): 502 APP_START_FAILED with a generic message; what the worker printed
      goes to the log only (it may hold secrets). Further requests get the same answer for
      `restart_backoff` seconds, so a broken app cannot fork-bomb the host.
    - a body above `max_body_size`: 413 PAYLOAD_TOO_LARGE, from Content-Length up front or
      by counting streamed bytes.
    - `max_workers` reached: the least recently used idle worker is stopped to make room.
      Busy workers are never evicted: the request waits up to `queue_timeout` seconds for
      one to become idle, then gets 503 APP_BUSY with `Retry-After`.
    - after `close()`: 503 NOT_READY.
    For a WebSocket the same refusals are sent as an HTTP denial response when the server
    supports the `websocket.http.response` extension (Hypercorn does), else as a close.

Limits
    `timeout` covers an HTTP request from the moment its worker is ready (starting a worker
    has its own `start_timeout`); for a WebSocket it covers the handshake only. A worker is
    recycled (stopped after its in-flight requests) once it has served `max_requests` or is
    older than `ttl`; `ttl=0` gives every request a fresh process. Idle workers stop after
    `idle_timeout`. `max_memory_mb` caps a worker's address space (RLIMIT_AS). Recycling
    overlaps: the successor starts while the old worker serves on, so no request waits
    for it (the old worker may serve a few requests past `max_requests` meanwhile).

Headers added to proxied requests: `X-Forwarded-For` (the caller's client appended),
`X-Forwarded-Proto`, `X-Forwarded-Host`, and two private ones the worker strips (its secret
and the root path). Hop-by-hop headers are not forwarded in either direction, and the
caller's credentials (`Authorization`, `Cookie`, `X-API-Key`, the internal headers) only to
an app whose `forward_credentials` is set.

A crash of the runtime loses nothing here: workers die with it (bwrap's parent-death
signal, and the worker's watch on its stdin), and the sockets they leave are removed by
the next pool that uses the same `runtime_dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import site
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import wsproto
import wsproto.events as ws_events
import wsproto.utilities

from ..asgi import Receive, Scope, Send
from .config import AppSettings
from .proxy import (
    CHUNK,
    WS_HANDSHAKE,
    ClientGone,
    Connection,
    HttpExchange,
    Refusal,
    TooLarge,
    WorkerGone,
    content_length,
    response_headers,
    send_error,
    too_large,
    ws_denial,
    ws_handshake,
    ws_relay,
)
from .sandbox import (
    DEBIAN_PACKAGE,
    LAUNCH_ENV,
    SOCKET_DIR_INSIDE,
    Sandbox,
    SandboxUnavailable,
)

log = logging.getLogger("courtyard.apps.workers")
State = Literal["starting", "ready", "retiring", "stopping", "dead"]


WORKER_MAIN = Path(__file__).with_name("worker_main.py")
WORKER_ENV = Path(__file__).with_name("worker_env.py")  # a sandboxed worker's first step

# Variables a worker inherits from the runtime: what Python and common libraries need to
# run, nothing that could hold a secret. Everything else comes from the app's own `env`.
ENV_ALLOW_LIST = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONHOME",
    "LD_LIBRARY_PATH",
    "SYSTEMROOT",
)
# What worker_main.py imports besides the standard library.
_WORKER_IMPORTS = ("hypercorn", "h11", "h2", "hpack", "hyperframe", "priority", "wsproto")

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux, 103 on macOS
_IDLE_CONNECTIONS = 32  # kept-alive connections per worker (each is a file descriptor)
_OUTPUT_HEAD_LINES = 20
_OUTPUT_HEAD_CHARS = 4000
# What a client learns of a start failure: never the worker's output (it may hold secrets).
START_FAILED = "The app could not start; the server's log says why"
SOCKET_NAME = "worker.sock"
APP_DATA_ENV = "COURTYARD_APP_DATA"


@dataclass(frozen=True)
class WorkerApp:
    """An app version to run in workers.

    :ivar key: unique id of the version, e.g. "@acme/shop@1.2.0"; workers are per key.
    :ivar root: the version folder: the worker's working directory, first on `sys.path`.
    :ivar entry: "module:attr" of the ASGI application (attr may be dotted).
    """

    key: str
    root: Path
    entry: str
    settings: AppSettings = field(default_factory=AppSettings)

    def __post_init__(self) -> None:
        module, _, attr = self.entry.partition(":")
        if not module or not attr:
            raise ValueError(f"entry {self.entry!r} is not of the form module:attr")

    @property
    def name(self) -> str:
        """The app's name: the key without its version ("@acme/shop")."""
        return self.key.rpartition("@")[0] or self.key


class _Worker:
    """One worker process and what the pool knows about it."""

    def __init__(self, app: WorkerApp, socket_dir: Path) -> None:
        self.app = app
        self.socket_dir = socket_dir  # the worker's own: the only one its sandbox sees
        self.socket_path = socket_dir / SOCKET_NAME
        self.token = secrets.token_hex(16).encode()
        self.process: asyncio.subprocess.Process | None = None  # bwrap, when sandboxed
        self.sandboxed = False
        self.app_pid: int | None = None  # the sandboxed worker's pid, as the host sees it
        self.foreign_socket = False  # its socket led to another process (logged once)
        self.state: State = "starting"
        self.started = time.monotonic()
        self.last_used = self.started
        self.active = 0
        self.served = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)
        self.exited = asyncio.Event()
        self.output_done = asyncio.Event()
        self.connections: list[Connection] = []
        self.head: list[str] = []  # the first lines it printed
        self.head_chars = 0

    @property
    def pid(self) -> int | None:
        """The worker's process id (as the runtime sees it), once started."""
        if self.app_pid is not None:
            return self.app_pid
        return None if self.process is None else self.process.pid

    @property
    def usable(self) -> bool:
        """May serve requests (or will, once started)."""
        return self.state in ("starting", "ready", "retiring")

    def worn_out(self, now: float) -> bool:
        """Served its `max_requests`, or older than its `ttl`."""
        settings = self.app.settings
        return self.served >= settings.max_requests or now - self.started >= settings.ttl

    def note_output(self, line: str) -> None:
        """Keep the first lines for a start-failure message."""
        if len(self.head) < _OUTPUT_HEAD_LINES and self.head_chars < _OUTPUT_HEAD_CHARS:
            self.head.append(line)
            self.head_chars += len(line) + 1

    def output_head(self, lines: int = _OUTPUT_HEAD_LINES) -> str:
        """The first lines it printed, trimmed."""
        return "\n".join(self.head[:lines]).strip()[:_OUTPUT_HEAD_CHARS]

    def close_connections(self) -> None:
        """Close its idle connections."""
        for connection in self.connections:
            connection.close()
        self.connections.clear()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen, whoever awaits it (maybe nobody)."""
    if not future.cancelled():
        future.exception()


class WorkerPool:
    """Starts, reuses, recycles and stops app workers; proxies requests to them.

    :param runtime_dir: where the workers' unix sockets go (created 0o700). If socket paths
        there would be too long for AF_UNIX, a short private folder under the system's
        temporary directory is used instead.
    :param max_workers: live workers across all apps; see the module docstring.
    :param queue_timeout: how long a request waits for a slot when every worker is busy.
    :param start_timeout: how long a worker may take to import its app and listen.
    :param grace: how long a stopping worker gets after SIGTERM before SIGKILL.
    :param restart_backoff: how long a start failure is answered from memory.
    :param app_data_dir: where each app's data folder goes (`<app_data_dir>/<name>/`);
        default: `app-data` beside `runtime_dir`.
    :param allow_unsandboxed: without a working sandbox, run workers unsandboxed (as the
        runtime's user, seeing what it sees) instead of refusing to start them.
    :param sandbox_user: the user sandboxed workers run as when the runtime is root.
    :param bwrap: the bubblewrap command (looked up on PATH) or its path.
    """

    def __init__(
        self,
        runtime_dir: Path,
        max_workers: int = 16,
        *,
        queue_timeout: float = 10.0,
        start_timeout: float = 30.0,
        grace: float = 5.0,
        restart_backoff: float = 1.0,
        app_data_dir: Path | None = None,
        allow_unsandboxed: bool = False,
        sandbox_user: str = "nobody",
        bwrap: str = "bwrap",
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.runtime_dir = Path(runtime_dir)
        self.max_workers = max_workers
        self.queue_timeout = queue_timeout
        self.start_timeout = start_timeout
        self.grace = grace
        self.restart_backoff = restart_backoff
        self.app_data_dir = (
            Path(app_data_dir) if app_data_dir is not None else self.runtime_dir.parent / "app-data"
        )
        self.allow_unsandboxed = allow_unsandboxed
        self.sandbox_user = sandbox_user
        self.bwrap = bwrap
        self._sandbox_checked: asyncio.Future[Sandbox | None] | None = None
        self._workers: dict[str, list[_Worker]] = {}
        self._failures: dict[str, tuple[float, str]] = {}  # key -> (until, message)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._numbers = itertools.count(1)
        self._closed = False
        self._python_path = _worker_python_path()

    # -- the ASGI pass-through ---------------------------------------------------------

    async def handle(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI `http` or `websocket` scope with `app`'s workers.

        If the worker fails after the response has started, this returns with the response
        unfinished: the server then closes the connection.
        """
        if scope["type"] == "http":
            await self._http(app, scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(app, scope, receive, send)
        else:
            raise ValueError(f"WorkerPool.handle: unsupported scope type {scope['type']!r}")

    async def stop_app(self, key: str, drain_timeout: float | None = None) -> None:
        """Stop `key`'s workers once their in-flight requests finish.

        New requests for `key` after this call start a new worker.
        :param drain_timeout: how long to wait for in-flight requests (default: the app's
            `timeout`) before stopping the workers anyway.
        """
        workers = [w for w in self._workers.get(key, ()) if w.state != "dead"]
        for worker in workers:
            self._retire(worker)

        async def drain(worker: _Worker) -> None:
            wait = worker.app.settings.timeout if drain_timeout is None else drain_timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), wait)
            await self._stop(worker)

        await asyncio.gather(*(drain(w) for w in workers))

    async def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after `grace`) and wait for them."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        workers = [w for ws in self._workers.values() for w in ws]
        await asyncio.gather(*(self._stop(w) for w in workers))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def stats(self) -> list[dict[str, Any]]:
        """The live workers: key, pid, state, requests served, in-flight, age, idle seconds."""
        now = time.monotonic()
        return [
            {
                "key": worker.app.key,
                "pid": worker.pid,
                "state": worker.state,
                "requests": worker.served,
                "active": worker.active,
                "age": round(now - worker.started, 3),
                "idle": 0.0 if worker.active else round(now - worker.last_used, 3),
            }
            for workers in self._workers.values()
            for worker in workers
            if worker.state != "dead"
        ]

    # -- HTTP --------------------------------------------------------------------------

    async def _http(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        settings = app.settings
        try:
            length = content_length(scope)
        except ValueError:
            await send_error(scope, send, Refusal(400, "BAD_REQUEST", "Bad Content-Length"))
            return
        if length is not None and length > settings.max_body_size:
            await send_error(scope, send, too_large(settings))
            return
        # Look at the first body message before taking a worker: a slow client holds none.
        first = await receive()
        while first["type"] == "http.request" and first.get("more_body") and not first.get("body"):
            first = await receive()  # skip empty chunks: a body-less request stays one
        if first["type"] == "http.disconnect":
            return
        body = first.get("body", b"")
        if len(body) > settings.max_body_size:
            await send_error(scope, send, too_large(settings))
            return
        try:
            worker, connection = await self._checkout(app)
        except Refusal as refusal:
            await send_error(scope, send, refusal)
            return
        exchange = HttpExchange(scope, receive, send, worker, first, length)
        exchange.connection = connection
        try:
            try:
                async with asyncio.timeout(settings.timeout):
                    await exchange.run()
            except TimeoutError:
                if exchange.started:
                    # The app answers, maybe only slowly, or to a slow client: drop this
                    # response and recycle the worker once its other requests are done.
                    log.warning(
                        "%s: response unfinished after %g s; dropped, worker %s retiring",
                        app.key,
                        settings.timeout,
                        worker.pid,
                    )
                    self._retire(worker)
                    return
                log.warning(
                    "%s: no response within %g s; killing worker %s",
                    app.key,
                    settings.timeout,
                    worker.pid,
                )
                self._stop_later(worker, kill=True)
                raise Refusal(
                    504, "APP_TIMEOUT", f"The app did not respond within {settings.timeout:g} s"
                ) from None
            except TooLarge:
                raise too_large(settings) from None
            except ClientGone:
                return
            except (WorkerGone, OSError, h11.RemoteProtocolError) as exc:
                raise await self._crash(worker, exc) from None
            except h11.LocalProtocolError as exc:
                raise Refusal(400, "BAD_REQUEST", f"Cannot forward the request: {exc}") from None
        except Refusal as refusal:
            if exchange.started:
                return  # too late for an error response: the server drops the connection
            await send_error(scope, send, refusal)
        finally:
            self._release(worker, exchange.connection, reusable=exchange.reusable())

    # -- WebSocket ---------------------------------------------------------------------

    async def _websocket(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            worker, connection = await self._checkout(app, reuse=False)
        except Refusal as refusal:
            await send_error(scope, send, refusal)
            return
        try:
            try:
                async with asyncio.timeout(app.settings.timeout):
                    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                    answer = await ws_handshake(ws, connection, scope, worker)
            except TimeoutError:
                self._stop_later(worker, kill=True)
                raise Refusal(
                    504, "APP_TIMEOUT", f"The app did not accept within {app.settings.timeout:g} s"
                ) from None
            except (WorkerGone, OSError, wsproto.utilities.RemoteProtocolError) as exc:
                raise await self._crash(worker, exc) from None
        except Refusal as refusal:
            await send_error(scope, send, refusal)
            self._release(worker, connection, reusable=False)
            return
        try:
            if isinstance(answer, ws_events.AcceptConnection):
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": answer.subprotocol,
                        "headers": response_headers(answer.extra_headers, WS_HANDSHAKE),
                    }
                )
                await ws_relay(ws, connection, receive, send)
            else:
                await ws_denial(ws, connection, answer, scope, send)
        finally:
            self._release(worker, connection, reusable=False)

    # -- workers -----------------------------------------------------------------------

    async def _checkout(self, app: WorkerApp, reuse: bool = True) -> tuple[_Worker, Connection]:
        """A claimed worker and a connection to it. A worker found unreachable before
        anything was sent (it died while idle) is replaced once, transparently."""
        for attempt in range(2):
            worker = await self._acquire(app)
            try:
                return worker, await self._connect(worker, reuse)
            except WorkerGone as exc:
                self._release(worker, None, reusable=False)
                if attempt:
                    raise await self._crash(worker, exc) from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.exited.wait(), 1.0)
                self._stop_later(worker, kill=True)  # alive but not accepting: broken
        raise AssertionError("unreachable")

    async def _acquire(self, app: WorkerApp) -> _Worker:
        """A ready worker for `app`, claimed for one request (release it with `_release`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        retries = 0
        while True:
            if self._closed:
                raise Refusal(503, "NOT_READY", "The app pool is shut down")
            worker = self._current(app)
            claimed = False
            if worker is None:
                failure = self._start_failure(app.key)
                if failure is not None:
                    raise Refusal(502, "APP_START_FAILED", failure)
                if self._serving() >= self.max_workers and not self._evict_one():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise Refusal(
                            503,
                            "APP_BUSY",
                            f"All {self.max_workers} app workers are busy; try again shortly",
                            [(b"retry-after", b"1")],
                        )
                    await self._wait_for_change(remaining)
                    continue
                worker = self._spawn(app)
                self._claim(worker)  # for this request: ttl=0 workers are never shared
                claimed = True
            try:
                await asyncio.shield(worker.ready)
            except BaseException:
                if claimed:
                    self._release(worker, None, reusable=False)
                raise
            if worker.state not in ("ready", "retiring"):  # stopped meanwhile
                if claimed:
                    self._release(worker, None, reusable=False)
                retries += 1
                if retries > 3:
                    raise Refusal(502, "APP_CRASHED", "The app's workers keep exiting")
                continue
            if not claimed:
                self._claim(worker)
            return worker

    def _current(self, app: WorkerApp) -> _Worker | None:
        """The worker to take `app`'s next request, or None: start one.

        Recycling overlaps: a worn-out worker (`max_requests`, `ttl`) starts its successor
        and serves on until the successor is ready, then retires. Requests never wait for
        a recycle; a worker may serve a few requests past `max_requests` meanwhile.
        """
        if app.settings.ttl == 0:
            return None
        live = [w for w in self._workers.get(app.key, ()) if w.state in ("starting", "ready")]
        if not live:
            return None
        newest = live[-1]
        if newest.state == "starting":
            # A successor is on its way; a predecessor still ready serves meanwhile.
            ready = [w for w in live[:-1] if w.state == "ready"]
            return ready[-1] if ready else newest
        for older in live[:-1]:
            self._retire(older)  # superseded by a ready successor
        if not newest.worn_out(time.monotonic()):
            return newest
        if self._start_failure(app.key) is not None:
            return newest  # its successor could not start: serve on, retry later
        if self._serving() < self.max_workers:
            self._spawn(app)  # the successor; this one serves meanwhile
            return newest
        self._retire(newest)
        return None

    def _start_failure(self, key: str) -> str | None:
        """The message of `key`'s recent start failure, within `restart_backoff`."""
        failure = self._failures.get(key)
        if failure is None:
            return None
        if time.monotonic() < failure[0]:
            return failure[1]
        del self._failures[key]
        return None

    def _claim(self, worker: _Worker) -> None:
        worker.active += 1
        worker.served += 1
        worker.last_used = time.monotonic()

    def _release(self, worker: _Worker, connection: Connection | None, reusable: bool) -> None:
        """Hand back a claimed worker; stop it if it is due."""
        worker.active -= 1
        worker.last_used = time.monotonic()
        if connection is not None:
            if (
                reusable
                and worker.state in ("ready", "retiring")
                and len(worker.connections) < _IDLE_CONNECTIONS
            ):
                connection.h11.start_next_cycle()
                worker.connections.append(connection)
            else:
                connection.close()
        if worker.state == "retiring" or (worker.app.settings.ttl == 0 and worker.ready.done()):
            self._retire(worker)  # (worn-out workers are recycled by _current and _sweep)
        self._notify()

    def _retire(self, worker: _Worker) -> None:
        """No new requests for `worker`; stop it once its in-flight ones are done."""
        if worker.state in ("starting", "ready"):
            worker.state = "retiring"
        if worker.state == "retiring" and worker.active == 0 and worker.ready.done():
            self._stop_later(worker)

    def _serving(self) -> int:
        """Workers counted against `max_workers` (stopping ones are on their way out)."""
        return sum(w.usable for ws in self._workers.values() for w in ws)

    def _evict_one(self) -> bool:
        """Stop the least recently used idle worker; False if every worker is busy."""
        idle = [
            w
            for ws in self._workers.values()
            for w in ws
            if w.state in ("ready", "retiring") and w.active == 0
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda w: w.last_used)
        log.info("evicting idle worker %s (%s) to make room", victim.pid, victim.app.key)
        self._stop_later(victim)
        return True

    async def _wait_for_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _notify(self) -> None:
        """Wake requests waiting for a slot."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _spawn(self, app: WorkerApp) -> _Worker:
        worker = _Worker(app, self._socket_folder())
        self._workers.setdefault(app.key, []).append(worker)
        self._background(self._start(worker))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        return worker

    async def _start(self, worker: _Worker) -> None:
        """Start the process, wait until it listens; settle `worker.ready` either way."""
        app = worker.app
        try:
            sandbox = await self._sandbox_for_workers()
            parts = app.name.split("/")
            if app.name.startswith("/") or {"", ".", ".."} & set(parts):
                raise OSError(f"{app.name!r} cannot name a data folder")
            data = self.app_data_dir.joinpath(*parts)
            if sandbox is not None:
                sandbox.prepare_folder(worker.socket_dir)
                sandbox.prepare_folder(data)
            else:
                worker.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                data.mkdir(mode=0o700, parents=True, exist_ok=True)
        except Refusal as refusal:
            self._start_failed(worker, refusal)
            return
        except OSError as exc:
            log.error("%s: cannot prepare the worker's folders: %s", app.key, exc)
            self._start_failed(worker, Refusal(502, "APP_START_FAILED", START_FAILED))
            return
        listen_at = SOCKET_DIR_INSIDE + "/" + SOCKET_NAME if sandbox else str(worker.socket_path)
        argv = [
            sys.executable,
            "-P",
            str(WORKER_MAIN),
            "--socket",
            listen_at,
            "--root",
            str(app.root),
            "--entry",
            app.entry,
            "--max-memory-mb",
            str(app.settings.max_memory_mb),
            "--graceful-timeout",
            str(self.grace),
        ]
        env = self._environment(app, data, sandboxed=sandbox is not None)
        stdin = worker.token + b"\n"  # the secret, never in argv or env
        info_read = info_write = -1
        if sandbox is None:
            command, launch_env, pass_fds = argv, env, ()
            if not app.settings.network:
                log.warning("%s: network = false is not enforced without the sandbox", app.key)
        else:
            # A first, isolated interpreter (-I -S: no environment, no site-packages) reads
            # the app's environment on stdin and starts the worker with it: bwrap and
            # setpriv never see a variable the app chose.
            argv[1:2] = ["-I", "-S", str(WORKER_ENV)]
            blob = json.dumps(env).encode()
            stdin = b"%d\n" % len(blob) + blob + stdin
            info_read, info_write = os.pipe()
            command = sandbox.command(
                argv,
                socket_dir=worker.socket_dir,
                root=app.root,
                data=data,
                network=app.settings.network,
                size_mb=app.settings.max_memory_mb,
                info_fd=info_write,
            )
            launch_env, pass_fds = LAUNCH_ENV, (info_write,)
            worker.sandboxed = True
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=app.root,
                env=launch_env,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except OSError as exc:
            log.error("%s: cannot start a worker: %s", app.key, exc)
            if info_read >= 0:
                os.close(info_read)
            self._start_failed(worker, Refusal(502, "APP_START_FAILED", START_FAILED))
            return
        finally:
            if info_write >= 0:
                os.close(info_write)
        worker.process = process
        assert process.stdin is not None
        process.stdin.write(stdin)
        self._background(self._read_output(worker))
        self._background(self._watch(worker))
        if info_read >= 0:
            worker.app_pid = await _child_pid(info_read)
        if worker.state == "stopping":  # close() or stop_app() came first
            _signal_group(process.pid, signal.SIGKILL)
        try:
            await self._wait_until_listening(worker)
        except Refusal as refusal:
            if refusal.code == "APP_START_FAILED":
                until = time.monotonic() + self.restart_backoff
                self._failures[app.key] = (until, refusal.message)
            worker.ready.set_exception(refusal)
            return
        if worker.state == "starting":
            worker.state = "ready"
        log.info("%s: worker %d ready in %.2f s", app.key, worker.pid, _since(worker.started))
        worker.ready.set_result(None)

    def _start_failed(self, worker: _Worker, refusal: Refusal) -> None:
        """Settle a worker that never got a process."""
        worker.state = "dead"
        self._forget(worker)
        with contextlib.suppress(OSError):
            shutil.rmtree(worker.socket_dir)
        worker.exited.set()
        if refusal.code == "APP_START_FAILED":
            until = time.monotonic() + self.restart_backoff
            self._failures[worker.app.key] = (until, refusal.message)
        worker.ready.set_exception(refusal)
        self._notify()

    async def _sandbox_for_workers(self) -> Sandbox | None:
        """The sandbox new workers run in; None to run them unsandboxed (allowed by the
        operator). Found and tested once, on the first start.

        :raises Refusal: 502 APP_START_FAILED when there is no sandbox and none may be
            skipped.
        """
        if self._sandbox_checked is None:
            self._sandbox_checked = task = asyncio.ensure_future(self._find_sandbox())
            self._tasks.add(task)  # close() waits for it
            task.add_done_callback(self._task_done)
        sandbox = await asyncio.shield(self._sandbox_checked)
        if sandbox is None and not self.allow_unsandboxed:
            raise Refusal(502, "APP_START_FAILED", START_FAILED)
        return sandbox

    async def _find_sandbox(self) -> Sandbox | None:
        try:
            extra = [str(WORKER_MAIN), str(WORKER_ENV)]
            extra += filter(None, self._python_path.split(os.pathsep))
            protect = [self.runtime_dir, self.app_data_dir]
            sandbox = Sandbox.locate(self.bwrap, self.sandbox_user, extra, protect)
            await sandbox.self_test()
        except (SandboxUnavailable, OSError) as exc:
            if self.allow_unsandboxed:
                log.warning(
                    "app workers run UNSANDBOXED (apps_allow_unsandboxed = true), as the "
                    "runtime's own user: every app can read and change what the runtime "
                    "can. No sandbox: %s",
                    exc,
                )
            else:
                log.error(
                    "app workers cannot start: no sandbox (%s). Install the Debian package "
                    "%s (apt-get install %s), or set apps_allow_unsandboxed = true to run "
                    "ASGI apps unsandboxed (then apps:install equals admin).",
                    exc,
                    DEBIAN_PACKAGE,
                    DEBIAN_PACKAGE,
                )
            return None
        log.info(
            "app workers are sandboxed with %s%s",
            sandbox.bwrap,
            f" as uid {sandbox.user[0]}" if sandbox.user else "",
        )
        return sandbox

    async def _wait_until_listening(self, worker: _Worker) -> None:
        deadline = worker.started + self.start_timeout
        delay = 0.005
        while not worker.exited.is_set() and worker.state != "stopping":
            try:
                connection = await self._open(worker)
            except OSError:  # not listening yet (or not its socket: see _open)
                pass
            else:
                worker.connections.append(connection)
                return
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), delay)
            delay = min(delay * 2, 0.02)
        if worker.state == "stopping":
            raise Refusal(503, "NOT_READY", "The app's worker was stopped while starting")
        if not worker.exited.is_set():
            self._stop_later(worker, kill=True)
            await worker.exited.wait()
            why = f"did not listen within {self.start_timeout:g} s"
        else:
            why = f"exited with code {worker.process.returncode if worker.process else '?'}"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.output_done.wait(), 1.0)
        log.error(
            "%s: worker %s %s before serving:\n%s",
            worker.app.key,
            worker.pid,
            why,
            worker.output_head() or "(it printed nothing)",
        )
        raise Refusal(502, "APP_START_FAILED", START_FAILED)

    async def _read_output(self, worker: _Worker) -> None:
        """Log what the worker prints, keeping the first lines; never let the pipe fill."""
        assert worker.process is not None and worker.process.stdout is not None
        stream = worker.process.stdout
        pending = b""
        try:
            while chunk := await stream.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > 8192:
                    lines.append(pending)
                    pending = b""
                for raw in lines:
                    self._output_line(worker, raw)
            if pending:
                self._output_line(worker, pending)
        finally:
            worker.output_done.set()

    def _output_line(self, worker: _Worker, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        worker.note_output(line)
        log.info("[%s pid %s] %s", worker.app.key, worker.pid, line)

    async def _watch(self, worker: _Worker) -> None:
        """Wait for the process to end, then clean up after it."""
        assert worker.process is not None
        code = await worker.process.wait()
        if worker.process.stdin is not None:
            worker.process.stdin.close()
        _signal_group(worker.process.pid, signal.SIGKILL)  # whatever the app left running
        if worker.state in ("ready", "retiring"):
            log.warning("%s: worker %d exited with code %s", worker.app.key, worker.pid, code)
        worker.state = "dead"
        worker.close_connections()
        with contextlib.suppress(OSError):
            shutil.rmtree(worker.socket_dir)
        self._forget(worker)
        worker.exited.set()
        self._notify()

    def _forget(self, worker: _Worker) -> None:
        workers = self._workers.get(worker.app.key, [])
        if worker in workers:
            workers.remove(worker)
        if not workers:
            self._workers.pop(worker.app.key, None)

    def _stop_later(self, worker: _Worker, kill: bool = False) -> None:
        """Stop a worker in the background; from now on it takes no request and no longer
        counts against `max_workers`."""
        if worker.state in ("stopping", "dead"):
            if kill and worker.process is not None and worker.state == "stopping":
                _signal_group(worker.process.pid, signal.SIGKILL)
            return
        worker.state = "stopping"
        worker.close_connections()
        self._notify()
        self._background(self._stop(worker, kill=kill))

    async def _stop(self, worker: _Worker, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the worker's process group; SIGKILL after `grace`."""
        if worker.state == "dead":
            return
        worker.state = "stopping"
        worker.close_connections()
        self._notify()
        if worker.process is None:  # still being spawned: _start kills it
            await worker.exited.wait()
            return
        if kill:
            _signal_group(worker.process.pid, signal.SIGKILL)
        else:
            _terminate(worker)
        try:
            await asyncio.wait_for(worker.exited.wait(), self.grace)
        except TimeoutError:
            log.warning("%s: worker %d ignored SIGTERM; killing it", worker.app.key, worker.pid)
            _signal_group(worker.process.pid, signal.SIGKILL)
            await worker.exited.wait()

    async def _sweep(self) -> None:
        """Stop idle workers past `idle_timeout` and idle ones past `ttl`."""
        while self._workers and not self._closed:
            workers = [w for ws in self._workers.values() for w in ws]
            shortest = min(min(w.app.settings.idle_timeout, w.app.settings.ttl) for w in workers)
            await asyncio.sleep(min(1.0, max(0.05, shortest / 4)))
            now = time.monotonic()
            for worker in [w for ws in self._workers.values() for w in ws]:
                if worker.state != "ready" or worker.active:
                    continue
                if now - worker.last_used >= worker.app.settings.idle_timeout:
                    log.info("%s: stopping idle worker %d", worker.app.key, worker.pid)
                    self._stop_later(worker)
                elif worker.worn_out(now):
                    self._stop_later(worker)

    async def _connect(self, worker: _Worker, reuse: bool = True) -> Connection:
        """A kept-alive connection to the worker, or a new one."""
        while reuse and worker.connections:
            connection = worker.connections.pop()
            if connection.usable():
                return connection
            connection.close()
        try:
            return await self._open(worker)
        except OSError as exc:
            raise WorkerGone(f"cannot connect: {exc}") from exc

    async def _open(self, worker: _Worker) -> Connection:
        """A new connection to the worker's socket, checked to be the worker's own.

        The socket's folder is writable by the app: it could put there a link to another
        program's socket (a database's, a container engine's) for the runtime to relay
        requests to. The peer's process id, from the kernel, must be the worker's.
        """
        reader, writer = await asyncio.open_unix_connection(worker.socket_path, limit=CHUNK)
        peer = _peer_pid(writer)
        if peer is not None and peer != worker.pid:
            writer.close()
            if not worker.foreign_socket:  # once: a start polls every few milliseconds
                worker.foreign_socket = True
                log.error(
                    "%s: the socket of worker %s leads to process %s: refused (the app may "
                    "have replaced it)",
                    worker.app.key,
                    worker.pid,
                    peer,
                )
            raise ConnectionRefusedError(f"the socket is not worker {worker.pid}'s")
        return Connection(reader, writer)

    async def _crash(self, worker: _Worker, exc: BaseException) -> Refusal:
        """The refusal for a broken exchange (sent only if the response has not started).

        Waits (up to a second) to see whether the worker died, so that the death is noticed
        before this request is answered: the next request then starts a fresh worker
        instead of meeting a half-dead one.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.exited.wait(), 1.0)
        if worker.exited.is_set() and worker.process is not None:
            code = worker.process.returncode
            why = f"The app's worker exited (code {code}) while handling the request"
        else:
            why = f"The app closed the connection unexpectedly ({exc or type(exc).__name__})"
        log.warning("%s: %s", worker.app.key, why)
        return Refusal(502, "APP_CRASHED", why)

    def _environment(self, app: WorkerApp, data: Path, sandboxed: bool) -> dict[str, str]:
        env = {name: os.environ[name] for name in ENV_ALLOW_LIST if name in os.environ}
        env.setdefault("PATH", os.defpath)
        env["PYTHONUNBUFFERED"] = "1"  # the app's prints reach the log as they happen
        env[APP_DATA_ENV] = env["HOME"] = str(data)  # the one place it may write to keep
        if sandboxed:
            env["TMPDIR"] = "/tmp"  # its private one
        env.update(app.settings.env)
        if self._python_path:
            own = app.settings.env.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (own, self._python_path) if p)
        return env

    def _socket_folder(self) -> Path:
        """A new worker's own socket folder (created when it starts)."""
        if self._socket_dir is None:
            folder = self.runtime_dir
            probe = folder / f"w{os.getpid()}-{10**6}" / SOCKET_NAME
            if len(os.fsencode(probe)) > _MAX_SOCKET_PATH:
                folder = Path(tempfile.mkdtemp(prefix="courtyard-"))
                self._own_socket_dir = True
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
            _remove_stale_sockets(folder)
            self._socket_dir = folder
        return self._socket_dir / f"w{os.getpid()}-{next(self._numbers)}"

    def _background(self, coroutine: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("worker pool task failed", exc_info=exc)


# -- processes ---------------------------------------------------------------------------


def _signal_group(pid: int, sig: int) -> None:
    """Signal a worker's process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(worker: _Worker) -> None:
    """Ask a worker to stop (SIGTERM): Hypercorn finishes its requests, then exits."""
    assert worker.process is not None
    if not worker.sandboxed:
        _signal_group(worker.process.pid, signal.SIGTERM)
    elif worker.app_pid is not None:
        # To the worker itself: bwrap passes no signal on, and would die of this one.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(worker.app_pid, signal.SIGTERM)
    else:  # its pid is not known yet: it has not started serving either
        _signal_group(worker.process.pid, signal.SIGKILL)


async def _child_pid(fd: int) -> int | None:
    """The host's pid of the sandboxed process, from bwrap's --info-fd (None if bwrap
    failed before starting it)."""

    def read() -> bytes:
        data = b""
        with os.fdopen(fd, "rb") as pipe:
            while len(data) < 65536 and (chunk := pipe.read1(4096)):
                data += chunk
        return data

    try:
        info = json.loads(await asyncio.to_thread(read) or b"{}")
        pid = info.get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    """The process id of a unix socket's listener, as the kernel reports it (Linux)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid) or None


def _remove_stale_sockets(folder: Path) -> None:
    """Delete socket folders (and sockets) left by runtimes that died without `close()`
    (named w<pid>-<n>)."""
    for path in folder.glob("w*-*"):
        pid = path.name[1:].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        except PermissionError:
            pass  # another user's live process


def _since(started: float) -> float:
    return time.monotonic() - started


def _worker_python_path() -> str:
    """PYTHONPATH for the workers: where what worker_main imports lives, unless the
    interpreter finds it anyway (the usual case: the same virtual environment)."""
    known = {os.path.realpath(p) for p in site.getsitepackages()}
    with contextlib.suppress(AttributeError):
        known.add(os.path.realpath(site.getusersitepackages()))
    folders: list[str] = []
    for name in _WORKER_IMPORTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        parent = os.path.dirname(next(iter(spec.submodule_search_locations)))
        if os.path.realpath(parent) not in known and parent not in folders:
            folders.append(parent)
    return os.pathsep.join(folders)


__all__ = [
    "APP_DATA_ENV",
    "ENV_ALLOW_LIST",
    "START_FAILED",
    "AppSettings",
    "WorkerApp",
    "WorkerPool",
]
