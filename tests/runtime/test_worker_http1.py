"""The pool's HTTP/1.1 to its workers (apps/http1.py): what it writes, what it accepts."""

from __future__ import annotations

import asyncio

import pytest
from courtyard.apps.http1 import (
    LAST_CHUNK,
    ProtocolError,
    RequestError,
    chunk,
    read_response,
    request_head,
)


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=256 * 1024)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def read_all(data: bytes, method: str = "GET", eof: bool = True):
    reader = reader_of(data, eof)
    response, body = await read_response(reader, method)
    pieces = [piece async for piece in body]
    return response, pieces, reader


def test_request_head_is_written_as_given():
    head = request_head("POST", "/a%2Fb?x=1", [(b"host", b"h"), (b"x-one", b" 1 ")])
    assert head == b"POST /a%2Fb?x=1 HTTP/1.1\r\nhost: h\r\nx-one: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [(b"x-evil", b"a\r\nx-injected: 1")]),
        ("GET", "/", [(b"x-evil", b"a\nb")]),
        ("GET", "/", [(b"bad name", b"v")]),
        ("GET", "/ HTTP/1.0\r\nx: y", []),
        ("GE T", "/", []),
        ("GET", "/é", []),
    ],
)
def test_request_head_refuses_what_would_break_a_line(method, target, headers):
    with pytest.raises(RequestError):
        request_head(method, target, headers)


def test_chunk_framing():
    assert b"".join(chunk(b"hello")) + LAST_CHUNK == b"5\r\nhello\r\n0\r\n\r\n"


async def test_a_sized_response_ends_in_one_piece_and_keeps_the_connection():
    response, pieces, _ = await read_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", eof=False
    )
    assert response.status == 200
    assert response.headers == [(b"content-length", b"5"), (b"x-a", b"b")]
    assert pieces == [(b"hello", True)]
    assert response.reusable


async def test_a_chunked_response_is_relayed_in_pieces_then_ends():
    data = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    )
    response, pieces, _ = await read_all(data, eof=False)
    assert response.status == 201
    assert pieces == [(b"abc", False), (b"de", False), (b"", True)]
    assert response.reusable


async def test_informational_responses_are_skipped():
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    response, pieces, _ = await read_all(data)
    assert response.status == 204
    assert pieces == [(b"", True)]


async def test_a_head_answer_has_no_body_whatever_its_length():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    response, pieces, _ = await read_all(data, method="HEAD", eof=False)
    assert pieces == [(b"", True)]
    assert response.reusable


async def test_a_response_without_framing_runs_to_the_close_and_is_not_reused():
    response, pieces, _ = await read_all(b"HTTP/1.1 200 OK\r\n\r\nab")
    assert b"".join(p for p, _ in pieces) == b"ab"
    assert pieces[-1] == (b"", True)
    assert not response.reusable


async def test_connection_close_is_honoured():
    response, _, _ = await read_all(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert not response.reusable


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",  # closed in the head
    ],
)
async def test_a_malformed_response_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        await read_all(data)
