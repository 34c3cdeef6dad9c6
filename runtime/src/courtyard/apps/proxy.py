"""The wire between the runtime and a worker: HTTP/1.1 exchanges streamed with h11,
WebSocket sessions relayed with wsproto, the headers that cross, and the errors answered
in the caller's place (see workers.py for the process pool that uses it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import h11
import wsproto
import wsproto.events as ws_events
import wsproto.utilities

from ..asgi import Receive, Scope, Send, header

if TYPE_CHECKING:
    from .workers import AppSettings, _Worker


TOKEN_HEADER = b"x-courtyard-token"  # keep in step with worker_main.py
ROOT_PATH_HEADER = b"x-courtyard-root-path"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the pool sets itself (or that make no sense on the worker connection).
REPLACED = frozenset(
    {
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        TOKEN_HEADER,
        ROOT_PATH_HEADER,
    }
)
# The caller's credentials for the runtime, and the runtime's internal markers: an app gets
# them only if its `forward_credentials` setting asks (a key or a session cookie in an
# app's hands would let it act as the caller on the runtime's own API).
CREDENTIALS = frozenset(
    {b"authorization", b"cookie", b"x-api-key", b"x-courtyard-internal", b"x-buntime-internal"}
)
WS_HANDSHAKE = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
CHUNK = 256 * 1024
MAX_HEAD = 64 * 1024  # response head (status line and headers) from a worker
WS_MAX_MESSAGE = 16 * 1024**2  # a message from the app; bigger ones close with 1009


class Refusal(Exception):
    """An answer the pool gives instead of the app's."""

    def __init__(
        self, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)


class WorkerGone(Exception):
    """The connection to the worker broke (it crashed, or closed it mid-exchange)."""


class ClientGone(Exception):
    """The caller's client disconnected."""


class TooLarge(Exception):
    """The request body passed `max_body_size`."""


class Connection:
    """A stream to a worker, with its h11 state when used for HTTP."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def usable(self) -> bool:
        """Still open, and nothing unexpected waiting to be read."""
        return not (
            self.writer.is_closing() or self.reader.at_eof() or self.reader._buffer  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        """Close without waiting."""
        self.writer.close()


class HttpExchange:
    """One request relayed to a worker over HTTP/1.1, both bodies streamed."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        worker: _Worker,
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
        self.received = 0

    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        connection = self.connection
        return (
            self.complete
            and connection is not None
            and connection.h11.our_state is h11.DONE
            and connection.h11.their_state is h11.DONE
        )

    async def run(self) -> None:
        """Send the request head, then relay the bodies concurrently until the response
        is complete (an app may answer before reading the whole body)."""
        assert self.connection is not None
        first_body = self.first.get("body", b"")
        more = self.first.get("more_body", False)
        headers = request_headers(self.scope, self.worker)
        if self.length is not None:
            headers.append((b"content-length", b"%d" % self.length))
        elif not more:
            if first_body or self.scope["method"] in ("POST", "PUT", "PATCH"):
                headers.append((b"content-length", b"%d" % len(first_body)))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        request = h11.Request(
            method=self.scope["method"], target=target(self.scope), headers=headers
        )
        self._write(request)
        download = asyncio.create_task(self._download())
        upload = asyncio.create_task(self._upload(first_body, more))
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

    def _write(self, event: h11.Event) -> None:
        assert self.connection is not None
        data = self.connection.h11.send_with_data_passthrough(event)
        if data:
            self.connection.writer.writelines(data)

    async def _drain(self) -> None:
        assert self.connection is not None
        try:
            await self.connection.writer.drain()
        except OSError as exc:
            raise WorkerGone(str(exc)) from exc

    async def _upload(self, body: bytes, more: bool) -> None:
        """Relay the request body, then watch for the client leaving."""
        settings = self.worker.app.settings
        self.received = len(body)
        if body:
            self._write(h11.Data(data=body))
            await self._drain()
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > settings.max_body_size:
                raise TooLarge
            if chunk:
                self._write(h11.Data(data=chunk))
                await self._drain()
            more = message.get("more_body", False)
        self._write(h11.EndOfMessage())
        await self._drain()
        while (await self.receive())["type"] != "http.disconnect":
            pass
        raise ClientGone

    async def _download(self) -> None:
        """Relay the response to the caller as it arrives."""
        assert self.connection is not None
        connection = self.connection
        while True:
            event = connection.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await connection.reader.read(CHUNK)
                except OSError as exc:
                    raise WorkerGone(str(exc)) from exc
                connection.h11.receive_data(data)  # b"": end of file, h11 judges it
            elif isinstance(event, h11.Response):
                await self.send(
                    {
                        "type": "http.response.start",
                        "status": event.status_code,
                        "headers": response_headers(event.headers),
                    }
                )
                self.started = True
            elif isinstance(event, h11.Data):
                await self.send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, h11.EndOfMessage):
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                self.complete = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise WorkerGone("the worker closed the connection")
            # InformationalResponse (1xx): nothing to relay in ASGI.


# -- WebSocket relay ---------------------------------------------------------------------


async def ws_handshake(
    ws: wsproto.WSConnection, connection: Connection, scope: Scope, worker: _Worker
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
                if ws.state is wsproto.ConnectionState.OPEN:
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
                    if ws.state is wsproto.ConnectionState.REMOTE_CLOSING:
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


# -- headers and errors ------------------------------------------------------------------


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length, if it declares one; ValueError if malformed."""
    values = [v for n, v in scope.get("headers", ()) if n == b"content-length"]
    if not values:
        return None
    lengths = {v.strip() for v in values}
    if len(lengths) != 1 or not next(iter(lengths)).isdigit():
        raise ValueError("bad content-length")
    return int(next(iter(lengths)))


def request_headers(scope: Scope, worker: _Worker) -> list[tuple[bytes, bytes]]:
    """The caller's headers minus hop-by-hop ones (and, unless the app asks for them, its
    credentials), plus forwarding and private headers."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    withheld = frozenset() if worker.app.settings.forward_credentials else CREDENTIALS
    named_in_connection = {
        token.strip().lower().encode("latin-1")
        for name, value in headers
        if name == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    forwarded_for = [value for name, value in headers if name == b"x-forwarded-for"]
    out = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP
        and name not in REPLACED
        and name not in named_in_connection
        and name not in withheld
    ]
    if not any(name == b"host" for name, _ in out):
        server = scope.get("server")
        out.append((b"host", f"{server[0]}:{server[1]}".encode() if server else b"localhost"))
    client = scope.get("client")
    if client and client[0]:
        forwarded_for.append(str(client[0]).encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    scheme = scope.get("scheme", "http")
    out.append((b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"))
    host = header(scope, b"host")
    if host:
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    out.append((TOKEN_HEADER, worker.token))
    out.append((ROOT_PATH_HEADER, quote(scope.get("root_path", "")).encode("ascii")))
    return out


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """A worker's response headers as they go to the client: hop-by-hop ones dropped."""
    return [
        (bytes(name), bytes(value))
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in drop
    ]


def target(scope: Scope) -> str:
    """The request target for the worker: the caller's path (and query) as given.

    `raw_path` is used when it still matches `path` (it keeps escapes such as %2F); a
    caller that rewrote `path` may have left it stale, so otherwise `path` is quoted.
    """
    path: str = scope.get("path") or "/"
    raw = scope.get("raw_path")
    if raw and raw.isascii() and unquote(raw.decode("ascii")) == path:
        target = raw.decode("ascii")
    else:
        target = quote(path, safe="/:@!$&'()*+,;=-._~")
    query: bytes = scope.get("query_string") or b""
    if query:
        target += "?" + (
            query.decode("ascii") if query.isascii() else quote(query, safe="/?:@!$&'()*+,;=%")
        )
    return target


def too_large(settings: AppSettings) -> Refusal:
    """The refusal of a body above the app's `max_body_size`."""
    return Refusal(
        413,
        "PAYLOAD_TOO_LARGE",
        f"The request body is larger than {settings.max_body_size} bytes",
    )


async def send_error(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Answer with the error envelope (for a WebSocket: as a denial response, or a close)."""
    body = json.dumps({"error": {"code": refusal.code, "message": refusal.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *refusal.headers,
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" in (scope.get("extensions") or {}):
            start = {"type": "websocket.http.response.start", "status": refusal.status}
            await send({**start, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013 if refusal.status == 503 else 1011})
        return
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
