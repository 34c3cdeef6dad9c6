"""`courtyard serve --server granian|hypercorn --loop uvloop|asyncio`: real servers on
loopback ports, put through what the runtime needs of its HTTP server
(docs/configuration.md#server-loop).

Most checks are the real-server tests of the other modules (end to end, request limits,
events, apps, `courtyard dev`), which run on the default server (granian), run again
here on the other one: the `courtyard_server` fixture is overridden so that every
server started in this module runs on Hypercorn unless the test names another, and is
checked to be the server named (its `server` header) before the test goes on. The rest
are checks of their own, on granian: the request path's Host, Origin and request id;
WebSocket refusals; uvloop; the gateway's trusted proxies; a taken port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_dev as dev
import test_end_to_end as end_to_end
import test_events as events
import test_example_apps as example_apps
import test_limits as limits
from courtyard.servers.denials import whole_denials
from courtyard.servers.inflight import InFlight
from courtyard.servers.lifespan import Lifespan
from courtyard.testing import Server, free_port, write_plugin
from courtyard_sdk import StartupError
from servers import serve_on_taken_port

INTERNAL = {"X-Courtyard-Internal": "true"}

LOOP_PLUGIN = """
import asyncio
from courtyard_sdk import Blueprint, hookimpl

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("loop", __name__)

    @bp.get("/")
    async def which():
        return {"loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}

    return bp
"""


@pytest.fixture
def courtyard_server(courtyard_server: Callable[..., Server]) -> Callable[..., Server]:
    """`courtyard serve` as the shared fixture starts it, on Hypercorn unless the test
    names another `server`; the server named is checked to be the one serving."""

    def start(**settings: Any) -> Server:
        settings.setdefault("server", "hypercorn")
        server = courtyard_server(**settings)
        served_by = httpx.get(f"{server.url}/api/health/live").headers.get("server", "")
        expected = "granian" if settings["server"] == "granian" else "hypercorn"
        assert served_by.startswith(expected), served_by
        return server

    return start


@pytest.fixture
def feed_plugin(plugin_dir: Path) -> Path:
    """The events module's plugin: SSE and WebSocket routes on the event bus."""
    return write_plugin(plugin_dir, "feed", 'base = "/feed"\n', events.FEED)


# -- the request path: checks of this module, on by default -----------------------------------


def test_granian_serves_the_request_path(courtyard_server, add_fixture_plugins, plugin_dir) -> None:
    """The default server and loop (granian, uvloop) through the request path."""
    add_fixture_plugins("hello")
    write_plugin(plugin_dir, "loop", "", LOOP_PLUGIN)
    server = courtyard_server(server="granian", entry_points=False, upload_max_bytes=limits.MiB)
    assert httpx.get(f"{server.url}/loop/").json() == {"loop": "uvloop"}
    live = httpx.get(f"{server.url}/api/health/live", headers={"X-Request-Id": "probe-1"})
    assert live.json()["status"] == "live" and live.headers["x-request-id"] == "probe-1"
    assert len(httpx.get(f"{server.url}/api/health/").headers["x-request-id"]) == 32
    assert httpx.get(f"{server.url}/hello/").json() == {"message": "hello"}  # a plugin route
    # Host: a name the server does not answer to is misdirected, before anything runs.
    misdirected = httpx.get(f"{server.url}/hello/", headers={"Host": "evil.example"})
    assert misdirected.status_code == 421
    assert misdirected.json()["error"]["code"] == "MISDIRECTED_REQUEST"
    # Origin: state changes need the server's own origin, or the internal header.
    reload = f"{server.url}/api/plugins/reload"
    assert httpx.post(reload).json()["error"]["code"] == "CSRF_FAILED"
    assert httpx.post(reload, headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(reload, headers={"Origin": server.url}).status_code == 200
    assert httpx.post(reload, headers=INTERNAL).status_code == 200
    # Body limits: GET carries none, a declared length over the limit is refused unread.
    with_body = httpx.request("GET", f"{server.url}/api/health/", content=b"smuggled")
    assert with_body.json()["error"]["code"] == "BODY_NOT_ALLOWED"
    sock = limits.open_request(
        server,
        "POST",
        "/api/plugins/upload",
        (f"Content-Type: {limits.MULTIPART}",),
        length=500 * limits.MiB,
    )
    limits.assert_error(limits.read_answer(sock, timeout=5), 413, "ARCHIVE_TOO_LARGE")
    assert limits.closed_by_server(sock)


@pytest.mark.parametrize(
    ("server_name", "loop"),
    [
        # The default pair is covered by default in test_end_to_end.py.
        pytest.param("granian", "uvloop", marks=pytest.mark.slow),
        ("hypercorn", "asyncio"),
    ],
)
async def test_sigterm_finishes_in_flight_requests_then_shuts_down(
    courtyard_server, plugin_dir, add_fixture_plugins, server_name: str, loop: str
) -> None:
    """On the default pair and on the other: in-flight requests finish, then the
    lifespan shutdown runs the shutdown hooks once."""

    def start(**settings: Any) -> Server:
        return courtyard_server(server=server_name, loop=loop, **settings)

    await end_to_end.test_sigterm_finishes_in_flight_requests_then_shuts_down(
        start, plugin_dir, add_fixture_plugins
    )


@pytest.mark.slow  # by default, test_exposure.py checks the same on the default server
def test_granian_refuses_a_public_address_without_binding(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "courtyard", "serve", "--server", "granian"),
            *("--host", "0.0.0.0"),
            *("--port", str(free_port()), "--data-dir", str(tmp_path / "data")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COURTYARD_ENTRY_POINTS": "0"},
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert "Starting granian" not in done.stderr  # it never started, let alone bound
    assert "serving on" not in done.stderr


@pytest.mark.slow
def test_granian_on_a_taken_port_exits_with_the_cause(tmp_path: Path) -> None:
    done = serve_on_taken_port(tmp_path, "--server", "granian")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "granian cannot serve" in done.stderr
    assert "Address already in use" in done.stderr or "in use" in done.stderr


@pytest.mark.parametrize(
    ("server_name", "loop", "module"),
    [
        pytest.param("granian", None, "uvloop", marks=pytest.mark.slow),  # the default loop
        pytest.param("granian", "asyncio", "asyncio", marks=pytest.mark.slow),
        pytest.param("hypercorn", "uvloop", "uvloop", marks=pytest.mark.slow),
        pytest.param("hypercorn", "asyncio", "asyncio", marks=pytest.mark.slow),
    ],
)
def test_the_loop_setting_picks_the_event_loop(
    courtyard_server, plugin_dir, server_name: str | None, loop: str | None, module: str
) -> None:
    write_plugin(plugin_dir, "loop", "", LOOP_PLUGIN)
    chosen = {"server": server_name, "loop": loop}
    server = courtyard_server(entry_points=False, **{k: v for k, v in chosen.items() if v})
    assert httpx.get(f"{server.url}/loop/").json() == {"loop": module}
    assert server.stop() == 0


# -- the other modules' real-server tests, on granian (slow) ---------------------------------


@pytest.mark.slow
async def test_hypercorn_reloads_under_load_drop_nothing(
    courtyard_server, add_fixture_plugins, plugin_dir
) -> None:
    await end_to_end.test_twenty_reloads_under_load_drop_nothing(
        courtyard_server, add_fixture_plugins, plugin_dir
    )


@pytest.mark.slow
def test_hypercorn_strict_start_failure_exits_with_the_cause(
    courtyard_server, add_fixture_plugins
) -> None:
    end_to_end.test_strict_start_failure_exits_non_zero_with_the_cause(
        courtyard_server, add_fixture_plugins
    )


@pytest.mark.slow
def test_hypercorn_ready_waits_for_slow_startup_hooks(courtyard_server, plugin_dir) -> None:
    end_to_end.test_ready_waits_for_slow_startup_hooks(courtyard_server, plugin_dir)


@pytest.mark.slow
def test_hypercorn_json_logs(courtyard_server) -> None:
    end_to_end.test_json_logs(courtyard_server)


@pytest.mark.slow
def test_hypercorn_serves_courtyard_dev(courtyard_server, tmp_path) -> None:
    """`courtyard dev --server granian`: reloads on save, drops nothing meanwhile."""
    dev.test_dev_reloads_on_save_shows_a_broken_save_and_drops_nothing(courtyard_server, tmp_path)


@pytest.mark.slow
async def test_hypercorn_streams_server_sent_events(courtyard_server, feed_plugin) -> None:
    await events.test_sse_streams_events_and_resumes_with_last_event_id(
        courtyard_server, feed_plugin
    )
    await events.test_sse_sends_heartbeats_envelopes_and_transforms(courtyard_server, feed_plugin)


@pytest.mark.slow
async def test_hypercorn_reloads_and_stops_end_open_streams(courtyard_server, feed_plugin) -> None:
    await events.test_a_reload_ends_streams_and_clients_resume_on_the_new_generation(
        courtyard_server, feed_plugin
    )
    await events.test_stopping_the_server_ends_open_streams_at_once(courtyard_server, feed_plugin)


@pytest.mark.slow
async def test_hypercorn_serves_websockets(courtyard_server, feed_plugin) -> None:
    """Messages both ways, the close code of a reload, and a plugin's refusal (400)."""
    await events.test_websocket_streams_events_and_resumes(courtyard_server, feed_plugin)


@pytest.mark.slow
@pytest.mark.parametrize("server_name", ["granian", "hypercorn"])
async def test_websocket_handshakes_are_refused_with_the_runtime_answer(
    courtyard_server, feed_plugin, server_name: str
) -> None:
    """Host and Origin refusals of a handshake are HTTP answers with the error envelope,
    the same on both servers (granian takes a denial's body in one piece only:
    servers/denials.py)."""
    server = courtyard_server(entry_points=False, server=server_name)
    port = events.port_of(server)
    for headers, status, code in (
        ({"Host": "evil.example"}, 421, "MISDIRECTED_REQUEST"),
        ({"Origin": "https://evil.example"}, 403, "CSRF_FAILED"),
    ):
        refused = await handshake(port, "/feed/ws", headers)
        assert refused[0] == status, refused
        assert json.loads(refused[1])["error"]["code"] == code


async def handshake(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
    """Open a WebSocket handshake with `headers` (Host among them) and read the refusal:
    its status, body and request id."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    writer.write("\r\n".join(lines).encode())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
        fields: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    finally:
        writer.close()
    return int(status_line.split()[1]), body, fields.get("x-request-id", "")


@pytest.mark.slow
async def test_hypercorn_serves_static_and_asgi_apps(courtyard_server) -> None:
    await example_apps.test_example_apps_serve_through_the_runtime(courtyard_server)


@pytest.mark.slow
def test_hypercorn_refuses_bodies_over_their_limits_while_they_stream(
    courtyard_server, plugin_dir, tmp_path
) -> None:
    limits.test_a_chunked_upload_far_over_the_limit_is_refused_while_it_streams(
        courtyard_server, tmp_path, "/api/plugins/upload"
    )
    limits.test_a_plugin_route_cannot_read_beyond_the_request_limit(courtyard_server, plugin_dir)


@pytest.mark.slow
def test_hypercorn_bodies_in_flight_share_the_budget(courtyard_server, tmp_path) -> None:
    limits.test_declared_bodies_in_flight_share_the_budget(courtyard_server)
    limits.test_streamed_bodies_in_flight_share_the_budget(courtyard_server, tmp_path)


@pytest.mark.slow
def test_hypercorn_drops_trickling_bodies_and_keeps_quiet_streams(courtyard_server) -> None:
    limits.test_a_client_that_stops_sending_its_body_is_dropped(courtyard_server)
    limits.test_a_quiet_event_stream_outlives_the_read_timeout(courtyard_server)


@pytest.mark.slow
def test_granian_gives_the_gateway_the_peer_address(courtyard_server) -> None:
    """Trusted proxies (the gateway plugin): `X-Forwarded-For` counts from a trusted
    peer only, so the peer address granian reports must be the client's."""
    rule = {"path": "/api/health/live", "limit": 1, "per": 60, "key": "ip"}

    def limited(trusted: list[str]) -> list[int]:
        gateway = {"gateway": {"rules": [rule], "trusted_proxies": trusted}}
        server = courtyard_server(server="granian", only_plugins=["gateway"], plugins=gateway)
        url = f"{server.url}/api/health/live"
        statuses = []
        for forwarded in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
            statuses.append(httpx.get(url, headers={"X-Forwarded-For": forwarded}).status_code)
        server.stop()
        return statuses

    # Behind a trusted proxy (this test, on 127.0.0.1): one bucket per forwarded address.
    # The fixture's own check took the first token of the peer's bucket.
    assert limited(["127.0.0.1"]) == [200, 200, 429]
    # From an untrusted peer the header is ignored: the peer's one token is gone.
    assert limited(["10.0.0.0/8"]) == [429, 429, 429]


@pytest.mark.slow
@pytest.mark.parametrize("server_name", ["granian", "hypercorn"])
def test_a_connection_that_sends_no_head_is_closed(courtyard_server, server_name: str) -> None:
    """A request head must arrive within 5 s, also on a connection that sends nothing at
    all (granian, left to detect HTTP/2, would wait forever: HTTP/1 only)."""
    server = courtyard_server(entry_points=False, server=server_name)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    for first in (b"", b"GET /api/health/live HTTP/1.1\r\n"):
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(first)
            opened = time.monotonic()
            assert limits.closed_by_server(sock, timeout=15)
            assert 4 < time.monotonic() - opened < 10


@pytest.mark.slow
async def test_granian_stops_promptly_when_idle(courtyard_server) -> None:
    """Idle keep-alive connections do not hold a stop for `drain_timeout`."""
    server = courtyard_server(server="granian", entry_points=False, drain_timeout=60)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/api/health/live")).status_code == 200  # kept alive
        started = time.monotonic()
        stopped = await asyncio.get_running_loop().run_in_executor(None, server.stop)
    assert stopped == 0
    assert time.monotonic() - started < 10


# -- the pieces granian is wrapped in (servers/), alone ----------------------------------------


async def test_websocket_denials_reach_granian_in_one_piece() -> None:
    async def refusing(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "websocket.http.response.start", "status": 400, "headers": []})
        for piece in (b'{"error": ', b'"no"}'):
            await send({"type": "websocket.http.response.body", "body": piece, "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"", "more_body": False})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    served = InFlight(refusing, websocket_send=whole_denials)
    await served({"type": "websocket"}, None, send)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[1]["body"] == b'{"error": "no"}' and sent[1]["more_body"] is False
    sent.clear()
    await served({"type": "http"}, None, send)
    assert len(sent) == 4  # HTTP passes untouched


async def test_in_flight_requests_are_waited_for_up_to_the_timeout() -> None:
    release = asyncio.Event()

    async def slow(scope: dict, receive: Any, send: Any) -> None:
        await release.wait()

    inflight = InFlight(slow)
    assert await inflight.drained(0)  # nothing in flight
    request = asyncio.create_task(inflight({"type": "http"}, None, None))
    await asyncio.sleep(0)
    assert inflight.active == 1
    assert not await inflight.drained(0.05)
    release.set()
    assert await inflight.drained(1)
    await request
    # Once more, with two waiting: a drain that came before is no answer for new requests.
    release.clear()
    again = asyncio.create_task(inflight({"type": "http"}, None, None))
    await asyncio.sleep(0)
    assert not await inflight.drained(0.05)
    waiting = [asyncio.create_task(inflight.drained(1)) for _ in range(2)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [True, True]
    await again


async def test_a_failed_lifespan_start_refuses_the_start() -> None:
    async def failing(scope: dict, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(StartupError, match="no database"):
        await Lifespan(failing).startup()

    async def raising(scope: dict, receive: Any, send: Any) -> None:
        raise RuntimeError("broken app")

    with pytest.raises(RuntimeError, match="broken app"):
        await Lifespan(raising).startup()
