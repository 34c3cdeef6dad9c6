"""Request limits (limits.py), held while a body streams in, against a real Hypercorn
server: bodies over their limit, the budget of bodies in flight, GET and HEAD bodies,
clients that trickle. Then the wrapper alone, with a fake application; and the error
handlers' safety net for malformed request data (errors.py), with Quart's test client.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from courtyard import errors
from courtyard.limits import REFUSED, REQUEST_MAX_BYTES, RequestLimits
from courtyard.settings import Settings
from courtyard.testing import write_plugin
from quart import Quart, request

MiB = 1024**2
BOUNDARY = "limits-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

SINK = """
from courtyard_sdk import Blueprint, hookimpl
from quart import request


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("sink", __name__)

    @bp.post("/")
    async def swallow():
        # Iterating the body bypasses Quart's MAX_CONTENT_LENGTH: only the limits stop it.
        total = 0
        async for chunk in request.body:
            total += len(chunk)
        return {"total": total}

    return bp
"""


# -- a raw HTTP/1.1 client: it sends a body while watching for an early answer -------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def open_request(
    server: Any,
    method: str,
    path: str,
    headers: tuple[str, ...] = (),
    *,
    length: int | None = None,
    chunked: bool = False,
) -> socket.socket:
    """A connection to `server` on which the head of a request has been sent."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # little in transit
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Origin: {server.url}"]
    lines += headers
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def multipart_pieces(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A multipart body with one `file` part, `total` bytes of it, in pieces."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    for start in range(0, total, piece):
        yield os.urandom(min(piece, total - start))


def send_until_answered(sock: socket.socket, pieces: Iterator[bytes], chunked: bool) -> int:
    """Send `pieces` until the server answers (or closes); return the body bytes sent."""
    sent = 0
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            break  # an answer (or the end of the connection) is waiting
        frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        try:
            sock.sendall(frame)
        except OSError:
            break
        sent += len(piece)
    return sent


def read_answer(sock: socket.socket, timeout: float = 15) -> Answer:
    """Read one response from `sock`."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(status_line.split()[1]), headers, json.loads(body) if body else None)


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    """Whether the server closes `sock` within `timeout` (whatever it sends first)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True
    return True


class DiskWatch:
    """The most the files under a folder grew while it watched (the server's log aside)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.start = self.size()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def size(self) -> int:
        total = 0
        for path in self.root.rglob("*"):
            try:
                if path.is_file() and not path.name.startswith("server-"):
                    total += path.stat().st_size
            except OSError:  # gone meanwhile
                pass
        return total

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.size())
            time.sleep(0.01)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())


def audited(server: Any, path: str, timeout: float = 5) -> list[dict[str, Any]]:
    """The audit log's request entries for `path` (waiting for the writer)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = httpx.get(f"{server.url}/api/audit/", params={"kind": "request"}).json()
        found = [e for e in entries["entries"] if e["path"] == path]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert set(answer.body) == {"error"}, answer.body
    assert answer.body["error"]["code"] == code, answer.body
    assert isinstance(answer.body["error"]["message"], str)


# -- bodies over their limit -----------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["/api/plugins/upload", "/api/apps/upload"])
def test_a_chunked_upload_far_over_the_limit_is_refused_while_it_streams(
    courtyard_server, tmp_path: Path, endpoint: str
) -> None:
    (tmp_path / "tmp").mkdir()
    server = courtyard_server(
        entry_points=False, upload_max_bytes=MiB, env={"TMPDIR": str(tmp_path / "tmp")}
    )
    total = 64 * MiB
    with DiskWatch(tmp_path) as disk:
        sock = open_request(server, "POST", endpoint, (f"Content-Type: {MULTIPART}",), chunked=True)
        sent = send_until_answered(sock, multipart_pieces(total), chunked=True)
        answer = read_answer(sock)
    assert_error(answer, 413, "ARCHIVE_TOO_LARGE")
    assert answer.body["error"]["message"] == f"the upload exceeds {MiB} bytes"
    assert sent < total // 4, f"{sent} bytes sent before the answer"  # socket buffers aside
    assert closed_by_server(sock)
    assert disk.growth <= MiB, f"the files grew by {disk.growth} bytes"
    # The audit log records what the client was answered, not a client that went away.
    assert [e["status"] for e in audited(server, endpoint)] == [413]
    # The server goes on serving.
    assert httpx.get(f"{server.url}/api/health/live").status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body(courtyard_server) -> None:
    server = courtyard_server(entry_points=False, upload_max_bytes=MiB)
    sock = open_request(
        server,
        "POST",
        "/api/plugins/upload",
        (f"Content-Type: {MULTIPART}",),
        length=500 * MiB,
    )
    assert_error(read_answer(sock, timeout=5), 413, "ARCHIVE_TOO_LARGE")
    assert closed_by_server(sock)


def test_a_plugin_route_cannot_read_beyond_the_request_limit(
    courtyard_server, plugin_dir: Path
) -> None:
    write_plugin(plugin_dir, "sink", code=SINK)
    server = courtyard_server(entry_points=False)
    small = httpx.post(f"{server.url}/sink/", content=b"x" * 1000, headers={"Origin": server.url})
    assert small.json() == {"total": 1000}

    total = 64 * MiB
    sock = open_request(server, "POST", "/sink/", chunked=True)
    sent = send_until_answered(sock, multipart_pieces(total), chunked=True)
    answer = read_answer(sock)
    assert_error(answer, 413, "PAYLOAD_TOO_LARGE")
    assert REQUEST_MAX_BYTES < sent < total * 3 // 4, f"{sent} bytes sent before the answer"


# -- the budget of bodies in flight -------------------------------------------------------------


def test_declared_bodies_in_flight_share_the_budget(courtyard_server) -> None:
    server = courtyard_server(
        entry_points=False, upload_max_bytes=2 * MiB, bodies_max_total_bytes=3 * MiB
    )
    head = (f"Content-Type: {MULTIPART}",)
    holding = []
    for _ in range(2):  # 3 MiB reserved between them, their bodies never finished
        sock = open_request(server, "POST", "/api/plugins/upload", head, length=3 * MiB // 2)
        sock.sendall(next(multipart_pieces(0)))
        holding.append(sock)
        time.sleep(0.3)  # the server reads the head and reserves
    third = open_request(server, "POST", "/api/plugins/upload", head, length=MiB)
    answer = read_answer(third, timeout=5)
    assert_error(answer, 503, "SERVER_BUSY")
    assert answer.headers["retry-after"] == "2"
    assert not select.select(holding, [], [], 0)[0]  # the two others are still receiving

    def small_upload() -> httpx.Response:
        files = {"file": ("x.zip", b"PK\x05\x06" + bytes(18), "application/zip")}
        return httpx.post(
            f"{server.url}/api/plugins/upload", files=files, headers={"Origin": server.url}
        )

    assert small_upload().status_code == 503  # no room even for a small one
    for sock in holding:
        sock.close()  # their requests end: their reservations are given back
    deadline = time.monotonic() + 5
    while (answer_after := small_upload()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer_after.status_code == 400, answer_after.text  # an empty zip, but received


def test_streamed_bodies_in_flight_share_the_budget(courtyard_server, tmp_path: Path) -> None:
    server = courtyard_server(
        entry_points=False, upload_max_bytes=2 * MiB, bodies_max_total_bytes=3 * MiB
    )
    head = (f"Content-Type: {MULTIPART}",)
    with DiskWatch(tmp_path) as disk:
        holding = []
        for _ in range(2):
            sock = open_request(server, "POST", "/api/plugins/upload", head, chunked=True)
            assert send_until_answered(sock, multipart_pieces(5 * MiB // 4), chunked=True) > MiB
            holding.append(sock)
            time.sleep(0.5)  # the server reads what was sent
        third = open_request(server, "POST", "/api/plugins/upload", head, chunked=True)
        send_until_answered(third, multipart_pieces(2 * MiB), chunked=True)
        answer = read_answer(third)
    assert_error(answer, 503, "SERVER_BUSY")
    assert answer.headers["retry-after"] == "2"
    assert not select.select(holding, [], [], 0)[0]
    assert disk.growth <= 3 * MiB
    for sock in holding:
        sock.close()


# -- GET and HEAD carry no body --------------------------------------------------------------


def test_get_and_head_with_a_body_are_refused(courtyard_server) -> None:
    server = courtyard_server(entry_points=False)
    url = f"{server.url}/api/health/"
    answer = httpx.request("GET", url, content=b"smuggled")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BODY_NOT_ALLOWED"
    assert httpx.request("HEAD", url, content=b"smuggled").status_code == 400

    sock = open_request(server, "GET", "/api/health/", chunked=True)
    assert_error(read_answer(sock, timeout=5), 400, "BODY_NOT_ALLOWED")

    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"Content-Length": "0"}).status_code == 200
    assert httpx.head(url).status_code == 200


# -- clients that trickle ---------------------------------------------------------------------


def test_a_client_that_stops_sending_its_body_is_dropped(courtyard_server) -> None:
    server = courtyard_server(entry_points=False, read_timeout=1)
    sock = open_request(
        server, "POST", "/api/plugins/upload", (f"Content-Type: {MULTIPART}",), length=100_000
    )
    sock.sendall(next(multipart_pieces(0)))
    began = time.monotonic()
    answer = read_answer(sock)
    assert_error(answer, 408, "REQUEST_TIMEOUT")
    assert 0.9 < time.monotonic() - began < 5
    assert closed_by_server(sock)
    assert [e["status"] for e in audited(server, "/api/plugins/upload")] == [408]


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_quiet_event_stream_outlives_the_read_timeout(courtyard_server) -> None:
    """The read timeout covers bodies only: a client listening quietly stays connected
    (Hypercorn's own read_timeout would have closed it)."""
    server = courtyard_server(entry_points=False, read_timeout=1)
    sock = open_request(server, "GET", "/api/stream")
    received = b""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.1)[0]:
            chunk = sock.recv(65536)
            assert chunk, f"the stream was closed: {received!r}"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    assert b"\r\n0\r\n\r\n" not in received  # the stream did not end


# -- the wrapper alone -------------------------------------------------------------------------


class FakeApp:
    """An ASGI application reading its whole body, then answering 200 (or answering at
    once, with `answer_first`)."""

    def __init__(self, answer_first: bool = False) -> None:
        self.answer_first = answer_first
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            self.seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if not self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def http_scope(method: str = "POST", path: str = "/x", length: int | None = None) -> dict:
    """An HTTP/1.1 request with a body: of `length` bytes, else chunked."""
    if length is None:
        headers = [(b"transfer-encoding", b"chunked")]
    else:
        headers = [(b"content-length", str(length).encode())]
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "headers": headers,
    }


async def run(limits: RequestLimits, scope: dict, chunks: list[bytes]) -> list[dict]:
    """Serve one request whose body is `chunks`; return what was sent."""
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    await limits(scope, receive, send)
    return sent


def settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


async def test_the_budget_is_given_back_when_each_request_ends() -> None:
    limits = RequestLimits(FakeApp(), settings(bodies_max_total_bytes=100))
    for _ in range(5):  # 5 x 80 bytes, one after the other: each fits
        sent = await run(limits, http_scope(), [b"x" * 40, b"x" * 40])
        assert sent[0]["status"] == 200
        assert limits.budget.used == 0
    sent = await run(limits, http_scope(length=80), [b"x" * 80])
    assert sent[0]["status"] == 200 and limits.budget.used == 0


async def test_a_body_beyond_the_budget_is_refused_and_the_app_answer_dropped() -> None:
    app = FakeApp()
    limits = RequestLimits(app, settings(bodies_max_total_bytes=100))
    limits.budget.take(60)  # another request's body, in flight
    scope = http_scope()
    sent = await run(limits, scope, [b"x" * 30, b"x" * 30, b"x" * 30])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "SERVER_BUSY"
    assert app.seen[-1] == {"type": "http.disconnect"}  # the app saw the client leave
    assert scope[REFUSED] == 503
    assert limits.budget.used == 60  # what this request took is given back


async def test_a_refusal_after_the_app_answered_only_ends_the_body() -> None:
    app = FakeApp(answer_first=True)
    limits = RequestLimits(app, settings(bodies_max_total_bytes=50))
    sent = await run(limits, http_scope(), [b"x" * 40, b"x" * 40])
    assert [m.get("status") for m in sent] == [200, None]  # the app's answer, alone
    assert app.seen[-1] == {"type": "http.disconnect"}


async def test_requests_served_by_an_app_keep_only_the_budget() -> None:
    app = FakeApp()
    big = REQUEST_MAX_BYTES + 10
    limits = RequestLimits(app, settings(), for_app=lambda scope: scope["path"] == "/app/")
    assert (await run(limits, http_scope(path="/app/", length=big), [b"x" * big]))[0][
        "status"
    ] == 200
    refused = await run(limits, http_scope(path="/core/", length=big), [b"x" * big])
    assert refused[0]["status"] == 413
    tight = RequestLimits(app, settings(bodies_max_total_bytes=big - 1), for_app=lambda s: True)
    assert (await run(tight, http_scope(path="/app/"), [b"x" * big]))[0]["status"] == 503


async def test_lifespan_and_websocket_pass_through() -> None:
    seen = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    limits = RequestLimits(app, settings())
    for kind in ("lifespan", "websocket"):
        await limits({"type": kind}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


# -- malformed request data: 400, never 500 (errors.py) -------------------------------------


@pytest.fixture
def parsing_app(tmp_path: Path) -> Quart:
    app = Quart(__name__)
    errors.install(app)

    @app.post("/json")
    async def read_json() -> dict:
        return {"type": type(await request.get_json()).__name__}

    @app.post("/text")
    async def read_text() -> dict:
        return {"length": len(await request.get_data(as_text=True))}

    @app.get("/files/<name>")
    async def stat_file(name: str) -> dict:
        return {"exists": (tmp_path / name).exists()}

    @app.get("/bug/recursion")
    async def recursion_bug() -> dict:
        raise RecursionError("maximum recursion depth exceeded")

    @app.get("/bug/decoding")
    async def decoding_bug() -> dict:
        return {"text": (tmp_path / "latin1.txt").read_bytes().decode()}

    @app.get("/bug/oserror")
    async def other_os_error() -> dict:
        raise OSError(errno.EACCES, "Permission denied")

    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    return app


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/json", b'{"name": "caf\xe9"}', "INVALID_ENCODING"),
        ("/text", b"\xff\xfe\xfd", "INVALID_ENCODING"),
        ("/json", b"[" * 100_000 + b"]" * 100_000, "NESTED_TOO_DEEPLY"),
        ("/json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "NESTED_TOO_DEEPLY"),
    ],
    ids=["json-latin1", "text-not-utf8", "deep-array", "deep-object"],
)
async def test_undecodable_request_data_is_400(
    parsing_app: Quart, path: str, body: bytes, code: str
) -> None:
    answer = await parsing_app.test_client().post(
        path, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert (await answer.get_json())["error"]["code"] == code


async def test_a_name_too_long_for_the_file_system_is_400(parsing_app: Quart) -> None:
    client = parsing_app.test_client()
    answer = await client.get("/files/" + "x" * 5000)
    assert answer.status_code == 400
    assert (await answer.get_json())["error"]["code"] == "NAME_TOO_LONG"
    assert (await (await client.get("/files/short")).get_json()) == {"exists": False}


@pytest.mark.parametrize("path", ["/bug/recursion", "/bug/decoding", "/bug/oserror"])
async def test_the_same_errors_outside_request_parsing_stay_500(
    parsing_app: Quart, path: str
) -> None:
    answer = await parsing_app.test_client().get(path)
    assert answer.status_code == 500
    assert (await answer.get_json())["error"]["code"] == "INTERNAL_ERROR"


@pytest.mark.parametrize(
    "body",
    [b'{"name": "caf\xe9", "roles": ["viewer"]}', b"[" * 100_000],
    ids=["not-utf8", "deep"],
)
async def test_core_routes_answer_malformed_json_with_400(courtyard, body: bytes) -> None:
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post(
        "/api/keys/", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] in ("INVALID_ENCODING", "NESTED_TOO_DEEPLY")


async def test_an_http1_request_without_a_body_is_passed_through_unwrapped() -> None:
    seen: list = []

    async def app(scope, receive, send) -> None:
        seen.append(receive)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    limits = RequestLimits(app, settings())
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/", "headers": []}
    await limits(scope, receive, None)
    await limits({**scope, "http_version": "2"}, receive, None)  # HTTP/2: maybe a body
    assert seen[0] is receive and seen[1] is not receive
