"""Serving ASGI apps from worker processes, never inside the runtime's process.

`WorkerPool.handle(app, scope, receive, send)` is a plain ASGI pass-through: the runtime
resolves `/<app>[@range]/...` to a `WorkerApp` and hands the request over, with `root_path`
and `path` as it wants the app to see them.

Design
    One worker process per app version (`worker_main.py`, run by the runtime's own Python)
    imports the app and serves it (HTTP on granian, WebSockets on Hypercorn) on unix
    sockets in a folder of its own under `runtime_dir`. The pool starts it on the first
    request, waits until the HTTP socket accepts, and reuses it (and its keep-alive
    connections) for the requests that follow. Requests and responses stream both ways
    over HTTP/1.1 (http1.py), WebSocket sessions are relayed with wsproto: no body sits
    whole in memory. The worker's environment is the app's own `env` plus a short
    allow-list, never the runtime's variables; it runs in a sandbox.

    This module schedules: which worker takes a request, when one starts, is recycled,
    evicted or stopped. The rest is beside it: process.py supervises one worker process
    (launch.py: its command line and environment; sockets.py: its socket folder and the
    connections to it), proxy.py relays one exchange (headers.py: what crosses; errors.py:
    what the pool answers in the app's place).

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

A crash of the runtime loses nothing here: the pool's state is the live workers, which
die with it (process.py), and the socket folders they leave are removed by the next pool
that uses the same `runtime_dir` (sockets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..asgi import Receive, Scope, Send
from ..settings import usable_cores
from .config import AppSettings, WorkerApp
from .errors import START_FAILED, Refusal, WorkerGone
from .launch import APP_DATA_ENV, ENV_ALLOW_LIST
from .process import Reachable, Supervisor, Worker
from .proxy import relay
from .sockets import Connection

log = logging.getLogger("courtyard.apps.workers")  # the logger of every part of the pool

_IDLE_CONNECTIONS = 32  # kept-alive connections per worker (each is a file descriptor)
BUSY = 4  # requests in flight on each of an app's workers before another one starts


def processes(settings: AppSettings) -> int:
    """How many workers of one app version may serve at once: its `processes`, or one per
    usable core when that is 0."""
    return settings.processes or usable_cores()


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
        runtime_dir = Path(runtime_dir)
        self.max_workers = max_workers
        self.queue_timeout = queue_timeout
        self.restart_backoff = restart_backoff
        self._supervisor = Supervisor(
            runtime_dir,
            Path(app_data_dir) if app_data_dir is not None else runtime_dir.parent / "app-data",
            start_timeout=start_timeout,
            grace=grace,
            allow_unsandboxed=allow_unsandboxed,
            sandbox_user=sandbox_user,
            bwrap=bwrap,
            changed=self._changed,
        )
        self._workers: dict[str, list[Worker]] = {}
        self._failures: dict[str, tuple[float, str]] = {}  # key -> (until, message)
        self._waiting: asyncio.Event | None = None
        self._wanting = 0  # requests waiting for a place to start a worker in
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # -- the ASGI pass-through ---------------------------------------------------------

    async def handle(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI `http` or `websocket` scope with `app`'s workers (`relay`)."""
        await relay(self, app, scope, receive, send)

    async def stop_app(self, key: str, drain_timeout: float | None = None) -> None:
        """Stop `key`'s workers once their in-flight requests finish.

        New requests for `key` after this call start a new worker.
        :param drain_timeout: how long to wait for in-flight requests (default: the app's
            `timeout`) before stopping the workers anyway.
        """
        workers = [w for w in self._workers.get(key, ()) if w.state != "dead"]
        for worker in workers:
            self.retire(worker)

        async def drain(worker: Worker) -> None:
            wait = worker.app.settings.timeout if drain_timeout is None else drain_timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), wait)
            await self._supervisor.stop(worker)

        await asyncio.gather(*(drain(w) for w in workers))

    async def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after `grace`) and wait for them."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        workers = [w for ws in self._workers.values() for w in ws]
        await asyncio.gather(*(self._supervisor.stop(w) for w in workers))
        await self._supervisor.close()

    async def workers(self) -> list[dict[str, Any]]:
        """`stats()`, as a pool shared with other processes answers it (shared_pool.py)."""
        return self.stats()

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

    # -- lending workers (to proxy.py's relays) and scheduling them --------------------

    async def checkout(self, app: WorkerApp, websocket: bool = False) -> tuple[Worker, Connection]:
        """A claimed worker and a connection to it (see `checkout`, the function)."""
        return await checkout(self, app, websocket)

    async def unreachable(self, worker: Worker) -> None:
        """`worker` (released) did not accept a connection: it died while idle, or is
        broken. Give its death a second to be noticed, then make sure of it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.exited.wait(), 1.0)
        self.kill(worker)

    async def lend(self, app: WorkerApp) -> Worker:
        """A ready worker for `app`, claimed for one request (release it with `release`)."""
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
                    self._wanting += 1  # meanwhile, no busy app takes a freed place
                    try:
                        await self._wait_for_change(remaining)
                    finally:
                        self._wanting -= 1
                    continue
                worker = self._spawn(app)
                self._claim(worker)  # for this request: ttl=0 workers are never shared
                claimed = True
            try:
                await asyncio.shield(worker.ready)
            except BaseException:
                if claimed:
                    self.release(worker, None, reusable=False)
                raise
            if worker.state not in ("ready", "retiring"):  # stopped meanwhile
                if claimed:
                    self.release(worker, None, reusable=False)
                retries += 1
                if retries > 3:
                    raise Refusal(502, "APP_CRASHED", "The app's workers keep exiting")
                continue
            if not claimed:
                self._claim(worker)
            return worker

    def _current(self, app: WorkerApp) -> Worker | None:
        """The worker to take `app`'s next request, or None: start one.

        The least busy of the version's ready workers takes it; when even that one has
        `BUSY` requests in flight, another worker starts beside them (up to the app's
        `processes`, while the pool has room that no other app waits for), for the
        requests after this one.

        Recycling overlaps: a worn-out worker (`max_requests`, `ttl`) starts its successor
        and serves on until a fresh worker is ready, then retires. Requests never wait for
        a recycle; a worker may serve a few requests past `max_requests` meanwhile.
        """
        if app.settings.ttl == 0:
            return None
        now = time.monotonic()
        live = [w for w in self._workers.get(app.key, ()) if w.state in ("starting", "ready")]
        ready = [w for w in live if w.state == "ready"]
        fresh = [w for w in ready if not w.worn_out(now)]
        starting = len(live) - len(ready)
        if fresh:
            for worn in ready:
                if worn not in fresh:
                    self.retire(worn)  # superseded by a fresh worker
            chosen = min(fresh, key=lambda w: w.active)
            if (
                chosen.active >= BUSY
                and len(fresh) + starting < processes(app.settings)
                and self._serving() < self.max_workers
                and not self._wanting
                and self._start_failure(app.key) is None
            ):
                self._spawn(app)  # busy: another worker, for the requests to come
            return chosen
        if ready:  # every ready worker is worn out
            chosen = min(ready, key=lambda w: w.active)
            if starting or self._start_failure(app.key) is not None:
                return chosen  # its successor is on its way, or cannot start: serve on
            if self._serving() < self.max_workers:
                self._spawn(app)  # the successor; this one serves meanwhile
                return chosen
            for worn in ready:
                self.retire(worn)
            return None
        return live[-1] if live else None  # starting: wait for it

    def _start_failure(self, key: str) -> str | None:
        """The message of `key`'s recent start failure, within `restart_backoff`."""
        failure = self._failures.get(key)
        if failure is None:
            return None
        if time.monotonic() < failure[0]:
            return failure[1]
        del self._failures[key]
        return None

    def _claim(self, worker: Worker) -> None:
        worker.active += 1
        worker.served += 1
        worker.last_used = time.monotonic()

    def release(self, worker: Worker, connection: Connection | None, reusable: bool) -> None:
        """Hand back a claimed worker; stop it if it is due."""
        worker.active -= 1
        worker.last_used = time.monotonic()
        if connection is not None:
            if (
                reusable
                and worker.state in ("ready", "retiring")
                and len(worker.connections) < _IDLE_CONNECTIONS
            ):
                worker.connections.append(connection)
            else:
                connection.close()
        if worker.state == "retiring" or (worker.app.settings.ttl == 0 and worker.ready.done()):
            self.retire(worker)  # (worn-out workers are recycled by _current and _sweep)
        self._notify()

    def retire(self, worker: Worker) -> None:
        """No new requests for `worker`; stop it once its in-flight ones are done."""
        if worker.state in ("starting", "ready"):
            worker.state = "retiring"
        if worker.state == "retiring" and worker.active == 0 and worker.ready.done():
            self._supervisor.stop_later(worker)

    def kill(self, worker: Worker) -> None:
        """Stop `worker` now (SIGKILL), its in-flight requests with it."""
        self._supervisor.stop_later(worker, kill=True)

    def _serving(self) -> int:
        """Workers counted against `max_workers` (stopping ones are on their way out)."""
        return sum(w.usable for ws in self._workers.values() for w in ws)

    def _evict_one(self) -> bool:
        """Stop the least recently used idle worker; False if every worker is busy.

        Then a busy app running several workers gives one back: the least busy retires,
        and its place is free once its requests are done (a worker started for a busy
        app's extra load must not keep another app from running at all).
        """
        workers = [w for ws in self._workers.values() for w in ws]
        if sum(w.state == "retiring" for w in workers) > self._wanting:
            return False  # places on their way: for those waiting already, and this one
        idle = [w for w in workers if w.state in ("ready", "retiring") and w.active == 0]
        if idle:
            victim = min(idle, key=lambda w: w.last_used)
            log.info("evicting idle worker %s (%s) to make room", victim.pid, victim.app.key)
            self._supervisor.stop_later(victim)
            return True
        if not any(w.state == "retiring" for w in workers):  # none on its way
            extra = [
                w
                for ws in self._workers.values()
                if sum(w.state == "ready" for w in ws) > 1
                for w in ws
                if w.state == "ready"
            ]
            if extra:
                victim = min(extra, key=lambda w: w.active)
                log.info("%s gives back worker %s to make room", victim.app.key, victim.pid)
                self.retire(victim)
        return False

    async def _wait_for_change(self, timeout: float) -> None:
        if self._waiting is None:
            self._waiting = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._waiting.wait(), timeout)

    def _notify(self) -> None:
        """Wake requests waiting for a slot."""
        if self._waiting is not None:
            self._waiting.set()
            self._waiting = None

    def _spawn(self, app: WorkerApp) -> Worker:
        worker = self._supervisor.new_worker(app)
        self._workers.setdefault(app.key, []).append(worker)
        self._supervisor.background(self._start(worker))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        return worker

    async def _start(self, worker: Worker) -> None:
        """Start the worker's process; settle `worker.ready` either way."""
        app = worker.app
        try:
            await self._supervisor.start(worker)
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

    def _changed(self, worker: Worker) -> None:
        """A worker stopped counting as live: forget it once dead, wake waiting requests."""
        if worker.state == "dead":
            workers = self._workers.get(worker.app.key, [])
            if worker in workers:
                workers.remove(worker)
            if not workers:
                self._workers.pop(worker.app.key, None)
        self._notify()

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
                    self._supervisor.stop_later(worker)
                elif worker.worn_out(now):
                    self._supervisor.stop_later(worker)


W = TypeVar("W", bound=Reachable)


class _Lending(Protocol[W]):
    """What `checkout` needs of a pool: this one, or a server process's share of the
    supervisor's (shared_pool.py)."""

    async def lend(self, app: WorkerApp) -> W: ...

    def release(self, worker: W, connection: Connection | None, reusable: bool) -> None: ...

    async def unreachable(self, worker: W) -> None: ...


async def checkout(pool: _Lending[W], app: WorkerApp, websocket: bool) -> tuple[W, Connection]:
    """A worker of `app` lent by `pool` and a connection to it (for a WebSocket, a new one).
    A worker found unreachable before anything was sent (it died while idle) is replaced
    once, transparently."""
    for attempt in range(2):
        worker = await pool.lend(app)
        try:
            return worker, await worker.connect(websocket=websocket)
        except WorkerGone as exc:
            pool.release(worker, None, reusable=False)
            if attempt:
                raise await worker.crashed(exc) from None
            await pool.unreachable(worker)
    raise AssertionError("unreachable")


def _since(started: float) -> float:
    return time.monotonic() - started


__all__ = [
    "APP_DATA_ENV",
    "ENV_ALLOW_LIST",
    "START_FAILED",
    "AppSettings",
    "WorkerApp",
    "WorkerPool",
]
