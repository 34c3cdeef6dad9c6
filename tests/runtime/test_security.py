"""The Host allow-list, the Origin check everywhere, request ids, and the error envelope
(Buntime's API)."""

import logging

import pytest
from courtyard.testing import write_plugin

ORIGIN = "http://localhost"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_state_changing_api_requests_need_a_matching_origin(courtyard, method):
    rt = await courtyard(entry_points=False)
    bare = {"Origin": ""}
    answer = await rt.client.request(method, "/api/plugins/reload", headers=bare)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "CSRF_FAILED"
    foreign = await rt.client.request(
        method, "/api/plugins/reload", headers={"Origin": "http://evil.test"}
    )
    assert foreign.status_code == 403
    assert "does not match" in foreign.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": ORIGIN},
        {"Origin": "HTTP://LOCALHOST:80"},
        {"Origin": "", "X-Buntime-Internal": "true"},
        {"Origin": "", "X-Courtyard-Internal": "TRUE"},
    ],
)
async def test_matching_origin_or_internal_header_passes(courtyard, headers):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post("/api/plugins/reload", headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "origin", ["http://localhost:8080", "https://localhost", "null", "localhost"]
)
async def test_near_miss_origins_fail(courtyard, origin):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post("/api/plugins/reload", headers={"Origin": origin})
    assert answer.status_code == 403


async def test_internal_header_must_say_true(courtyard):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post(
        "/api/plugins/reload", headers={"Origin": "", "X-Buntime-Internal": "1"}
    )
    assert answer.status_code == 403


FORM_PLUGIN = (
    "from courtyard_sdk import Blueprint, allow_without_origin, hookimpl\n"
    "from courtyard_sdk.identity import require\n"
    "from quart import websocket\n"
    "@hookimpl\ndef courtyard_routes(ctx):\n"
    "    bp = Blueprint('f', __name__)\n"
    "    bp.post('/submit')(lambda: {'ok': True})\n"
    "    @bp.post('/from-programs')\n"
    "    @allow_without_origin\n"
    "    async def programs():\n"
    "        return {'ok': True}\n"
    "    @bp.post('/guarded')\n"
    "    @require('forms:write')\n"
    "    async def guarded():\n"
    "        return {'ok': True}\n"
    "    @bp.websocket('/ws')\n"
    "    async def ws():\n"
    "        await websocket.accept()\n"
    "        await websocket.send('hi')\n"
    "    return bp\n"
)


async def test_plugin_writes_need_an_origin_unless_the_route_accepts_programs(
    courtyard, plugin_dir
):
    write_plugin(plugin_dir, "form", "", FORM_PLUGIN)
    rt = await courtyard(entry_points=False)
    bare = {"Origin": ""}
    assert (await rt.client.get("/api/plugins/", headers=bare)).status_code == 200
    assert (await rt.client.post("/form/submit")).status_code == 200  # the server's Origin
    refused = await rt.client.post("/form/submit", headers=bare)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "CSRF_FAILED"
    internal = {"Origin": "", "X-Courtyard-Internal": "true"}
    assert (await rt.client.post("/form/submit", headers=internal)).status_code == 200
    assert (await rt.client.post("/form/from-programs", headers=bare)).status_code == 200
    # A text/plain form post from another site, as a browser sends it, is refused on
    # every route, marked or not, internal header or not.
    for path in ("/form/submit", "/form/from-programs", "/api/plugins/reload"):
        for origin in ("https://evil.example", "null", "http://[bad", "http://localhost.evil"):
            answer = await rt.client.post(
                path,
                content="x=1",
                headers={
                    "Origin": origin,
                    "Content-Type": "text/plain",
                    "X-Courtyard-Internal": "true",
                },
            )
            assert answer.status_code == 403, (path, origin)
            assert answer.json()["error"]["code"] == "CSRF_FAILED"


async def test_protected_server_answers_401_before_any_csrf_403(courtyard, plugin_dir):
    write_plugin(plugin_dir, "form", "", FORM_PLUGIN)
    rt = await courtyard(entry_points=False)
    await rt.create_key(roles=["admin"])
    for path in ("/api/plugins/reload", "/form/guarded"):
        for headers in ({"Origin": ""}, {"Origin": "https://evil.example"}):
            answer = await rt.client.post(path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
            assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_websocket_handshakes_from_another_site_are_refused(courtyard, plugin_dir):
    from quart.testing import WebsocketResponseError

    write_plugin(plugin_dir, "form", "", FORM_PLUGIN)
    rt = await courtyard(entry_points=False)
    client = rt.dispatcher.current.app.test_client()
    async with client.websocket("/form/ws") as ws:  # a program: no Origin
        assert await ws.receive() == "hi"
    async with client.websocket("/form/ws", headers={"Origin": "ws://localhost"}) as ws:
        assert await ws.receive() == "hi"
    for origin in ("https://evil.example", "null"):
        with pytest.raises(WebsocketResponseError) as refused:
            async with client.websocket("/form/ws", headers={"Origin": origin}) as ws:
                await ws.receive()
        assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "",
        "local host",
        "localhost:notaport",
        "user@localhost",
        "localhost/path",
    ],
)
async def test_a_host_the_server_does_not_answer_to_is_misdirected(courtyard, host):
    rt = await courtyard(entry_points=False)
    for method, path in (("GET", "/api/health/"), ("POST", "/api/plugins/reload")):
        answer = await rt.client.request(
            method, path, headers={"Host": host, "X-Courtyard-Internal": "true"}
        )
        assert answer.status_code == 421, (host, path)
        assert answer.json()["error"]["code"] == "MISDIRECTED_REQUEST"
        assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:8000", "127.0.0.1:9", "[::1]:8000", "app.localhost"]
)
async def test_loopback_names_are_served(courtyard, host):
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/api/health/", headers={"Host": host})).status_code == 200


async def test_allowed_hosts_extend_the_list(courtyard):
    rt = await courtyard(entry_points=False, allowed_hosts=["courtyard.example", ".corp.example"])
    for host in ("courtyard.example", "courtyard.example.:443", "corp.example", "a.b.corp.example"):
        answer = await rt.client.get("/api/health/", headers={"Host": host})
        assert answer.status_code == 200, host
    answer = await rt.client.get("/api/health/", headers={"Host": "xcorp.example"})
    assert answer.status_code == 421


def test_the_host_check_holds_on_a_real_server(courtyard_server):
    import httpx

    server = courtyard_server()
    assert httpx.get(f"{server.url}/api/health/").status_code == 200
    rebound = httpx.get(f"{server.url}/api/health/", headers={"Host": "rebind.evil.example"})
    assert rebound.status_code == 421


async def test_app_state_changes_from_another_site_are_refused(courtyard, tmp_path):
    site = tmp_path / "apps" / "site" / "1.0.0"
    site.mkdir(parents=True)
    (site / "package.json").write_text('{"name": "site", "version": "1.0.0"}')
    (site / "index.html").write_text("<h1>site</h1>")
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/site/", headers={"Origin": "https://evil.example"})).is_success
    answer = await rt.client.post("/site/", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "CSRF_FAILED"
    assert answer.headers["x-request-id"]
    # Same site, or a program without Origin: the app itself answers.
    assert (await rt.client.post("/site/")).status_code == 405
    assert (await rt.client.post("/site/", headers={"Origin": ""})).status_code == 405


async def test_request_id_is_echoed_or_generated(courtyard, caplog):
    rt = await courtyard(entry_points=False)
    echoed = await rt.client.get("/api/health/", headers={"X-Request-Id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    one = (await rt.client.get("/api/health/")).headers["x-request-id"]
    two = (await rt.client.get("/api/health/")).headers["x-request-id"]
    assert one and two and one != two
    bad = await rt.client.get("/api/health/", headers={"X-Request-Id": "x" * 500})
    assert len(bad.headers["x-request-id"]) == 32
    for path in ("/nowhere", "/api/plugins/reload"):
        assert (await rt.client.get(path)).headers["x-request-id"]


async def test_log_lines_carry_the_request_id(courtyard, plugin_dir, caplog):
    from courtyard.logs import RequestIdFilter

    write_plugin(
        plugin_dir,
        "talker",
        "",
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('t', __name__)\n"
        "    @bp.get('/')\n"
        "    async def talk():\n"
        "        ctx.logger.warning('talking')\n"
        "        return {}\n"
        "    return bp\n",
    )
    rt = await courtyard(entry_points=False)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING):
        await rt.client.get("/talker/", headers={"X-Request-Id": "req-7"})
    record = next(r for r in caplog.records if r.getMessage() == "talking")
    assert record.request_id == "req-7"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nothing", 404, "NOT_FOUND"),
        ("GET", "/nothing/at/all", 404, "NOT_FOUND"),
        ("PUT", "/api/health/", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/boom/", 500, "INTERNAL_ERROR"),
        ("GET", "/boom/api-error", 409, "CONFLICTED"),
    ],
)
async def test_errors_use_the_envelope(courtyard, plugin_dir, method, path, status, code):
    write_plugin(
        plugin_dir,
        "boom",
        "",
        "from courtyard_sdk import ApiError, Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('b', __name__)\n"
        "    @bp.get('/')\n"
        "    async def fail():\n"
        "        raise RuntimeError('secret detail')\n"
        "    @bp.get('/api-error')\n"
        "    async def api_error():\n"
        "        raise ApiError(409, 'CONFLICTED', 'already there')\n"
        "    return bp\n",
    )
    rt = await courtyard(entry_points=False)
    answer = await rt.client.request(method, path)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert "secret detail" not in answer.text
    assert "Traceback" not in answer.text


async def test_well_known_points_at_the_api(courtyard):
    from courtyard import __version__

    rt = await courtyard(entry_points=False)
    answer = await rt.client.get("/.well-known/courtyard")
    assert answer.json() == {"api": "/api", "version": __version__}
