"""Relaying one exchange to a worker: an HTTP/1.1 request and its response, streamed both
ways (http1.py), or a WebSocket session, relayed message by message with wsproto. No body
sits whole in memory; status codes, headers and close codes pass as the app sends them.

`proxy_http` and `proxy_websocket` serve one ASGI scope with a worker the pool lends
(`Lender`); they map what goes wrong to the pool's answers (pool.py lists them). The
app's `timeout` covers an HTTP request from the moment its worker is ready until the
response is complete: a worker that has not answered by then is killed (504 APP_TIMEOUT),
one whose response is unfinished is recycled, the response cut off. For a WebSocket it
covers the handshake only. Nothing here outlives the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import wsproto
import wsproto.connection
import wsproto.events as ws_events
import wsproto.utilities

from ..asgi import Receive, Scope, Send, header
from .errors import ClientGone, Refusal, TooLarge, WorkerGone, send_error, too_large
from .headers import WS_HANDSHAKE, content_length, request_headers, response_headers, target
from .http1 import LAST_CHUNK, ProtocolError, RequestError, chunk, read_response, request_head
from .sockets import CHUNK, Connection

if TYPE_CHECKING:
    from .config import WorkerApp
    from .process import Reachable

log = logging.getLogger("courtyard.apps.workers")  # the logger of every part of the pool
WS_MAX_MESSAGE = 16 * 1024**2  # a message from the app; bigger ones close with 1009


W = TypeVar("W", bound="Reachable")


class Lender(Protocol[W]):
    """What the relays need of the pool: a worker lent for one exchange."""

    async def checkout(self, app: WorkerApp, websocket: bool = False) -> tuple[W, Connection]:
        """A claimed worker and a connection to it (or a `Refusal`); for a WebSocket, a
        new connection to the worker's WebSocket socket."""
        ...

    def release(self, worker: W, connection: Connection | None, reusable: bool) -> None:
        """Hand the worker back, and the connection if it can carry another request."""
        ...

    def retire(self, worker: W) -> None:
        """No new requests for `worker`; stop it once its in-flight ones are done."""
        ...

    def kill(self, worker: W) -> None:
        """Stop `worker` now (SIGKILL), its in-flight requests with it."""
        ...


async def relay(
    workers: Lender[W], app: WorkerApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one ASGI `http` or `websocket` scope with a worker of `app` that `workers`
    lends.

    If the worker fails after the response has started, this returns with the response
    unfinished: the server then closes the connection.
    """
    if scope["type"] == "http":
        await proxy_http(workers, app, scope, receive, send)
    elif scope["type"] == "websocket":
        await proxy_websocket(workers, app, scope, receive, send)
    else:
        raise ValueError(f"unsupported scope type {scope['type']!r}")


# -- HTTP --------------------------------------------------------------------------------


async def proxy_http(
    workers: Lender[W], app: WorkerApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve an `http` scope with a worker of `app`."""
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
        worker, connection = await workers.checkout(app)
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
                workers.retire(worker)
                return
            log.warning(
                "%s: no response within %g s; killing worker %s",
                app.key,
                settings.timeout,
                worker.pid,
            )
            workers.kill(worker)
            raise Refusal(
                504, "APP_TIMEOUT", f"The app did not respond within {settings.timeout:g} s"
            ) from None
        except TooLarge:
            raise too_large(settings) from None
        except ClientGone:
            return
        except (WorkerGone, OSError, ProtocolError) as exc:
            raise await worker.crashed(exc) from None
        except RequestError as exc:
            raise Refusal(400, "BAD_REQUEST", f"Cannot forward the request: {exc}") from None
    except Refusal as refusal:
        if exchange.started:
            return  # too late for an error response: the server drops the connection
        await send_error(scope, send, refusal)
    finally:
        workers.release(worker, exchange.connection, reusable=exchange.reusable())


class HttpExchange:
    """One request relayed to a worker over HTTP/1.1 (http1.py), both bodies streamed."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        worker: Reachable,
        first: dict[str, Any],
        length: int | None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.worker = worker
        self.first = first
        self.length = length
        self.connection: Connection | None = None
        self.started = False  # http.response.start sent to the caller
        self.complete = False  # the whole response sent
        self.sent = False  # the whole request written
        self.received = 0
        self._response_reusable = False

    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        return self.complete and self.sent and self._response_reusable

    async def run(self) -> None:
        """Send the request head, then relay the bodies concurrently until the response
        is complete (an app may answer before reading the whole body)."""
        assert self.connection is not None
        first_body = self.first.get("body", b"")
        more = self.first.get("more_body", False)
        headers = request_headers(self.scope, self.worker)
        chunked = False
        if self.length is not None:
            headers.append((b"content-length", b"%d" % self.length))
        elif not more:
            if first_body or self.scope["method"] in ("POST", "PUT", "PATCH"):
                headers.append((b"content-length", b"%d" % len(first_body)))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
            chunked = True
        head = request_head(self.scope["method"], target(self.scope), headers)
        if not more:  # the whole request at once, the common case
            self._check_length(len(first_body), last=True)
            self.connection.writer.writelines((head, first_body) if first_body else (head,))
            self.sent = True
            await self._download_watching()
            return
        self.connection.writer.write(head)
        upload = asyncio.ensure_future(self._upload(first_body, chunked))
        download = asyncio.ensure_future(self._download())
        try:
            done, _ = await asyncio.wait({download, upload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (download, upload):
                task.cancel()
            await asyncio.gather(download, upload, return_exceptions=True)
        if download in done and not download.cancelled() and download.exception() is None:
            return
        source = download if download in done else upload
        exc = source.exception()
        assert exc is not None
        raise exc

    def _check_length(self, sent: int, last: bool) -> None:
        """The body must be as long as the caller's Content-Length said."""
        if self.length is not None and (sent > self.length or (last and sent != self.length)):
            raise RequestError("the body does not match its Content-Length")

    async def _drain(self) -> None:
        assert self.connection is not None
        try:
            await self.connection.writer.drain()
        except OSError as exc:
            raise WorkerGone(str(exc)) from exc

    async def _upload(self, body: bytes, chunked: bool) -> None:
        """Relay the request body, then watch for the client leaving."""
        assert self.connection is not None
        writer = self.connection.writer
        settings = self.worker.app.settings
        self.received = len(body)
        more = True
        while True:
            self._check_length(self.received, last=not more)
            if body:
                writer.writelines(chunk(body) if chunked else (body,))
                await self._drain()
            if not more:
                break
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body = message.get("body", b"")
            self.received += len(body)
            if self.received > settings.max_body_size:
                raise TooLarge
            more = message.get("more_body", False)
        if chunked:
            writer.write(LAST_CHUNK)
        await self._drain()
        self.sent = True
        await self._watch()

    async def _download_watching(self) -> None:
        """Relay the response in this task, while a second one watches for the client
        leaving (then this one is cancelled, and ClientGone raised): one task a request
        rather than two."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            with contextlib.suppress(Exception):
                await self._watch()
            if not self.complete:
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self._download()
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:
                raise ClientGone from None
            raise
        finally:
            watcher.cancel()

    async def _watch(self) -> None:
        """Wait for the client to leave (a request's body is all read by now)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass
        raise ClientGone

    async def _download(self) -> None:
        """Relay the response to the caller as it arrives."""
        assert self.connection is not None
        response, body = await read_response(self.connection.reader, self.scope["method"])
        send = self.send
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers(response.headers),
            }
        )
        self.started = True
        async for piece, last in body:
            await send({"type": "http.response.body", "body": piece, "more_body": not last})
        self._response_reusable = response.reusable
        self.complete = True


# -- WebSocket ---------------------------------------------------------------------------


async def proxy_websocket(
    workers: Lender[W], app: WorkerApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve a `websocket` scope with a worker of `app` (on a connection of its own)."""
    if (await receive())["type"] != "websocket.connect":
        return
    try:
        worker, connection = await workers.checkout(app, websocket=True)
    except Refusal as refusal:
        await send_error(scope, send, refusal)
        return
    try:
        try:
            async with asyncio.timeout(app.settings.timeout):
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                answer = await ws_handshake(ws, connection, scope, worker)
        except TimeoutError:
            workers.kill(worker)
            raise Refusal(
                504, "APP_TIMEOUT", f"The app did not accept within {app.settings.timeout:g} s"
            ) from None
        except (WorkerGone, OSError, wsproto.utilities.RemoteProtocolError) as exc:
            raise await worker.crashed(exc) from None
    except Refusal as refusal:
        await send_error(scope, send, refusal)
        workers.release(worker, connection, reusable=False)
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
        workers.release(worker, connection, reusable=False)


async def ws_handshake(
    ws: wsproto.WSConnection, connection: Connection, scope: Scope, worker: Reachable
) -> ws_events.AcceptConnection | ws_events.RejectConnection:
    """Open the WebSocket to the worker; return its acceptance or its refusal."""
    headers = [
        (name, value) for name, value in request_headers(scope, worker) if name not in WS_HANDSHAKE
    ]
    host = header(scope, b"host") or "localhost"
    request = ws_events.Request(
        host=host,
        target=target(scope),
        subprotocols=list(scope.get("subprotocols") or ()),
        extra_headers=headers,
    )
    connection.writer.write(ws.send(request))
    await connection.writer.drain()
    while True:
        data = await connection.reader.read(CHUNK)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, ws_events.AcceptConnection | ws_events.RejectConnection):
                return event
        if not data:
            raise WorkerGone("the worker closed the connection during the handshake")


async def ws_denial(
    ws: wsproto.WSConnection,
    connection: Connection,
    answer: ws_events.RejectConnection,
    scope: Scope,
    send: Send,
) -> None:
    """Relay the app's refusal of the handshake (an HTTP response)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "websocket.http.response.start",
            "status": answer.status_code,
            "headers": response_headers(answer.headers),
        }
    )
    finished = not answer.has_body
    while not finished:
        for event in ws.events():
            if isinstance(event, ws_events.RejectData):
                await send(
                    {
                        "type": "websocket.http.response.body",
                        "body": bytes(event.data),
                        "more_body": not event.body_finished,
                    }
                )
                finished = event.body_finished
        if not finished:
            data = await connection.reader.read(CHUNK)
            if not data:
                break
            ws.receive_data(data)
    if not finished:
        await send({"type": "websocket.http.response.body", "body": b"", "more_body": False})


async def ws_relay(
    ws: wsproto.WSConnection, connection: Connection, receive: Receive, send: Send
) -> None:
    """Relay messages both ways until either side closes; close codes pass through."""

    async def from_client() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                data = text if text is not None else message.get("bytes") or b""
                connection.writer.write(ws.send(ws_events.Message(data=data)))
                await connection.writer.drain()
            elif message["type"] == "websocket.disconnect":
                code = sendable_close_code(message.get("code", 1000))
                if ws.state is wsproto.connection.ConnectionState.OPEN:
                    connection.writer.write(
                        ws.send(ws_events.CloseConnection(code=code, reason=message.get("reason")))
                    )
                    with contextlib.suppress(OSError):
                        await connection.writer.drain()
                return

    async def from_app() -> None:
        parts: list[Any] = []
        size = 0
        data = b"?"  # events may already wait: those that came with the handshake
        while True:
            for event in ws.events():
                if isinstance(event, ws_events.Message):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > WS_MAX_MESSAGE:
                        await send({"type": "websocket.close", "code": 1009})
                        return
                    if event.message_finished:
                        if isinstance(event, ws_events.TextMessage):
                            await send({"type": "websocket.send", "text": "".join(parts)})
                        else:
                            await send({"type": "websocket.send", "bytes": b"".join(parts)})
                        parts, size = [], 0
                elif isinstance(event, ws_events.Ping):
                    connection.writer.write(ws.send(event.response()))
                elif isinstance(event, ws_events.CloseConnection):
                    if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        connection.writer.write(ws.send(event.response()))
                    code = event.code if event.code not in (1005, 1006) else 1011
                    if not data:  # the worker vanished without a close frame
                        code = 1011
                    await send({"type": "websocket.close", "code": code, "reason": event.reason})
                    return
            if not data:
                await send({"type": "websocket.close", "code": 1011})
                return
            data = await connection.reader.read(CHUNK)
            ws.receive_data(data or None)

    tasks = [asyncio.create_task(from_client()), asyncio.create_task(from_app())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result,
            OSError | wsproto.utilities.RemoteProtocolError | wsproto.utilities.LocalProtocolError,
        ):
            raise result


def sendable_close_code(code: int) -> int:
    """A close code that may go in a close frame (1005, 1006, 1015 are local only)."""
    return (
        code
        if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)
        else 1000
    )
