"""The audit log: mutating requests and plugins' domain events recorded off the request
path, read back through `GET /api/audit/` and `courtyard audit list`, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from courtyard.services import audit as audit_module
from courtyard.services.audit import AuditLog
from courtyard.services.audit_entries import TABLE, AuditEntry
from courtyard.services.database import Database
from courtyard.settings import Settings
from courtyard.testing import write_plugin
from sqlalchemy import insert, select

NOTES = """
import asyncio

from courtyard_sdk import ApiError, Blueprint, hookimpl
from courtyard_sdk.identity import ANONYMOUS, G_ATTRIBUTE, Identity, require
from quart import g, request, websocket


@hookimpl
def courtyard_startup(ctx):
    async def started():
        await ctx.audit.record("notes.started", details={"outside": "a request"})
    return started()


@hookimpl
def courtyard_request(ctx, request):
    # Stands in for the runtime's authentication: who calls comes from test headers.
    who = request.headers.get("X-Test-Identity")
    if who == "anonymous":
        setattr(g, G_ATTRIBUTE, ANONYMOUS)
    elif who:
        subject, _, tenant = who.partition("@")
        permissions = request.headers.get("X-Test-Permissions", "*").split(",")
        setattr(g, G_ATTRIBUTE, Identity(
            subject=subject, kind="token", tenant_id=tenant or None,
            permissions=frozenset(permissions),
        ))


@hookimpl
def courtyard_response(ctx, request, response):
    if request.path == "/notes/hook-fails":
        raise RuntimeError("a response hook that always fails")
    if request.path == "/notes/hook-fails-once" and not hasattr(g, "failed_once"):
        g.failed_once = True
        raise RuntimeError("a response hook that fails once")


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.post("/<name>")
    async def add(name):
        return {"name": name}, 201

    @bp.put("/item/<int:number>")
    async def put(number):
        return {"number": number}

    @bp.post("/guarded")
    @require("notes:write")
    async def guarded():
        return {"ok": True}

    @bp.post("/bad")
    async def bad():
        raise ApiError(400, "BAD_NOTE", "this note is bad")

    @bp.post("/boom")
    async def boom():
        raise RuntimeError("boom")

    @bp.post("/slow")
    async def slow():
        await asyncio.sleep(30)
        return {"slept": True}

    @bp.post("/event")
    async def event():
        body = await request.get_json()
        await ctx.audit.record(
            body["action"], target=body.get("target"), details=body.get("details")
        )
        return {"recorded": True}

    @bp.websocket("/live")
    async def live():
        await websocket.accept()
        await ctx.audit.record("notes.watched", target="all")
        await websocket.send("watching")
        await websocket.receive()

    @bp.get("/")
    async def index():
        return {"notes": []}

    return bp
"""


def alice(tenant: str | None = "t1", permissions: str = "*") -> dict[str, str]:
    who = "alice" + (f"@{tenant}" if tenant else "")
    return {"X-Test-Identity": who, "X-Test-Permissions": permissions}


@pytest.fixture
def notes(plugin_dir):
    write_plugin(plugin_dir, "notes", 'base = "/notes"\n', NOTES)


async def start(courtyard, database_url, **settings):
    return await courtyard(entry_points=False, database_url=database_url, **settings)


async def rows(rt) -> list[dict[str, Any]]:
    """Every entry written so far, oldest first, straight from the table."""
    await rt.dispatcher.services.audit.flush()
    async with rt.dispatcher.services.database.engine.connect() as connection:
        result = await connection.execute(select(TABLE).order_by(TABLE.c.id))
        return [dict(row) for row in result.mappings()]


async def read_table(url: str) -> list[dict[str, Any]]:
    database = Database(url)
    try:
        async with database.engine.connect() as connection:
            result = await connection.execute(select(TABLE).order_by(TABLE.c.id))
            return [dict(row) for row in result.mappings()]
    finally:
        await database.close()


async def listing(rt, **params: Any) -> dict[str, Any]:
    headers = params.pop("headers", None)
    answer = await rt.client.get("/api/audit/", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


# Recording requests ------------------------------------------------------------------------


async def test_post_to_a_core_route_is_recorded_with_every_field(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    before = datetime.now(UTC)
    answer = await rt.client.post(
        "/api/plugins/reload", headers={**alice(), "X-Request-Id": "req-core-1"}
    )
    assert answer.status_code == 200
    (entry,) = [r for r in await rows(rt) if r["kind"] == "request"]
    assert entry["identity"] == "alice"
    assert entry["identity_kind"] == "token"
    assert entry["tenant"] == "t1"
    assert entry["method"] == "POST"
    assert entry["path"] == "/api/plugins/reload"
    assert entry["route"] == "/api/plugins/reload"
    assert entry["plugin"] is None  # a core route
    assert entry["status"] == 200
    assert entry["request_id"] == "req-core-1"
    assert entry["action"] is None and entry["target"] is None and entry["details"] is None
    assert before <= entry["time"] <= datetime.now(UTC)
    assert entry["time"].tzinfo is not None


async def test_requests_to_a_plugin_route_are_recorded(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    assert (await rt.client.post("/notes/first", headers=alice(None))).status_code == 201
    assert (await rt.client.put("/notes/item/7", headers=alice(None))).status_code == 200
    assert (await rt.client.delete("/notes/item/7")).status_code == 405
    requests = [r for r in await rows(rt) if r["kind"] == "request"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/notes/first", 201),
        ("PUT", "/notes/item/7", 200),
        ("DELETE", "/notes/item/7", 405),
    ]
    post, put, _ = requests
    assert post["route"] == "/notes/<name>" and post["plugin"] == "notes"
    assert put["route"] == "/notes/item/<int:number>" and put["plugin"] == "notes"
    assert post["tenant"] is None and post["identity"] == "alice"
    # Each request's own generated id, as its answer said.
    assert len({r["request_id"] for r in requests}) == 3


async def test_reads_are_not_recorded(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    for method in ("GET", "HEAD", "OPTIONS"):
        await rt.client.request(method, "/notes/")
        await rt.client.request(method, "/api/plugins/")
    await rt.client.get("/api/audit/")
    await rt.client.get("/nowhere")
    assert [r for r in await rows(rt) if r["kind"] == "request"] == []


async def test_failed_requests_are_recorded_with_their_status(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    assert (await rt.client.post("/no/such/path")).status_code == 404
    assert (await rt.client.post("/notes/bad")).status_code == 400
    assert (await rt.client.post("/notes/boom")).status_code == 500
    csrf = await rt.client.post("/api/plugins/reload", headers={"Origin": "http://evil.test"})
    assert csrf.status_code == 403
    assert (await rt.client.put("/api/plugins/reload")).status_code == 405
    requests = [r for r in await rows(rt) if r["kind"] == "request"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/no/such/path", 404),
        ("POST", "/notes/bad", 400),
        ("POST", "/notes/boom", 500),
        ("POST", "/api/plugins/reload", 403),
        ("PUT", "/api/plugins/reload", 405),
    ]
    missing = requests[0]
    assert missing["route"] is None and missing["plugin"] is None
    assert requests[1]["plugin"] == "notes" and requests[2]["plugin"] == "notes"


async def test_refusals_by_require_are_recorded(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    weak = await rt.client.post("/notes/guarded", headers=alice(permissions="notes:read"))
    assert weak.status_code == 403
    nobody = await rt.client.post("/notes/guarded", headers={"X-Test-Identity": "anonymous"})
    assert nobody.status_code == 401
    strong = await rt.client.post("/notes/guarded", headers=alice(permissions="notes:write"))
    assert strong.status_code == 200
    requests = [r for r in await rows(rt) if r["kind"] == "request"]
    assert [(r["identity"], r["identity_kind"], r["status"]) for r in requests] == [
        ("alice", "token", 403),
        ("anonymous", "anonymous", 401),
        ("alice", "token", 200),
    ]


async def test_a_failing_response_hook_still_leaves_one_entry(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    # Quart finalises the 500 again after the hook raised; the second time it passes.
    once = await rt.client.post("/notes/hook-fails-once")
    assert once.status_code == 500
    # This one raises both times: Quart gives up on after-request functions; the
    # teardown function records the request.
    always = await rt.client.post("/notes/hook-fails")
    assert always.status_code == 500
    requests = [r for r in await rows(rt) if r["kind"] == "request"]
    assert [(r["path"], r["status"]) for r in requests] == [
        ("/notes/hook-fails-once", 500),
        ("/notes/hook-fails", 500),
    ]


async def test_a_request_whose_client_went_away_is_recorded_as_499(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    disconnect = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append({"type": "http.request"})
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/notes/slow",
        "raw_path": b"/notes/slow",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"origin", b"http://localhost"),
            (b"x-request-id", b"gone-1"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    call = asyncio.create_task(rt.dispatcher(scope, receive, send))
    await asyncio.sleep(0.2)  # the handler is sleeping now
    disconnect.set()
    await asyncio.wait_for(call, 5)
    (entry,) = [r for r in await rows(rt) if r["kind"] == "request"]
    assert (entry["path"], entry["status"], entry["request_id"]) == ("/notes/slow", 499, "gone-1")


async def test_odd_characters_in_a_path_do_not_stop_the_writer(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    assert (await rt.client.post("/nul%00here")).status_code == 404
    assert (await rt.client.post("/notes/after")).status_code == 201
    paths = [r["path"] for r in await rows(rt) if r["kind"] == "request"]
    assert paths == ["/nul\ufffdhere", "/notes/after"]


# Domain events ----------------------------------------------------------------------------


async def test_plugins_record_domain_events(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    answer = await rt.client.post(
        "/notes/event",
        json={"action": "note.shared", "target": "note-42", "details": {"with": ["bob"]}},
        headers={**alice(), "X-Request-Id": "req-event"},
    )
    assert answer.status_code == 200
    entries = await rows(rt)
    started, event, request = entries
    assert started["kind"] == "event" and started["action"] == "notes.started"
    assert started["plugin"] == "notes"
    assert started["identity"] is None and started["request_id"] is None
    assert started["details"] == {"outside": "a request"}
    assert event["kind"] == "event"
    assert (event["action"], event["target"]) == ("note.shared", "note-42")
    assert event["details"] == {"with": ["bob"]}
    assert event["plugin"] == "notes"
    assert (event["identity"], event["tenant"]) == ("alice", "t1")
    assert event["request_id"] == "req-event"
    assert (event["method"], event["path"], event["status"]) == ("POST", "/notes/event", None)
    assert request["kind"] == "request" and request["request_id"] == "req-event"


async def test_plugins_record_domain_events_from_a_websocket(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    closed = asyncio.Event()
    received: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not received:
            received.append({})
            return {"type": "websocket.connect"}
        await closed.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            closed.set()

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/notes/live",
        "raw_path": b"/notes/live",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
    }
    await asyncio.wait_for(rt.dispatcher(scope, receive, send), 5)
    (entry,) = [r for r in await rows(rt) if r["action"] == "notes.watched"]
    assert (entry["kind"], entry["plugin"], entry["target"]) == ("event", "notes", "all")
    assert (entry["path"], entry["route"], entry["method"]) == ("/notes/live", "/notes/live", None)
    assert [r for r in await rows(rt) if r["kind"] == "request"] == []


@pytest.mark.parametrize(
    ("action", "target", "details", "error"),
    [
        ("", None, None, ValueError),
        ("x" * 129, None, None, ValueError),
        ("bad\naction", None, None, ValueError),
        (42, None, None, TypeError),
        ("ok", "t" * 1025, None, ValueError),
        ("ok", 7, None, TypeError),
        ("ok", None, ["not", "a", "mapping"], TypeError),
        ("ok", None, {"when": datetime.now(UTC)}, TypeError),
        ("ok", None, {"x": float("nan")}, ValueError),
        ("ok", None, {"big": "x" * 70_000}, ValueError),
    ],
)
async def test_bad_domain_events_are_refused_at_once(
    courtyard, plugin_dir, action, target, details, error
):
    rt = await courtyard(entry_points=False)
    audit = rt.dispatcher.services.audit.for_plugin("notes")
    with pytest.raises(error):
        await audit.record(action, target=target, details=details)
    assert await rows(rt) == []


async def test_details_are_copied_when_recorded(courtyard, plugin_dir):
    rt = await courtyard(entry_points=False)
    details: dict[str, Any] = {"items": [1]}
    await rt.dispatcher.services.audit.for_plugin("notes").record("x.y", details=details)
    details["items"].append(2)
    (entry,) = await rows(rt)
    assert entry["details"] == {"items": [1]}


# Reading: filters, tenants, pagination ----------------------------------------------------


async def seed(rt) -> None:
    """A known set of entries: requests by two identities in two tenants, and events."""
    for path, who in [
        ("/notes/a", alice("t1")),
        ("/notes/b", alice("t2")),
        ("/no/where", {"X-Test-Identity": "bob@t1"}),
        ("/notes/bad", {"X-Test-Identity": "bob@t2"}),
    ]:
        await rt.client.post(path, headers=who)
    await rt.client.post(
        "/notes/event", json={"action": "note.shared", "target": "n1"}, headers=alice("t1")
    )
    await rt.dispatcher.services.audit.flush()


async def test_listing_is_newest_first_with_every_field(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    await seed(rt)
    body = await listing(rt)
    assert body["next_cursor"] is None
    entries = body["entries"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert len(entries) == 7  # the startup event, 5 requests, the shared note
    # The event is queued while its request runs, the request once it is answered.
    request, event = entries[0], entries[1]
    assert set(event) == {
        "id", "time", "kind", "identity", "identity_kind", "tenant", "method", "path",
        "route", "plugin", "status", "request_id", "action", "target", "details",
    }  # fmt: skip
    assert request["kind"] == "request" and request["path"] == "/notes/event"
    assert event["action"] == "note.shared" and event["request_id"] == request["request_id"]
    assert event["time"].endswith("Z")
    datetime.fromisoformat(event["time"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"identity": "bob"}, ["/notes/bad", "/no/where"]),
        ({"tenant": "t2"}, ["/notes/bad", "/notes/b"]),
        ({"kind": "event"}, ["note.shared", "notes.started"]),
        ({"kind": "request", "method": "post", "status": "404"}, ["/no/where"]),
        ({"status": "4xx"}, ["/notes/bad", "/no/where"]),
        ({"status": "2XX", "identity": "alice"}, ["/notes/event", "/notes/b", "/notes/a"]),
        (
            {"path": "/notes/", "kind": "request"},
            ["/notes/event", "/notes/bad", "/notes/b", "/notes/a"],
        ),
        ({"path": "/NOTES/"}, []),
        ({"path": "/notes/_"}, []),
        ({"path": "/no%"}, []),
        ({"path": "/no/"}, ["/no/where"]),
        ({"action": "note.shared"}, ["note.shared"]),
        ({"plugin": "notes", "identity": "bob"}, ["/notes/bad"]),
    ],
)
async def test_filters(courtyard, database_url, notes, params, expected):
    rt = await start(courtyard, database_url)
    await seed(rt)
    entries = (await listing(rt, **params))["entries"]
    assert [e["action"] or e["path"] for e in entries] == expected


async def test_request_id_and_time_filters(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    await rt.client.post("/notes/early", headers={"X-Request-Id": "early"})
    await rt.dispatcher.services.audit.flush()
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await rt.client.post("/notes/late", headers={"X-Request-Id": "late"})
    await rt.dispatcher.services.audit.flush()
    only = (await listing(rt, request_id="early"))["entries"]
    assert [e["path"] for e in only] == ["/notes/early"]
    stamp = middle.isoformat().replace("+00:00", "Z")
    after = (await listing(rt, since=stamp, kind="request"))["entries"]
    assert [e["path"] for e in after] == ["/notes/late"]
    before = (await listing(rt, until=stamp, kind="request"))["entries"]
    assert [e["path"] for e in before] == ["/notes/early"]
    # An offset other than UTC, and the + a careless client leaves unescaped.
    local = middle.astimezone(timezone_plus_two()).isoformat()
    shifted = await rt.client.get(f"/api/audit/?kind=request&since={local}")
    assert [e["path"] for e in shifted.json()["entries"]] == ["/notes/late"]
    naive = middle.replace(tzinfo=None).isoformat()  # no offset: UTC
    assert [e["path"] for e in (await listing(rt, kind="request", since=naive))["entries"]] == [
        "/notes/late"
    ]


def timezone_plus_two():
    from datetime import timezone

    return timezone(timedelta(hours=2))


async def test_a_tenant_identity_sees_only_its_tenant(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    await seed(rt)
    mine = (await listing(rt, headers=alice("t2")))["entries"]
    assert {e["tenant"] for e in mine} == {"t2"}
    assert [e["path"] for e in mine] == ["/notes/bad", "/notes/b"]
    same = (await listing(rt, tenant="t2", headers=alice("t2")))["entries"]
    assert same == mine
    other = await rt.client.get("/api/audit/", params={"tenant": "t1"}, headers=alice("t2"))
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    # Without a tenant, every tenant's entries (and those of none).
    everyone = (await listing(rt, headers=alice(None)))["entries"]
    assert {e["tenant"] for e in everyone} == {"t1", "t2", None}


async def test_reading_needs_audit_read(courtyard, notes):
    rt = await courtyard(entry_points=False)
    denied = await rt.client.get("/api/audit/", headers=alice(permissions="notes:read"))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    allowed = await rt.client.get("/api/audit/", headers=alice(permissions="audit:read"))
    assert allowed.status_code == 200
    wildcard = await rt.client.get("/api/audit/", headers=alice(permissions="audit:*"))
    assert wildcard.status_code == 200


async def test_pages_have_no_duplicates_or_gaps_while_rows_are_added(
    courtyard, database_url, notes
):
    rt = await start(courtyard, database_url)
    for number in range(23):
        await rt.client.post(f"/notes/n{number}")
    await rt.dispatcher.services.audit.flush()
    existing = [r["id"] for r in await rows(rt) if r["kind"] == "request"]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"kind": "request", "limit": "5"} | ({"cursor": cursor} if cursor else {})
        body = await listing(rt, **params)
        seen += [e["id"] for e in body["entries"]]
        pages += 1
        # New entries arrive between pages; they are newer than the first page.
        await rt.client.post(f"/notes/new{pages}")
        await rt.dispatcher.services.audit.flush()
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted(existing, reverse=True)


async def test_limit_bounds_the_page(courtyard, notes):
    rt = await courtyard(entry_points=False)
    for number in range(3):
        await rt.client.post(f"/notes/n{number}")
    await rt.dispatcher.services.audit.flush()
    body = await listing(rt, kind="request", limit="500")
    assert len(body["entries"]) == 3 and body["next_cursor"] is None
    body = await listing(rt, kind="request", limit="3")
    assert len(body["entries"]) == 3 and body["next_cursor"] is None
    body = await listing(rt, kind="request", limit="2")
    assert len(body["entries"]) == 2 and body["next_cursor"] is not None


@pytest.mark.parametrize(
    ("query", "code", "words"),
    [
        ("user=alice", "INVALID_PARAMETER", "unknown parameter 'user'"),
        ("kind=thing", "INVALID_PARAMETER", "request, event"),
        ("method=PO ST", "INVALID_PARAMETER", "HTTP method"),
        ("status=42", "INVALID_PARAMETER", "4xx"),
        ("status=6xx", "INVALID_PARAMETER", "4xx"),
        ("path=notes", "INVALID_PARAMETER", "starting with /"),
        ("since=yesterday", "INVALID_PARAMETER", "ISO 8601"),
        ("until=2025-13-01", "INVALID_PARAMETER", "ISO 8601"),
        ("since=2025-02-01&until=2025-01-01", "INVALID_PARAMETER", "later than since"),
        ("limit=0", "INVALID_PARAMETER", "1 to 500"),
        ("limit=501", "INVALID_PARAMETER", "1 to 500"),
        ("limit=ten", "INVALID_PARAMETER", "1 to 500"),
        ("identity=", "INVALID_PARAMETER", "empty"),
        ("kind=event&kind=request", "INVALID_PARAMETER", "given 2 times"),
        ("cursor=abc", "INVALID_CURSOR", "next_cursor"),
        ("cursor=%%%", "INVALID_CURSOR", "next_cursor"),
        ("cursor=djE6MA", "INVALID_CURSOR", "next_cursor"),  # v1:0
    ],
)
async def test_bad_parameters_are_refused(courtyard, notes, query, code, words):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.get(f"/api/audit/?{query}", headers=alice(None))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert words in error["message"]


# Lifecycle: shutdown, retention, off ------------------------------------------------------


async def test_a_clean_stop_writes_every_queued_entry(courtyard, database_url, notes):
    rt = await start(courtyard, database_url)
    answers = await asyncio.gather(*(rt.client.post(f"/notes/n{i}") for i in range(300)))
    assert {a.status_code for a in answers} == {201}
    await rt.dispatcher.close()  # no flush first: close must write what is queued
    entries = await read_table(database_url)
    assert len([e for e in entries if e["kind"] == "request"]) == 300
    assert rt.dispatcher.services.audit.dropped == 0


async def test_retention_purges_old_entries_at_start(courtyard, database_url, notes):
    rt = await start(courtyard, database_url, audit_retention_days=0)
    now = datetime.now(UTC)
    async with rt.dispatcher.services.database.engine.begin() as connection:
        await connection.execute(
            insert(TABLE),
            [
                {"time": now - timedelta(days=40), "kind": "event", "action": "old"},
                {"time": now - timedelta(days=29), "kind": "event", "action": "recent"},
                {"time": now - timedelta(hours=1), "kind": "event", "action": "new"},
            ],
        )
    await rt.dispatcher.close()
    again = await start(courtyard, database_url, audit_retention_days=30)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        actions = [r["action"] for r in await rows(again) if r["kind"] == "event"]
        if "old" not in actions or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert sorted(a for a in actions if a != "notes.started") == ["new", "recent"]
    # Then once a day; here, by hand, a day later.
    purged = await again.dispatcher.services.audit.purge(now=now + timedelta(days=1, hours=1))
    assert purged == 1
    left = [r["action"] for r in await rows(again) if r["action"] != "notes.started"]
    assert left == ["new"]


async def test_purge_deletes_in_chunks(courtyard, monkeypatch, plugin_dir):
    monkeypatch.setattr(audit_module, "PURGE_CHUNK", 7)
    rt = await courtyard(entry_points=False, audit_retention_days=0)
    rt.dispatcher.services.audit.retention_days = 1  # no purge at start to race with
    old = datetime.now(UTC) - timedelta(days=3)
    async with rt.dispatcher.services.database.engine.begin() as connection:
        await connection.execute(
            insert(TABLE), [{"time": old, "kind": "event", "action": "old"}] * 30
        )
    assert await rt.dispatcher.services.audit.purge() == 30
    assert await rows(rt) == []


async def test_audit_off_records_nothing(courtyard, database_url, notes):
    rt = await start(courtyard, database_url, audit=False)
    assert (await rt.client.post("/notes/x")).status_code == 201
    answer = await rt.client.post("/notes/event", json={"action": "note.shared"})
    assert answer.status_code == 200
    assert (await rt.client.post("/no/where")).status_code == 404
    await rt.dispatcher.close()
    assert await read_table(database_url) == []
    assert rt.dispatcher.services.audit.dropped == 0


async def test_audit_off_still_checks_domain_events(courtyard, plugin_dir):
    rt = await courtyard(entry_points=False, audit=False)
    with pytest.raises(ValueError):
        await rt.dispatcher.services.audit.for_plugin("notes").record("")


async def test_migrations_match_the_model(database_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    database = Database(Settings(data_dir=tmp_path, database_url=database_url).database)
    try:
        assert await database.upgrade(audit_module.OWNER, audit_module.MIGRATIONS)

        def differences(connection):
            context = MigrationContext.configure(connection)
            return compare_metadata(context, AuditEntry.metadata)

        async with database.engine.connect() as connection:
            found = await connection.run_sync(differences)
        ours = [d for d in found if "audit_log" in repr(d)]
        assert ours == []
    finally:
        await database.close()


# Losses are bounded and reported ------------------------------------------------------------


async def test_a_full_queue_drops_with_a_warning_and_never_blocks_long(
    monkeypatch, caplog, tmp_path
):
    monkeypatch.setattr(audit_module, "QUEUE_SIZE", 3)
    monkeypatch.setattr(audit_module, "BATCH", 1)
    monkeypatch.setattr(audit_module, "FULL_WAIT", 0.05)
    monkeypatch.setattr(audit_module, "FLUSH_TIMEOUT", 0.3)
    # Nothing listens there: every write fails and is retried, so the queue fills.
    from courtyard.testing import free_port

    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    )
    database = Database(settings.database)
    audit = AuditLog(settings, database)
    await audit.start()
    caplog.set_level(logging.WARNING, "courtyard.audit")
    started = asyncio.get_running_loop().time()
    for number in range(10):
        await audit.record(f"thing.{number}")
    assert asyncio.get_running_loop().time() - started < 5
    # The writer holds one entry, three wait in the queue: six could not be queued.
    assert audit.dropped == 6
    await audit.close()
    await database.close()
    assert audit.dropped == 10
    messages = [r.getMessage() for r in caplog.records]
    assert any("dropped 1 entry (queue full: 3 entries waiting" in m for m in messages)
    assert any("dropped 5 entries (queue full" in m for m in messages)
    assert any("4 entries not written at shutdown" in m for m in messages)
    assert any("cannot write 1 entry" in m for m in messages)


async def test_a_row_the_database_refuses_is_dropped_alone(courtyard, postgres_url, caplog):
    rt = await courtyard(entry_points=False, database_url=postgres_url)
    audit = rt.dispatcher.services.audit
    good = audit_module.event_entry("good", plugin=None)
    bad = {**good, "action": "bad", "method": "M" * 40}  # over its column's 16 characters
    # Queued together, so that they share a batch.
    audit.add_nowait(good)
    audit.add_nowait(bad)
    audit.add_nowait({**good, "action": "also good"})
    await audit.flush()
    assert [r["action"] for r in await rows(rt)] == ["good", "also good"]
    assert audit.dropped == 1
    assert "the database refused an entry" in caplog.text


# The command line ---------------------------------------------------------------------------


def cli(*args: str):
    from click.testing import CliRunner
    from courtyard.cli.audit import audit

    env = {"COURTYARD_URL": None, "COURTYARD_API_KEY": None, "COLUMNS": "200"}
    return CliRunner().invoke(audit, ["list", *args], env=env)


def test_the_cli_lists_filters_and_follows_cursors(courtyard_server, notes, tmp_path):
    import time

    import httpx

    server = courtyard_server(entry_points=False, database_url=f"sqlite:///{tmp_path / 'a.db'}")
    with httpx.Client(base_url=server.url, headers={"X-Courtyard-Internal": "true"}) as client:
        for number in range(5):
            assert client.post(f"/notes/n{number}", headers=alice()).status_code == 201
        assert client.post("/no/where").status_code == 404
        # The writer works off the request path: wait until the entries are readable.
        for _ in range(200):
            body = client.get("/api/audit/", params={"kind": "request"}).json()
            if len(body["entries"]) == 6:
                break
            time.sleep(0.05)
    url = ["--url", server.url]

    done = cli(*url, "--json", "--kind", "request", "--identity", "alice", "--limit", "2")
    assert done.exit_code == 0, done.output
    page = json.loads(done.stdout)
    assert [e["path"] for e in page["entries"]] == ["/notes/n4", "/notes/n3"]
    assert page["next_cursor"]

    done = cli(*url, "--json", "--kind", "request", "--limit", "2", "--cursor", page["next_cursor"])
    assert [e["path"] for e in json.loads(done.stdout)["entries"]] == ["/notes/n2", "/notes/n1"]

    done = cli(*url, "--json", "--all", "--kind", "request", "--limit", "2")
    every = json.loads(done.stdout)
    assert every["next_cursor"] is None
    assert [e["path"] for e in every["entries"]] == [
        "/no/where", "/notes/n4", "/notes/n3", "/notes/n2", "/notes/n1", "/notes/n0",
    ]  # fmt: skip

    done = cli(*url, "--status", "4xx")
    assert done.exit_code == 0, done.output
    assert "POST /no/where" in done.stdout and "404" in done.stdout
    assert "/notes/n4" not in done.stdout

    done = cli(*url, "--kind", "event")
    assert "notes.started" in done.stdout and "notes" in done.stdout

    done = cli(*url, "--kind", "request", "--limit", "1")
    assert "/no/where" in done.stdout and "/notes/n4" not in done.stdout
    assert "more entries: --cursor" in done.stderr

    done = cli(*url, "--since", "not a time")
    assert done.exit_code == 1
    assert "error: INVALID_PARAMETER:" in done.stderr

    done = cli(*url, "--json", "--cursor", "bogus")
    assert done.exit_code == 1
    assert json.loads(done.stdout)["error"]["code"] == "INVALID_CURSOR"

    done = cli(*url, "--path", "/nothing/here")
    assert done.exit_code == 0 and "no audit entries" in done.stdout

    done = cli(*url, "--limit", "501")
    assert done.exit_code == 2


def test_the_cli_reports_a_server_it_cannot_reach():
    from courtyard.testing import free_port

    done = cli("--url", f"http://127.0.0.1:{free_port()}")
    assert done.exit_code == 1
    assert "error: CONNECTION_FAILED:" in done.stderr
