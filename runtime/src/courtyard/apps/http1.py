"""HTTP/1.1 as the pool speaks it to its workers: the request head it writes, the
response it reads, and the body framing both ways.

The worker is the only peer (a server the pool started, behind a secret), the request
comes from an ASGI scope the runtime's server already parsed, and the pool only relays:
so this is the small part of HTTP/1.1 a relay needs, written for speed (a request and
its response cost a few bytes operations, not an event per piece as a general library
would). What a worker sends is still checked: a response that breaks the framing ends
as a `ProtocolError` (the pool answers 502 and drops the connection), never as a
misread body.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable

MAX_HEAD = 64 * 1024  # response head (status line and headers) from a worker
PIECE = 256 * 1024  # the most of a body relayed in one message
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")


class ProtocolError(Exception):
    """What a worker sent is not a well-formed HTTP/1.1 response."""


class RequestError(ValueError):
    """A request that cannot be written as HTTP/1.1 (a bad method, target or header)."""


def request_head(method: str, target: str, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers, checked: nothing a caller sent can end a line."""
    try:
        line = f"{method} {target} HTTP/1.1\r\n".encode("ascii")
    except UnicodeEncodeError:
        raise RequestError("bad method or target") from None
    if not _TOKEN.fullmatch(line[: len(method)]) or any(c in target for c in " \r\n\0"):
        raise RequestError("bad method or target")
    parts = [line]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise RequestError(f"bad header {name[:40]!r}")
        parts.append(b"%s: %s\r\n" % (name, value.strip(b" \t")))
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> list[bytes]:
    """One piece of a chunked body, as buffers to write."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


class Response:
    """A response read from a worker: its head, then its body in pieces (`body()`).

    :ivar reusable: set once the whole body was read with a framing that leaves the
        connection ready for another request.
    """

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self.reusable = False
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = True


async def read_response(
    reader: asyncio.StreamReader, method: str
) -> tuple[Response, AsyncIterator[tuple[bytes, bool]]]:
    """Read a final response's head (1xx ones are skipped), and return it with the
    iterator of its body's pieces, each with whether it is the last.

    :raises ProtocolError: a malformed head or framing, or the worker closed early.
    """
    while True:
        head = await _read_head(reader)
        response = _parse_head(head)
        if response.status >= 200:
            break
        if response.status == 101:
            raise ProtocolError("unexpected protocol switch")
    if method == "HEAD" or response.status in (204, 304):
        response._length = 0
        response._chunked = False
    return response, _body(reader, response)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("the worker closed the connection") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("response head too large") from exc


def _parse_head(head: bytes) -> Response:
    if len(head) > MAX_HEAD:
        raise ProtocolError("response head too large")
    lines = head[:-4].split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise ProtocolError("bad status line")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = not lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or b"\n" in value or b"\r" in value:
            raise ProtocolError("bad header line")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise ProtocolError("bad content-length")
            length = int(value)
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if codings != [b"chunked"] or chunked:
                raise ProtocolError("unsupported transfer-encoding")
            chunked = True
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        headers.append((name, value))
    if chunked and length is not None:
        raise ProtocolError("both content-length and chunked")
    response = Response(int(status[1]), headers)
    response._length = length
    response._chunked = chunked
    response._keep_alive = keep_alive
    return response


async def _body(
    reader: asyncio.StreamReader, response: Response
) -> AsyncIterator[tuple[bytes, bool]]:
    """The body's pieces as they arrive (at most `PIECE` bytes each), each with whether
    it is the last; the last may be empty."""
    try:
        if response._chunked:
            async for piece in _chunked(reader):
                yield piece, False
        elif response._length is not None:
            left = response._length
            if not left:
                response.reusable = response._keep_alive
                yield b"", True
                return
            while left:
                piece = await reader.read(min(left, PIECE))
                if not piece:
                    raise ProtocolError("the worker closed the connection mid-body")
                left -= len(piece)
                if not left:
                    response.reusable = response._keep_alive
                yield piece, not left
            return
        else:  # until the worker closes: the connection cannot be reused
            response._keep_alive = False
            while piece := await reader.read(PIECE):
                yield piece, False
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ProtocolError("bad body framing") from exc
    response.reusable = response._keep_alive
    yield b"", True


async def _chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        line = await reader.readuntil(b"\r\n")
        size = _CHUNK_SIZE.fullmatch(line[:-2])
        if size is None:
            raise ProtocolError("bad chunk size")
        left = int(size[1], 16)
        if left == 0:
            break
        while left:
            piece = await reader.read(min(left, PIECE))
            if not piece:
                raise ProtocolError("the worker closed the connection mid-body")
            left -= len(piece)
            yield piece
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("bad chunk end")
    while True:  # trailers: not relayed (ASGI has no trailers without the extension)
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return
