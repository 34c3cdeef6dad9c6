"""A small HTTP/1.1 client for the worker protocol: JSON requests on kept-alive connections.

A worker sends two or three requests per task, so the client's own cost matters: this
one is h11 (the HTTP/1.1 state machine httpx itself is built on) over asyncio streams,
with a pool of idle connections, and costs a small fraction of what a general-purpose
client does per request. It does what the protocol needs and no more: `http` and `https`
(the system's certificate store), JSON bodies, no redirects, no cookies, no proxies.

Any failure to exchange a request and its answer (refused, reset or closed connection,
timeout, malformed answer) raises `TransportError`; the caller decides whether to retry.
A connection is put back in the pool only after a complete exchange that leaves it
reusable; one cut short (an error, a timeout, a cancelled request) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

MAX_BODY = 64 * 1024 * 1024  # the longest answer accepted
MAX_HEADERS = 64 * 1024
IDLE_LIMIT = 4.0  # seconds an idle connection is kept (below common keep-alive timeouts)
READ_SIZE = 65536


class TransportError(Exception):
    """The request could not be sent, or its answer not read."""


@dataclass(frozen=True)
class Answer:
    """A response: its status, headers (lower-case names) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON. :raises ValueError: it is not JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", errors="replace")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.state = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        self.idle_since = time.monotonic()

    @property
    def reusable(self) -> bool:
        fresh = time.monotonic() - self.idle_since < IDLE_LIMIT
        return fresh and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpClient:
    """JSON requests to one server (`base_url`), with default headers."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if self._tls else 80)
        netloc = f"[{self._host}]" if ":" in self._host else self._host
        self._headers = [("Host", netloc if default_port else f"{netloc}:{self._port}")]
        self._headers += list(headers.items())
        self._connect_timeout = connect_timeout
        if ssl_context is None and self._tls:
            ssl_context = ssl.create_default_context()  # the system's certificate store
        self._ssl = ssl_context
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                    limit=READ_SIZE,
                )
        except TimeoutError:
            raise TransportError(f"no connection within {self._connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection; stale ones are closed on the way (all
        of them, so that none lingers half-closed at the bottom of the pile)."""
        usable: list[_Connection] = []
        for connection in self._idle:
            if connection.reusable:
                usable.append(connection)
            else:
                connection.close()
        self._idle = usable
        return self._idle.pop() if self._idle else None

    async def post(self, path: str, body: Any, *, timeout: float) -> Answer:
        """POST `body` as JSON (or JSON text already encoded, as bytes) to `path` and
        return the answer.

        :raises TransportError: no complete answer within `timeout` seconds.
        """
        if self._closed:
            raise TransportError("the client is closed")
        payload = (
            body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        )
        connection = self._take_idle() or await self._connect()
        done = False
        try:
            async with asyncio.timeout(timeout):
                answer = await self._exchange(connection, path, payload)
            done = True
        except TimeoutError:
            raise TransportError(f"no answer within {timeout:g} s") from None
        except (OSError, h11.ProtocolError, ssl.SSLError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from None
        finally:
            state = connection.state
            if done and state.our_state is h11.DONE and state.their_state is h11.DONE:
                state.start_next_cycle()
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:  # cut short, or the server asked to close
                connection.close()
        return answer

    async def _exchange(self, connection: _Connection, path: str, payload: bytes) -> Answer:
        state = connection.state
        headers = [
            *self._headers,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
        ]
        target = (self._prefix + path).encode()
        data = state.send(h11.Request(method="POST", target=target, headers=headers)) or b""
        data += state.send(h11.Data(data=payload)) or b""
        data += state.send(h11.EndOfMessage()) or b""
        connection.writer.write(data)
        await connection.writer.drain()
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                received = await connection.reader.read(READ_SIZE)
                state.receive_data(received)  # b"" means the server closed the connection
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise TransportError(f"an answer over {MAX_BODY} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("the server closed the connection")
            # h11.InformationalResponse (1xx): wait for the real answer.
        assert response is not None
        return Answer(
            status=response.status_code,
            reason=response.reason.decode("latin-1"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers},
            body=b"".join(chunks),
        )

    async def close(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
