"""Serving ASGI apps from worker processes, never inside the runtime's process.

`WorkerPool.handle(app, scope, receive, send)` is a plain ASGI pass-through: the runtime
resolves `/<app>[@range]/...` to a `WorkerApp` and hands the request over, with `root_path`
and `path` as it wants the app to see them.

Design
    One worker process per app version (`worker_main.py`, run by the runtime's own Python)
    imports the app and serves it with Hypercorn on a unix socket in `runtime_dir`. The pool
    starts it on the first request, waits until the socket accepts, and reuses it (and its
    keep-alive connections) for the requests that follow. Requests and responses stream both
    ways with h11, WebSocket sessions are relayed with wsproto: no body sits whole in memory.
    The worker's environment is the app's own `env` plus a short allow-list, never the
    runtime's variables. Each worker runs in its own session (process group): stopping it
    stops whatever it started.

Failures (the body is always `{"error": {"code", "message"}}`)
    - worker crash, before or during a request: 502 APP_CRASHED if the response had not
      started (if it had, the connection is closed); the next request starts a new worker.
    - no response within `timeout`: 504 APP_TIMEOUT; the worker is killed at once (its
      other in-flight requests end as crashes) and replaced on the next request. A response
      that started but is unfinished at `timeout` is cut off, and the worker is recycled
      (stopped after its other requests) rather than killed: it may just have a slow client.
    - the worker cannot start (import error, bad entry, exits or hangs before listening):
      502 APP_START_FAILED with the first lines it printed. Further requests get the same
      answer for `restart_backoff` seconds, so a broken app cannot fork-bomb the host.
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
and the root path). Hop-by-hop headers are not forwarded in either direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import logging
import os
import secrets
import shutil
import signal
import site
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import wsproto
import wsproto.events as ws_events
import wsproto.utilities

from ..asgi import Receive, Scope, Send
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

log = logging.getLogger("courtyard.apps.workers")
State = Literal["starting", "ready", "retiring", "stopping", "dead"]


WORKER_MAIN = Path(__file__).with_name("worker_main.py")

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
_FAILURE_LINES = 1  # of that, what an APP_START_FAILED message shows (the rest is logged)
_FAILURE_CHARS = 1000


@dataclass(frozen=True)
class AppSettings:
    """How one app's workers run. Durations are in seconds.

    :ivar timeout: for one request, until its response is complete; past it 504 APP_TIMEOUT
        and the worker is killed. For a WebSocket, the handshake only.
    :ivar idle_timeout: a worker idle this long is stopped.
    :ivar ttl: a worker older than this is recycled (a successor starts; it retires once
        that one is ready and its own requests are done); 0 starts a fresh process for
        every request and stops it after.
    :ivar max_requests: a worker is recycled, as for `ttl`, after serving this many.
    :ivar max_body_size: a request body above it (bytes) is refused with 413.
    :ivar max_memory_mb: the worker's address-space limit (RLIMIT_AS); 0 for none.
    :ivar env: the app's own environment variables, the only ones it gets besides
        `ENV_ALLOW_LIST`.
    :ivar public_routes: stored for the auth layer; no effect here.
    """

    timeout: float = 30.0
    idle_timeout: float = 300.0
    ttl: float = 3600.0
    max_requests: int = 1000
    max_body_size: int = 10 * 1024**2
    max_memory_mb: int = 1024
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    public_routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not self.timeout > 0:
            problems.append("timeout must be > 0")
        if not self.idle_timeout > 0:
            problems.append("idle_timeout must be > 0")
        if not self.ttl >= 0:
            problems.append("ttl must be >= 0")
        if self.max_requests < 1:
            problems.append("max_requests must be >= 1")
        if self.max_body_size < 0:
            problems.append("max_body_size must be >= 0")
        if self.max_memory_mb < 0:
            problems.append("max_memory_mb must be >= 0")
        for name, value in self.env.items():
            if not (isinstance(name, str) and isinstance(value, str)):
                problems.append(f"env {name!r}: names and values must be strings")
            elif not name or "=" in name or "\0" in name or "\0" in value:
                problems.append(f"env {name!r}: not a valid variable")
        if problems:
            raise ValueError("; ".join(problems))


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


class _Worker:
    """One worker process and what the pool knows about it."""

    def __init__(self, app: WorkerApp, socket_path: Path) -> None:
        self.app = app
        self.socket_path = socket_path
        self.token = secrets.token_hex(16).encode()
        self.process: asyncio.subprocess.Process | None = None
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
        """The process id, once started."""
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
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.runtime_dir = Path(runtime_dir)
        self.max_workers = max_workers
        self.queue_timeout = queue_timeout
        self.start_timeout = start_timeout
        self.grace = grace
        self.restart_backoff = restart_backoff
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
        worker = _Worker(app, self._socket_path())
        self._workers.setdefault(app.key, []).append(worker)
        self._background(self._start(worker))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        return worker

    async def _start(self, worker: _Worker) -> None:
        """Start the process, wait until it listens; settle `worker.ready` either way."""
        app = worker.app
        command = [
            sys.executable,
            "-P",
            str(WORKER_MAIN),
            "--socket",
            str(worker.socket_path),
            "--root",
            str(app.root),
            "--entry",
            app.entry,
            "--max-memory-mb",
            str(app.settings.max_memory_mb),
            "--graceful-timeout",
            str(self.grace),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=app.root,
                env=self._environment(app),
                start_new_session=True,
            )
        except OSError as exc:
            worker.state = "dead"
            self._forget(worker)
            worker.exited.set()
            worker.ready.set_exception(
                Refusal(502, "APP_START_FAILED", f"Cannot start a worker: {exc}")
            )
            return
        worker.process = process
        assert process.stdin is not None
        process.stdin.write(worker.token + b"\n")  # the secret, never in argv or env
        self._background(self._read_output(worker))
        self._background(self._watch(worker))
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
        log.info("%s: worker %d ready in %.2f s", app.key, process.pid, _since(worker.started))
        worker.ready.set_result(None)

    async def _wait_until_listening(self, worker: _Worker) -> None:
        deadline = worker.started + self.start_timeout
        delay = 0.005
        while not worker.exited.is_set() and worker.state != "stopping":
            try:
                reader, writer = await asyncio.open_unix_connection(worker.socket_path, limit=CHUNK)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                worker.connections.append(Connection(reader, writer))
                return
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), delay)
            delay = min(delay * 2, 0.05)
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
            worker.output_head(),
        )
        head = worker.output_head(_FAILURE_LINES)[:_FAILURE_CHARS]
        raise Refusal(502, "APP_START_FAILED", head or f"The app's worker {why}")

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
            worker.socket_path.unlink()
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
        _signal_group(worker.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
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
            reader, writer = await asyncio.open_unix_connection(worker.socket_path, limit=CHUNK)
        except OSError as exc:
            raise WorkerGone(f"cannot connect: {exc}") from exc
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

    def _environment(self, app: WorkerApp) -> dict[str, str]:
        env = {name: os.environ[name] for name in ENV_ALLOW_LIST if name in os.environ}
        env.setdefault("PATH", os.defpath)
        env["PYTHONUNBUFFERED"] = "1"  # the app's prints reach the log as they happen
        env.update(app.settings.env)
        if self._python_path:
            own = app.settings.env.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (own, self._python_path) if p)
        return env

    def _socket_path(self) -> Path:
        if self._socket_dir is None:
            folder = self.runtime_dir
            probe = folder / f"w{os.getpid()}-{10**6}.sock"
            if len(os.fsencode(probe)) > _MAX_SOCKET_PATH:
                folder = Path(tempfile.mkdtemp(prefix="courtyard-"))
                self._own_socket_dir = True
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
            _remove_stale_sockets(folder)
            self._socket_dir = folder
        return self._socket_dir / f"w{os.getpid()}-{next(self._numbers)}.sock"

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


def _remove_stale_sockets(folder: Path) -> None:
    """Delete sockets left by runtimes that died without `close()` (named w<pid>-<n>)."""
    for path in folder.glob("w*-*.sock"):
        pid = path.name[1:].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
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


__all__ = ["ENV_ALLOW_LIST", "AppSettings", "WorkerApp", "WorkerPool"]
