"""The app workers of `courtyard serve --workers N`: one pool for the N server processes.

The supervisor (servers/supervisor.py) holds the one `WorkerPool`, behind a `PoolHost`:
the workers are its children, so each app version runs once however many processes
serve it, and a worker outlives the server process that first asked for it. Each server
process borrows workers through a `SharedPool`, which proxy.py relays through as through
a pool of the process's own: the host decides which worker serves a request (starting,
recycling, evicting and stopping workers exactly as a pool in one process does), and the
process sends the request over its own kept-alive connections to the worker's socket.
The bytes of requests and answers never pass through the supervisor.

The wire: a socketpair per server process, one JSON object a line. A message that wants
an answer carries an `id`, which the answer repeats; the others get none.

    {"op": "lend", "app": "<JSON text>"}         -> {"worker": {"id", "pid", "token", "http", "ws"}}
    {"op": "release", "worker": 3, "reusable": true, "count": 1, "served": 0}
    {"op": "retire" | "kill", "worker": 3}
    {"op": "unreachable", "worker": 3}           -> {}
    {"op": "crashed", "worker": 3, "why": "..."} -> {"refusal": {...}}
    {"op": "stop", "key": "shop@1.0.0"}          -> {} once its workers are stopped
    {"op": "workers"}                            -> {"workers": [...]} (`WorkerPool.stats`)

A server process keeps the workers it is lent for a moment after their request
(`PARK_SECONDS`): a request that comes meanwhile takes one without asking the supervisor,
and the claims go back together, with the number of requests they served (`served`), so
that under load a message to the supervisor serves many requests and the supervisor
still counts each (`max_requests`). A kept claim serves only within `REUSE_SECONDS` of
the supervisor's choice of its worker, so that the supervisor still chooses, recycles
and stops workers under any load. Not so for `ttl = 0` (a process per request).

Any answer may instead be `{"refusal": {"status", "code", "message", "headers"}}`, which
the server process answers in the app's place, or `{"error": "..."}` for a fault of the
supervisor's. What a server process borrowed is given back, not to be reused, when its
end of the socketpair closes (it died).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ..asgi import Receive, Scope, Send
from .config import AppSettings, WorkerApp
from .errors import Refusal, WorkerGone
from .pool import WorkerPool, checkout
from .process import Reachable, Worker
from .proxy import relay
from .sockets import Connection

log = logging.getLogger("courtyard.apps.workers")

LINE_LIMIT = 1024 * 1024  # the longest message (an app's settings, with its `env`)
_IDLE_CONNECTIONS = 32  # kept-alive connections per worker, per server process
PARK_SECONDS = 0.02  # how long a server process keeps a worker it was lent, for reuse
REUSE_SECONDS = 0.1  # how long after the supervisor chose a worker kept claims serve

# -- the wire ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _app_to_wire(app: WorkerApp) -> str:
    """The app as the host takes it: JSON text, which the host parses and checks once
    and from then on knows by the text itself (a lend sends it each time)."""
    # Only the worker settings: the manifest's own fields (entry, index, spa) stay here.
    settings = {name: getattr(app.settings, name) for name in AppSettings.model_fields}
    wire = {"key": app.key, "root": str(app.root), "entry": app.entry, "settings": settings}
    return orjson.dumps(wire).decode()


def _app_from_wire(text: str) -> WorkerApp:
    wire = orjson.loads(text)
    settings = AppSettings.model_validate(wire["settings"])
    return WorkerApp(wire["key"], Path(wire["root"]), wire["entry"], settings)


def _refusal_to_wire(refusal: Refusal) -> dict[str, Any]:
    headers = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in refusal.headers]
    return {
        "status": refusal.status,
        "code": refusal.code,
        "message": refusal.message,
        "headers": headers,
    }


def _refusal_from_wire(wire: dict[str, Any]) -> Refusal:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in wire["headers"]]
    return Refusal(wire["status"], wire["code"], wire["message"], headers)


def _line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


class _Outbox:
    """The lines one end sends, written together once per turn of the event loop: under
    load, one system call carries the messages of many requests."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._lines: list[bytes] = []

    def put(self, message: dict[str, Any]) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_soon(self._flush)
        self._lines.append(_line(message))

    def _flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(self._lines))
        self._lines.clear()


def _gone() -> Refusal:
    return Refusal(503, "NOT_READY", "The app workers are shut down")


# -- the supervisor's side ---------------------------------------------------------------


class PoolHost:
    """The supervisor's pool, lending its workers to the server processes."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._ids = itertools.count(1)
        self._workers: dict[int, Worker] = {}
        self._id_of: dict[Worker, int] = {}
        self._apps: dict[str, WorkerApp] = {}  # by their wire form: parsed and checked once
        self._channels: set[asyncio.Task[None]] = set()

    async def attach(self, sock: socket.socket) -> None:
        """Serve a server process on its end of a socketpair."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        task = asyncio.create_task(self._serve(reader, writer))
        self._channels.add(task)
        task.add_done_callback(self._channels.discard)

    async def close(self) -> None:
        """Stop serving the processes, and stop every worker."""
        for task in list(self._channels):
            task.cancel()
        await asyncio.gather(*self._channels, return_exceptions=True)
        await self.pool.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        borrowed: Counter[int] = Counter()  # worker id -> requests the process holds
        answering: set[asyncio.Task[None]] = set()
        outbox = _Outbox(writer)
        try:
            while line := await reader.readline():
                message = orjson.loads(line)
                if "id" in message:
                    task = asyncio.create_task(self._answer(message, borrowed, outbox))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
                else:
                    self._apply(message, borrowed)
        except (OSError, ValueError) as exc:  # a process cut off mid-line, or a bad line
            log.warning("app workers: a server process's channel broke: %r", exc)
        finally:
            for task in answering:
                task.cancel()
            await asyncio.gather(*answering, return_exceptions=True)
            for worker_id, count in borrowed.items():
                if (worker := self._workers.get(worker_id)) is not None:
                    for _ in range(count):
                        self.pool.release(worker, None, reusable=False)
            writer.close()

    async def _answer(
        self, message: dict[str, Any], borrowed: Counter[int], outbox: _Outbox
    ) -> None:
        try:
            answer = await self._answer_to(message, borrowed)
        except Refusal as refusal:
            answer = {"refusal": _refusal_to_wire(refusal)}
        except Exception as exc:  # a fault here (a full disk...) fails the request there
            log.exception("app workers: %s failed", message.get("op"))
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["id"] = message["id"]
        outbox.put(answer)

    async def _answer_to(self, message: dict[str, Any], borrowed: Counter[int]) -> dict[str, Any]:
        op = message["op"]
        if op == "lend":
            worker = await self.pool.lend(self._app(message["app"]))
            worker_id = self._id(worker)
            borrowed[worker_id] += 1  # at once: a cancellation cannot come in between
            return {
                "worker": {
                    "id": worker_id,
                    "pid": worker.pid,
                    "token": worker.token.decode(),
                    "http": str(worker.socket_path),
                    "ws": str(worker.ws_socket_path),
                }
            }
        if op == "workers":
            return {"workers": self.pool.stats()}
        if op == "stop":
            await self.pool.stop_app(message["key"])
            return {}
        lent = self._workers.get(message["worker"])
        if op == "unreachable":
            if lent is not None:
                await self.pool.unreachable(lent)
            return {}
        if op == "crashed":
            if lent is None:
                raise Refusal(502, "APP_CRASHED", "The app's worker exited")
            raise await lent.crashed(WorkerGone(message["why"]))
        raise ValueError(f"unknown operation {op!r}")

    def _apply(self, message: dict[str, Any], borrowed: Counter[int]) -> None:
        worker_id = message["worker"]
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        op = message["op"]
        if op == "release":
            worker.served += message.get("served", 0)  # requests on claims used again
            for _ in range(min(message.get("count", 1), borrowed[worker_id])):
                borrowed[worker_id] -= 1
                self.pool.release(worker, None, reusable=bool(message["reusable"]))
        elif op == "retire":
            self.pool.retire(worker)
        elif op == "kill":
            self.pool.kill(worker)

    def _app(self, form: str) -> WorkerApp:
        app = self._apps.get(form)
        if app is None:
            if len(self._apps) >= 256:
                self._apps.clear()
            app = self._apps[form] = _app_from_wire(form)
        return app

    def _id(self, worker: Worker) -> int:
        """`worker`'s id on the wire (the dead ones are forgotten as new ones come)."""
        worker_id = self._id_of.get(worker)
        if worker_id is None:
            for dead in [w for w in self._id_of if w.state == "dead"]:
                del self._workers[self._id_of.pop(dead)]
            worker_id = self._id_of[worker] = next(self._ids)
            self._workers[worker_id] = worker
        return worker_id


# -- a server process's side -------------------------------------------------------------


class BorrowedWorker(Reachable):
    """A worker of the supervisor's pool, as a server process reaches it."""

    def __init__(self, pool: SharedPool, app: WorkerApp, wire: dict[str, Any]) -> None:
        super().__init__()
        self.pool = pool
        self.app = app
        self.id: int = wire["id"]
        self._pid: int | None = wire["pid"]
        self.token: bytes = wire["token"].encode()
        self.socket_path = Path(wire["http"])
        self.ws_socket_path = Path(wire["ws"])
        self.active = 0  # requests of this process it serves
        self.parked = 0  # claims kept after their request, for the next ones
        self.reuse_until = 0.0  # kept claims serve new requests until then (monotonic)
        self.unreported = 0  # requests served on claims used again, not yet reported
        self.retired = False  # this process retired or killed it

    @property
    def pid(self) -> int | None:
        """The worker's process id (the supervisor's children are this process's kin)."""
        return self._pid

    async def crashed(self, exc: BaseException) -> Refusal:
        """The refusal for a broken exchange, as the supervisor sees the worker."""
        try:
            await self.pool.ask({"op": "crashed", "worker": self.id, "why": str(exc)})
        except Refusal as refusal:
            return refusal
        raise AssertionError("the supervisor answers a crash with a refusal")


class SharedPool:
    """A server process's share of the supervisor's pool (module docstring): what the
    router and proxy.py ask of a `WorkerPool`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._workers: dict[int, BorrowedWorker] = {}
        self._opened: asyncio.Task[_Outbox] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: _Outbox | None = None
        self._broken = False  # the supervisor is gone
        self._returning: asyncio.TimerHandle | None = None  # the parked claims' return

    async def handle(self, app: WorkerApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI `http` or `websocket` scope with `app`'s workers (`relay`)."""
        await relay(self, app, scope, receive, send)

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers of every process (`WorkerPool.stats`)."""
        self._return_parked()  # first: the counts then include this process's requests
        workers: list[dict[str, Any]] = (await self.ask({"op": "workers"}))["workers"]
        return workers

    async def stop_app(self, key: str) -> None:
        """Stop `key`'s workers once their in-flight requests finish (every process's)."""
        self._return_parked()  # the stop need not wait for claims kept here
        await self.ask({"op": "stop", "key": key})

    async def close(self) -> None:
        """Close this process's connections; the workers serve the other processes on."""
        self._return_parked()
        for worker in self._workers.values():
            worker.close_connections()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._writer is not None:
            self._writer.close()

    # -- lending (proxy.py's Lender) ----------------------------------------------------

    async def checkout(
        self, app: WorkerApp, websocket: bool = False
    ) -> tuple[BorrowedWorker, Connection]:
        """A borrowed worker and a connection to it (`pool.checkout`)."""
        return await checkout(self, app, websocket)

    async def lend(self, app: WorkerApp) -> BorrowedWorker:
        """A worker of the supervisor's pool, claimed for one request: one this process
        kept from a request just done, else one the supervisor lends."""
        now = time.monotonic()
        for kept in self._workers.values():
            if kept.parked and kept.app.key == app.key and now < kept.reuse_until:
                kept.parked -= 1
                kept.unreported += 1
                kept.active += 1
                return kept
        wire = (await self.ask({"op": "lend", "app": _app_to_wire(app)}))["worker"]
        worker = self._workers.get(wire["id"])
        if worker is None:
            # A worker new here: forget those that are gone (nothing in flight, and every
            # kept connection closed by the other end: they stopped).
            for old in list(self._workers.values()):
                if not (old.active or old.parked or any(c.usable() for c in old.connections)):
                    old.close_connections()
                    del self._workers[old.id]
            worker = self._workers[wire["id"]] = BorrowedWorker(self, app, wire)
        # Kept claims serve only briefly after the supervisor last chose this worker: it
        # must keep seeing requests, to recycle or stop a worker even under load.
        worker.reuse_until = time.monotonic() + REUSE_SECONDS
        worker.active += 1
        return worker

    def release(
        self, worker: BorrowedWorker, connection: Connection | None, reusable: bool
    ) -> None:
        """Hand the worker back, and keep the connection if it can carry another request."""
        worker.active -= 1
        if connection is not None:
            if reusable and len(worker.connections) < _IDLE_CONNECTIONS:
                worker.connections.append(connection)
            else:
                connection.close()
        if reusable and not worker.retired and worker.app.settings.ttl != 0:
            worker.parked += 1
            if self._returning is None:
                loop = asyncio.get_running_loop()
                self._returning = loop.call_later(PARK_SECONDS, self._return_parked)
        else:
            self._give_back(worker, 1, reusable)

    def retire(self, worker: BorrowedWorker) -> None:
        """No new requests for `worker` (from any process)."""
        self._drop(worker)
        self._tell({"op": "retire", "worker": worker.id})

    def kill(self, worker: BorrowedWorker) -> None:
        """Stop `worker` now, the other processes' requests to it with it."""
        self._drop(worker)
        self._tell({"op": "kill", "worker": worker.id})

    async def unreachable(self, worker: BorrowedWorker) -> None:
        """`worker` did not accept a connection: the supervisor makes sure it is gone."""
        self._drop(worker)
        await self.ask({"op": "unreachable", "worker": worker.id})

    def _drop(self, worker: BorrowedWorker) -> None:
        """Use `worker` no more: its connections close, the claims kept on it go back."""
        worker.retired = True
        worker.close_connections()
        self._unpark(worker)

    def _give_back(self, worker: BorrowedWorker, count: int, reusable: bool) -> None:
        """Return `count` claims on `worker`, with the requests served on reused ones."""
        message = {"op": "release", "worker": worker.id, "reusable": reusable, "count": count}
        self._tell({**message, "served": worker.unreported})
        worker.unreported = 0

    def _unpark(self, worker: BorrowedWorker) -> None:
        if worker.parked:
            self._give_back(worker, worker.parked, reusable=True)
            worker.parked = 0

    def _return_parked(self) -> None:
        """Give back every claim kept for reuse."""
        if self._returning is not None:
            self._returning.cancel()
            self._returning = None
        for worker in self._workers.values():
            self._unpark(worker)

    # -- the channel --------------------------------------------------------------------

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send `message` and wait for its answer.

        :raises Refusal: the answer is one, or the supervisor is gone (503 NOT_READY).
        :raises RuntimeError: the supervisor failed to answer (its log says why).
        """
        outbox = await self._channel()
        if self._broken:
            raise _gone()
        message_id = next(self._ids)
        answer = self._answers[message_id] = asyncio.get_running_loop().create_future()
        outbox.put({**message, "id": message_id})
        # Not popped here: an answer that comes after its asker gave up must still be
        # seen (a worker lent for nothing is given back, see `_read`).
        reply: dict[str, Any] = await answer
        if "refusal" in reply:
            raise _refusal_from_wire(reply["refusal"])
        if "error" in reply:  # as the pool's own fault would in a single process
            raise RuntimeError(f"the supervisor's app workers failed: {reply['error']}")
        return reply

    def _tell(self, message: dict[str, Any]) -> None:
        if self._outbox is not None:
            self._outbox.put(message)

    async def _channel(self) -> _Outbox:
        if self._opened is None:
            self._opened = asyncio.create_task(self._open())
        return await asyncio.shield(self._opened)

    async def _open(self) -> _Outbox:
        sock = socket.socket(fileno=self._fd)
        reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        self._outbox = _Outbox(self._writer)
        self._reading = asyncio.create_task(self._read(reader))
        return self._outbox

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                reply = orjson.loads(line)
                answer = self._answers.pop(reply["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(reply)
                elif "worker" in reply:  # its asker gave up meanwhile: give it back
                    self._tell({"op": "release", "worker": reply["worker"]["id"], "reusable": True})
        except (OSError, ValueError) as exc:
            log.error("app workers: the supervisor's channel broke: %r", exc)
        finally:
            self._broken = True
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(_gone())
            self._answers.clear()
