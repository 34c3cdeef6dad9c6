"""PLUGIN: Courtyard's plugins as the API's registry, enabled or disabled per tenant, and
plugin instances checked against a plugin's settings schema."""

from __future__ import annotations

from typing import Any

from conftest import Releases
from courtyard.testing import write_plugin
from releases_kit import SECRET, data, error

NOTES = """
from courtyard_sdk import Blueprint, hookimpl

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.get("/")
    async def index():
        return {"notes": []}

    return bp
"""
MANIFEST = """version = "1.2.0"
description = "Keeps notes."

[config.limit]
type = "integer"
default = 10
"""


async def start(courtyard: Any, plugin_dir: Any) -> Releases:
    write_plugin(plugin_dir, "notes", MANIFEST, NOTES)
    runtime = await courtyard(only_plugins=["releases", "notes"], strict=True, jwt_secret=SECRET)
    return Releases(runtime)


async def test_the_registry_lists_the_servers_plugins(courtyard, plugin_dir):
    releases = await start(courtyard, plugin_dir)
    alice = releases.user("alice", tenant="acme")
    listed = data(await alice.get("/api/v1/plugins", params={"pageSize": 1}))
    assert len(listed) == 1
    everything = data(await alice.get("/api/v1/plugins"))
    notes = next(p for p in everything if p["id"] == "notes")
    assert notes["version"] == "1.2.0" and notes["status"] == "loaded"
    assert notes["enabledForTenant"] is True and notes["description"] == "Keeps notes."
    assert data(await alice.get("/api/v1/plugins/notes"))["id"] == "notes"
    health = data(await alice.get("/api/v1/plugins/notes/health"))
    assert health["status"] == "healthy"
    error(await alice.get("/api/v1/plugins/nope"), 404, "PLUGIN_NOT_FOUND")
    error(await alice.get("/api/v1/plugins", params={"sort": "name"}), 400, "VALIDATION_ERROR")


async def test_a_tenant_disables_a_plugin_for_itself_only(courtyard, plugin_dir):
    releases = await start(courtyard, plugin_dir)
    alice = releases.user("alice", tenant="acme")
    carol = releases.user("carol", tenant="globex")
    assert (await alice.get("/notes/")).status_code == 200
    off = data(await alice.post("/api/v1/plugins/notes/disable"))
    assert off["enabledForTenant"] is False
    refused = await alice.get("/notes/")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "PLUGIN_DISABLED"
    assert data(await alice.get("/api/v1/plugins/notes/health"))["status"] == "disabled"
    assert (await carol.get("/notes/")).status_code == 200  # another tenant: untouched
    assert data(await carol.get("/api/v1/plugins/notes"))["enabledForTenant"] is True
    error(await alice.post("/api/v1/plugins/releases/disable"), 409, "PLUGIN_REQUIRED")
    data(await alice.post("/api/v1/plugins/notes/enable"))
    assert (await alice.get("/notes/")).status_code == 200
    reader = releases.user("rita", tenant="acme", permissions=["releases:read"])
    error(await reader.post("/api/v1/plugins/notes/disable"), 403, "AUTHORIZATION_FAILED")


async def test_plugin_instances_are_checked_against_the_plugins_schema(courtyard, plugin_dir):
    releases = await start(courtyard, plugin_dir)
    alice = releases.user("alice", tenant="acme")
    carol = releases.user("carol", tenant="globex")
    made = data(
        await alice.post(
            "/api/v1/plugin-instances",
            json={"pluginId": "notes", "name": "small", "config": {"limit": 3}},
        ),
        201,
    )
    assert made["config"] == {"limit": 3}
    error(
        await alice.post(
            "/api/v1/plugin-instances",
            json={"pluginId": "notes", "name": "bad", "config": {"limit": "many"}},
        ),
        400,
        "VALIDATION_ERROR",
    )
    error(
        await alice.post(
            "/api/v1/plugin-instances",
            json={"pluginId": "notes", "name": "bad", "config": {"unknown": 1}},
        ),
        400,
        "VALIDATION_ERROR",
    )
    error(
        await alice.post("/api/v1/plugin-instances", json={"pluginId": "notes", "name": "small"}),
        409,
        "INSTANCE_EXISTS",
    )
    error(
        await alice.post("/api/v1/plugin-instances", json={"pluginId": "nope", "name": "x"}),
        404,
        "PLUGIN_NOT_FOUND",
    )
    changed = data(await alice.put(f"/api/v1/plugin-instances/{made['id']}", json={"config": {}}))
    assert changed["config"] == {"limit": 10}  # the schema's default
    assert [i["id"] for i in data(await alice.get("/api/v1/plugin-instances"))] == [made["id"]]
    assert data(await carol.get("/api/v1/plugin-instances")) == []  # tenant-scoped
    error(await carol.delete(f"/api/v1/plugin-instances/{made['id']}"), 404,
          "PLUGIN_INSTANCE_NOT_FOUND")  # fmt: skip
    data(await alice.delete(f"/api/v1/plugin-instances/{made['id']}"), 204)


async def test_one_read_at_a_time_refreshes_a_tenants_disabled_plugins(monkeypatch):
    import asyncio
    from contextlib import asynccontextmanager

    from courtyard_releases import plugin_registry

    reads: list[str] = []
    answer = {"off": frozenset({"notes"})}
    release = asyncio.Event()

    class Session:
        async def exec(self, statement: Any) -> Any:
            reads.append("read")
            off = answer["off"]  # what the database holds when the query runs
            await release.wait()
            return type("Result", (), {"all": lambda self: off})()

    class Api:
        @asynccontextmanager
        async def session_for(self, tenant: str) -> Any:
            yield Session()

    disabled = plugin_registry.Disabled(Api())  # type: ignore[arg-type]
    first = [asyncio.create_task(disabled.of("t1")) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert {frozenset(r) for r in await asyncio.gather(*first)} == {frozenset({"notes"})}
    assert reads == ["read"]  # twenty requests, one query

    # Once the answer is old, one request reads again; the others keep the old answer.
    monkeypatch.setattr(plugin_registry, "CACHE_SECONDS", 0.0)
    release.clear()
    answer["off"] = frozenset()
    stale = await asyncio.gather(*(disabled.of("t1") for _ in range(20)))
    assert set(stale) == {frozenset({"notes"})} and reads == ["read", "read"]
    release.set()
    await asyncio.sleep(0.01)
    monkeypatch.setattr(plugin_registry, "CACHE_SECONDS", 60.0)
    assert await disabled.of("t1") == frozenset()

    # A change made here is seen at once, even with a read under way.
    release.clear()
    disabled.forget("t1")
    waiting = asyncio.create_task(disabled.of("t1"))
    while len(reads) < 3:  # its query has run
        await asyncio.sleep(0)
    answer["off"] = frozenset({"notes"})
    disabled.forget("t1")
    release.set()
    assert await waiting == frozenset()  # it asked before the change
    assert await disabled.of("t1") == frozenset({"notes"})  # not the answer kept
