"""CSRF by Origin, request ids, and the error envelope (seed 000)."""

import logging

import pytest
from courtyard_sdk.testing import write_plugin

ORIGIN = "http://courtyard.test"


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
        {"Origin": "HTTP://COURTYARD.TEST:80"},
        {"Origin": "", "X-Buntime-Internal": "true"},
        {"Origin": "", "X-Courtyard-Internal": "TRUE"},
    ],
)
async def test_matching_origin_or_internal_header_passes(courtyard, headers):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post("/api/plugins/reload", headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "origin", ["http://courtyard.test:8080", "https://courtyard.test", "null", "courtyard.test"]
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


async def test_reads_and_non_api_writes_need_no_origin(courtyard, plugin_dir):
    write_plugin(
        plugin_dir,
        "form",
        "",
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('f', __name__)\n"
        "    bp.post('/submit')(lambda: {'ok': True})\n"
        "    return bp\n",
    )
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/api/plugins/", headers={"Origin": ""})).status_code == 200
    assert (await rt.client.post("/form/submit", headers={"Origin": ""})).status_code == 200


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
