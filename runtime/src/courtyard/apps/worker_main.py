"""One app worker process: imports an ASGI application and serves it with Hypercorn.

Started by `courtyard.apps.pool.WorkerPool` (process.py), never by hand:

    python -P .../courtyard/apps/worker_main.py --socket PATH --root DIR --entry module:attr

It is run as a script, not with `-m`, so that it imports only the standard library and
Hypercorn, never the runtime; `-P` keeps this folder off `sys.path`, and the app's folder
goes first instead. Its environment is the one the pool built (the app's own variables and
a short allow-list).

In a sandbox (sandbox.py) it is started by `worker_env.py`, which first reads the
environment from stdin: no variable the app chose is seen by bwrap or setpriv.

The pool talks to it over a unix socket (HTTP/1.1 and WebSocket) and sends, on every
request, headers that only it can set (they are stripped before the app sees them):

- `x-courtyard-token`: the secret the pool wrote on this process's stdin at start. A
  request without it is refused (403): another app's worker, running as the same user, may
  reach this socket but does not know the secret.
- `x-courtyard-root-path`: the request's ASGI `root_path` (percent-encoded), applied to
  the scope. `X-Forwarded-Proto` and the last `X-Forwarded-For` address become the
  scope's `scheme` and `client`.

Lifetime: SIGTERM stops it gracefully (Hypercorn finishes in-flight requests; before
Hypercorn runs it ends the process at once, also as the PID 1 of a sandbox, which gets
only the signals it handles). It also exits as soon as its stdin reaches end of file: the
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
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

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
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
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
        asyncio.run(_serve(_Forwarded(app, token), args))
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
    # Hypercorn is imported here, after the memory limit, so the limit covers it too.
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"unix:{args.socket}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.graceful_timeout = args.graceful_timeout
    # The pool keeps connections open between requests and decides itself when to recycle.
    config.keep_alive_timeout = 24 * 3600
    config.keep_alive_max_requests = 2**62
    # The runtime's own server adds these to the response it sends on.
    config.include_server_header = False
    config.include_date_header = False
    # An ASGI 3 app: its loose scope mappings take Hypercorn's typed scopes.
    await serve(cast("ASGIFramework", app), config)  # handles SIGTERM and SIGINT: graceful shutdown


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
    """SIGTERM before Hypercorn serves (it then handles SIGTERM itself)."""
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


def _load_tree() -> ModuleType:
    """tree.py, loaded by path: this script imports nothing of the runtime, and the app's
    folder, first on sys.path, must not be able to stand in for it."""
    spec = importlib.util.spec_from_file_location(
        "_courtyard_worker_tree", Path(__file__).with_name("tree.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TREE = _load_tree()


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
            # processes its app started (`_exit_at_once`, or Hypercorn's shutdown).
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
