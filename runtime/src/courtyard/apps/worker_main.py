"""One app worker process: imports an ASGI application and serves it: HTTP on granian's
embedded server, WebSockets on Hypercorn (granian drops `websocket.accept` headers).

Started by `courtyard.apps.pool.WorkerPool` (process.py), never by hand:

    python -P .../courtyard/apps/worker_main.py --socket PATH --ws-socket PATH \
        --root DIR --entry module:attr

It is run as a script, not with `-m`, so that it imports only the standard library and
its servers (granian, Hypercorn, uvloop if installed), never the runtime; `-P` keeps this
folder off `sys.path`, and the app's folder goes first instead. Its environment is the one
the pool built (the app's own variables and a short allow-list).

In a sandbox (sandbox.py) it is started by `worker_env.py`, which first reads the
environment from stdin: no variable the app chose is seen by bwrap or setpriv.

The pool talks to it over two unix sockets (HTTP/1.1 kept alive; WebSockets) and sends,
on every request, headers that only it can set (they are stripped before the app sees
them):

- `x-courtyard-token`: the secret the pool wrote on this process's stdin at start. A
  request without it is refused (403): another app's worker, running as the same user, may
  reach these sockets but does not know the secret.
- `x-courtyard-root-path`: the request's ASGI `root_path` (percent-encoded), applied to
  the scope. `X-Forwarded-Proto` and the last `X-Forwarded-For` address become the
  scope's `scheme` and `client`.

Lifetime: SIGTERM stops it gracefully (both servers stop accepting, requests and
WebSockets in flight finish within `--graceful-timeout`, then the app's lifespan ends;
before the servers run it ends the process at once, also as the PID 1 of a sandbox, which
gets only the signals it handles). It also exits as soon as its stdin reaches end of file: the
runtime has gone, however it died (on Linux the kernel's parent-death signal backs this
up). A `MemoryError` escaping the app ends the process: after one, its state is unknown.

It is a child subreaper: whatever the app starts, detached or double-forked, stays in its
process tree instead of being adopted by init, and however the worker ends (those ways, or
the app returning), it first kills every process left in that tree (tree.py). A worker
killed outright (SIGKILL) leaves that to the pool, which kills the tree first, and, in a
sandbox, to the kernel: the namespace ends with its PID 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib
import importlib.util
import logging
import os
import resource
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from urllib.parse import unquote

TOKEN_HEADER = b"x-courtyard-token"
ROOT_PATH_HEADER = b"x-courtyard-root-path"
EXIT_LOAD_FAILED = 3
EXIT_OUT_OF_MEMORY = 70

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line the pool passes."""
    parser = argparse.ArgumentParser(prog="courtyard-worker")
    parser.add_argument("--socket", required=True, help="unix socket for HTTP")
    parser.add_argument("--ws-socket", required=True, help="unix socket for WebSockets")
    parser.add_argument("--root", required=True, help="the app's version folder")
    parser.add_argument("--entry", required=True, help="module:attr of the ASGI app")
    parser.add_argument("--address-space-mb", type=int, default=0, help="RLIMIT_AS; 0: none")
    parser.add_argument("--graceful-timeout", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Read the secret, set the limits, import the app and serve it until told to stop."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_at_once)
    # No bytecode files: under the umask below they would be private to this user, and
    # written into the runtime's Python installation, whose other readers (sandboxed
    # workers run as another user) would then compile from source at every start.
    sys.dont_write_bytecode = True
    os.umask(0o077)  # the socket (and anything the app creates) is private to this user
    token = _read_token()
    _become_subreaper()
    _follow_parent()
    if args.address_space_mb > 0:
        _limit_memory(args.address_space_mb * 1024 * 1024)
    sys.path.insert(0, args.root)
    os.chdir(args.root)
    try:
        app = load_entry(args.entry)
    except BaseException as exc:
        # The first line is what the pool reports: make it say what went wrong.
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        print(f"cannot load {args.entry!r}: {summary}", file=sys.stderr, flush=True)
        traceback.print_exc()
        _exit(EXIT_LOAD_FAILED)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(_Forwarded(app, token), args))
    finally:
        _TREE.kill_descendants(os.getpid())


def load_entry(entry: str) -> ASGIApp:
    """Import `module:attr` (attr may be dotted) and check it is callable."""
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ValueError(f"entry {entry!r} is not of the form module:attr")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{entry} is a {type(target).__name__}, not an ASGI application")
    return cast(ASGIApp, target)  # the entry names an ASGI app: only "callable" is checkable


class _Forwarded:
    """Checks the pool's secret and applies what the pool forwards to the scope."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            token = b""
            root_path = ""
            headers = []
            for name, value in scope["headers"]:
                if name == TOKEN_HEADER:
                    token = value
                elif name == ROOT_PATH_HEADER:
                    root_path = unquote(value.decode("ascii", "replace"))
                else:
                    headers.append((name, value))
                    if name == b"x-forwarded-proto" and value in (b"http", b"https"):
                        secure = value == b"https"
                        if scope["type"] == "websocket":
                            scope["scheme"] = "wss" if secure else "ws"
                        else:
                            scope["scheme"] = "https" if secure else "http"
                    elif name == b"x-forwarded-for":
                        last = value.decode("latin-1").rsplit(",", 1)[-1].strip()
                        if last:
                            scope["client"] = (last, 0)
            if not (self.token and hmac.compare_digest(token, self.token)):
                await _forbidden(scope, receive, send)
                return
            scope["headers"] = headers
            scope["root_path"] = root_path
        try:
            await self.app(scope, receive, send)
        except MemoryError:
            os.write(2, b"courtyard worker: out of memory, exiting\n")
            _exit(EXIT_OUT_OF_MEMORY)


async def _forbidden(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b'{"error": {"code": "FORBIDDEN", "message": "not from the runtime"}}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve(app: _Forwarded, args: argparse.Namespace) -> None:
    """Serve `app` until SIGTERM (or SIGINT): HTTP on granian's embedded server at
    `--socket`, WebSockets on Hypercorn at `--ws-socket` (granian drops the headers of a
    `websocket.accept`). Then stop accepting, let what is in flight finish (up to
    `--graceful-timeout`), and run the lifespan shutdown."""
    # Granian is imported here, after the memory limit, so the limit covers it too.
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server.embed import Server

    inflight = _INFLIGHT.InFlight(app)
    lifespan = _Lifespan(app)
    await lifespan.startup()
    stop = asyncio.Event()
    # The WebSocket socket listens before the HTTP one (the pool waits for the latter).
    sockets = _WebSockets(app, args, stop)
    # Granian listens on a staging path first: its socket accepts before its server
    # serves, and the pool takes a socket that accepts for a worker that is ready.
    staging = Path(args.socket).with_name("starting.sock")
    server = Server(
        inflight,
        uds=staging,
        interface=Interfaces.ASGINL,  # the lifespan is run here (_Lifespan)
        http=HTTPModes.http1,
        websockets=False,
        backpressure=_MAX_CONNECTIONS,
        # The pool keeps connections open between requests and decides itself when to
        # recycle: an idle connection is never closed by the worker.
        http1_settings=HTTP1Settings(header_read_timeout=_KEEP_ALIVE_MS),
        log_dictconfig=_GRANIAN_LOGGING,
        log_level=LogLevels.warning,
        log_access=False,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    http = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    serving = asyncio.create_task(_until_serving(staging))
    await asyncio.wait({http, stopping, serving}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done() and not stop.is_set() and not http.done():
        os.rename(staging, args.socket)  # ready: now the pool sees it
        await asyncio.wait({http, stopping}, return_when=asyncio.FIRST_COMPLETED)
    serving.cancel()
    stop.set()
    if not http.done():
        server.stop()  # type: ignore[no-untyped-call]  # stop accepting
    # Granian misses a stop that comes while it is still starting (it would wait for
    # ever): wait for it only so long, then go on.
    await asyncio.wait({http}, timeout=args.graceful_timeout)
    # Granian lets its connections finish but does not say when: wait for the requests
    # in flight ourselves, then end the lifespan (granian would end it at once).
    await inflight.drained(args.graceful_timeout)
    await sockets.stopped()
    await lifespan.shutdown()
    if http.done() and not http.cancelled() and http.exception() is not None:
        raise http.exception()  # type: ignore[misc]  # could not serve: to the log


async def _until_serving(path: Path) -> None:
    """Return once the server at `path` answers a request (a 403: it has no secret)."""
    while True:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(b"GET / HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n")
                if (await reader.read(9)).startswith(b"HTTP/1."):
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.005)


class _WebSockets:
    """Hypercorn on the WebSocket socket, started at its first connection: a worker
    whose app takes no WebSocket never imports it (a worker's start costs less)."""

    def __init__(self, app: ASGIApp, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.app = app
        self.args = args
        self.stop = stop
        self.task: asyncio.Task[None] | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.ws_socket)
        self.listener.bind(args.ws_socket)
        self.listener.listen(128)
        asyncio.get_running_loop().add_reader(self.listener.fileno(), self._start)

    def _start(self) -> None:
        """A first connection waits: serve it, and every later one, with Hypercorn."""
        asyncio.get_running_loop().remove_reader(self.listener.fileno())
        if not self.stop.is_set():
            self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{self.listener.fileno()}"]
        config.accesslog = None
        config.errorlog = "-"
        config.loglevel = "WARNING"
        config.graceful_timeout = self.args.graceful_timeout
        config.include_server_header = False
        config.include_date_header = False
        # An ASGI 3 app: its loose scope mappings take Hypercorn's typed scopes.
        await serve(cast(Any, _no_lifespan(self.app)), config, shutdown_trigger=self.stop.wait)

    async def stopped(self) -> None:
        """Wait for Hypercorn's graceful stop (the stop event is set), if it ran."""
        if self.task is None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self.listener.close()
            return
        with contextlib.suppress(Exception):
            await self.task


def _no_lifespan(app: ASGIApp) -> ASGIApp:
    """`app` for Hypercorn, whose lifespan is a no-op: the app's own runs once (_serve)."""

    async def sockets_only(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return sockets_only


class _EmbedNotice(logging.Filter):
    """Drops the warning granian's embedded server logs at every start (the worker runs it
    by choice: docs/performance.md, app throughput)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Embedded server is experimental!"


# Granian's records go to stderr (the pool logs what a worker prints), that notice aside.
_GRANIAN_LOGGING: dict[str, Any] = {
    "filters": {"embed_notice": {"()": _EmbedNotice}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        "_granian": {"handlers": ["stderr"], "filters": ["embed_notice"], "propagate": False},
        "granian.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}
_KEEP_ALIVE_MS = 24 * 3600 * 1000
_MAX_CONNECTIONS = 10_000


class _Lifespan:
    """The app's lifespan, run here rather than by granian (which would run the shutdown
    as soon as it stops accepting, with requests still in flight). As with Hypercorn, an
    app that does not support the lifespan (it raises on the scope) is served without it;
    one that answers `lifespan.startup.failed` does not start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer is None:
            self._task = None  # no lifespan support: serve without
        elif answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan start-up failed: {answer.get('message', '')}")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._answer()
        with contextlib.suppress(Exception):
            await self._task

    async def _answer(self) -> MutableMapping[str, Any] | None:
        """The app's next message, or None if its lifespan ended without one."""
        assert self._task is not None
        reply: asyncio.Future[MutableMapping[str, Any]] = asyncio.ensure_future(self._outbox.get())
        waiting: set[asyncio.Future[Any]] = {reply, self._task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        return None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (as for the runtime's own server), else
    asyncio's: granian hands every request to the loop, which uvloop does for less."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _read_token() -> bytes:
    """The first line on stdin, read unbuffered: the rest of stdin is the parent watch's."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return line.strip()


def _exit_at_once(signum: int, frame: object) -> None:
    """SIGTERM before the servers serve (`_serve` then handles SIGTERM itself)."""
    _exit(128 + signum)


def _exit(code: int) -> None:
    """End now, with every process the app started."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        _TREE.kill_descendants(os.getpid())
    finally:
        os._exit(code)


def _load(name: str, path: Path) -> ModuleType:
    """A module of the runtime, loaded by its path: this script imports nothing of the
    runtime, and the app's folder, first on sys.path, must not be able to stand in for it.
    The sandbox binds these files (launch.py, WORKER_FILES)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TREE = _load("_courtyard_worker_tree", Path(__file__).with_name("tree.py"))
_INFLIGHT = _load(
    "_courtyard_worker_inflight", Path(__file__).parents[1] / "servers" / "inflight.py"
)


def _become_subreaper() -> None:
    """Keep what the app starts in this process's tree (PR_SET_CHILD_SUBREAPER)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(36, 1)


def _limit_memory(limit: int) -> None:
    """Cap the address space (RLIMIT_AS): a runaway allocation fails instead of growing."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _follow_parent() -> None:
    """End this process group when the runtime goes away, even if it was SIGKILLed."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            # PR_SET_PDEATHSIG with SIGTERM, not SIGKILL: this process gets to end the
            # processes its app started (`_exit_at_once`, or the servers' shutdown).
            libc.prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        # os.read, not sys.stdin: a thread blocked in a buffered read would stop the
        # interpreter from shutting down.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        _kill_group()

    threading.Thread(target=watch, name="courtyard-parent-watch", daemon=True).start()


def _kill_group() -> None:
    try:
        _TREE.kill_descendants(os.getpid())
        if os.getpgrp() == os.getpid():  # our own session (the pool starts us in one)
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


if __name__ == "__main__":
    main()
