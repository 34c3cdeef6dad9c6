"""Instances sharing a database serve the same plugins and apps (services/store.py,
services/replication.py): two in-process runtimes, each with its own data and folders, on
one SQLite database, as two machines on one PostgreSQL database (tests/cluster/ runs real
processes on PostgreSQL and Redis). Their event buses are their own, so what reaches the
other instance here comes through the store alone, as after a missed wake-up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from archive_kit import tar_file, tgz_bytes
from courtyard.services import replication
from courtyard.services.store import Archive, Store
from courtyard.testing import Runtime

PLUGIN_CODE = """
from courtyard_sdk import Blueprint, hookimpl

bp = Blueprint("{name}", __name__)

@bp.get("/")
async def hello():
    return {{"from": "{name}", "version": "{version}"}}

@hookimpl
def courtyard_routes(ctx):
    return bp
"""


def plugin_archive(name: str, version: str = "1.0.0") -> bytes:
    return tgz_bytes(
        [
            tar_file(
                "plugin.toml",
                f'name = "{name}"\nversion = "{version}"\nmodule = "plugin"\n'
                f'base = "/{name}"\n'.encode(),
            ),
            tar_file("plugin.py", PLUGIN_CODE.format(name=name, version=version).encode()),
        ]
    )


def app_archive(name: str, version: str, page: bytes = b"<h1>hi</h1>") -> bytes:
    package = json.dumps({"name": name, "version": version}).encode()
    return tgz_bytes([tar_file("package.json", package), tar_file("index.html", page)])


async def upload(
    client: httpx.AsyncClient, kind: str, data: bytes, **params: str
) -> httpx.Response:
    files = {"file": (f"{kind}.tgz", data, "application/gzip")}
    return await client.post(f"/api/{kind}s/upload", files=files, params=params)


def instance_settings(tmp_path: Path, name: str, **overrides: Any) -> dict[str, Any]:
    home = tmp_path / name
    return {
        "instance_id": name,
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
        "data_dir": home / "data",
        "plugin_dirs": [home / "plugins"],
        "app_dirs": [home / "apps"],
        "entry_points": False,
        **overrides,
    }


@pytest.fixture
def cluster(courtyard: Any, tmp_path: Path) -> Any:
    """`a, b = await cluster("a", "b")`: runtimes sharing one database."""

    async def start(*names: str, **overrides: Any) -> list[Runtime]:
        return [await courtyard(**instance_settings(tmp_path, n, **overrides)) for n in names]

    return start


async def loaded(runtime: Runtime) -> list[str]:
    answer = await runtime.client.get("/api/plugins/loaded")
    return sorted(p["name"] for p in answer.json())


async def test_an_upload_on_one_instance_is_served_by_the_other_when_it_answers(cluster):
    a, b = await cluster("a", "b")
    answer = await upload(a.client, "plugin", plugin_archive("hello"))
    assert answer.status_code == 200, answer.text
    # The upload answered once every live instance applied it: no waiting here.
    assert (await b.client.get("/hello/")).json() == {"from": "hello", "version": "1.0.0"}
    assert await loaded(a) == await loaded(b) == ["hello"]

    answer = await upload(b.client, "plugin", plugin_archive("hello", "2.0.0"))
    assert answer.status_code == 200, answer.text
    assert (await a.client.get("/hello/")).json()["version"] == "2.0.0"

    assert (await b.client.delete("/api/plugins/hello")).status_code == 200
    assert (await a.client.get("/hello/")).status_code == 404
    assert await loaded(a) == []
    assert not (a.dispatcher.settings.plugin_folders[0] / "hello").exists()


async def test_apps_follow_installs_and_removals(cluster):
    a, b = await cluster("a", "b")
    answer = await upload(a.client, "app", app_archive("site", "1.0.0", b"<h1>one</h1>"))
    assert answer.status_code == 200, answer.text
    page = await b.client.get("/site/")
    assert (page.status_code, page.content) == (200, b"<h1>one</h1>")

    overwrite = app_archive("site", "1.0.0", b"<h1>two</h1>")
    assert (await upload(b.client, "app", overwrite, overwrite="true")).status_code == 200
    assert (await a.client.get("/site/")).content == b"<h1>two</h1>"

    assert (await upload(a.client, "app", app_archive("site", "1.1.0"))).status_code == 200
    assert (await b.client.delete("/api/apps/_/site/1.0.0")).status_code == 200
    listing = (await a.client.get("/api/apps/")).json()
    assert [app["versions"] for app in listing] == [["1.1.0"]]
    assert (await a.client.delete("/api/apps/_/site")).status_code == 200
    assert (await b.client.get("/api/apps/")).json() == []
    assert not (b.dispatcher.settings.app_folders[0] / "site").exists()


async def test_one_version_uploaded_on_two_instances_at_once_installs_once(cluster):
    a, b = await cluster("a", "b")
    answers = await asyncio.gather(
        upload(a.client, "app", app_archive("race", "1.0.0", b"a")),
        upload(b.client, "app", app_archive("race", "1.0.0", b"b")),
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 409], [answer.text for answer in answers]
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert refused.json()["error"]["code"] == "VERSION_EXISTS"
    won = b"a" if answers[0].status_code == 200 else b"b"
    await asyncio.sleep(replication.POLL_INTERVAL * 3)  # the loser follows the winner
    assert (await a.client.get("/race/")).content == (await b.client.get("/race/")).content
    assert (await a.client.get("/race/")).content == won


async def test_an_instance_that_was_down_catches_up_before_it_serves(cluster, courtyard, tmp_path):
    (a,) = await cluster("a")
    assert (await upload(a.client, "plugin", plugin_archive("early"))).status_code == 200
    assert (await upload(a.client, "app", app_archive("docs", "2.0.0"))).status_code == 200
    (b,) = await cluster("b")
    assert await loaded(b) == ["early"]
    assert (await b.client.get("/docs/")).status_code == 200
    assert b.dispatcher.replication.applied == await b.dispatcher.services.store.head()


async def test_folders_put_there_by_hand_are_left_alone(cluster, tmp_path):
    by_hand = tmp_path / "b" / "plugins" / "manual"
    by_hand.mkdir(parents=True)
    (by_hand / "plugin.toml").write_text('name = "manual"\n')
    a, b = await cluster("a", "b")
    assert (await upload(a.client, "plugin", plugin_archive("hello"))).status_code == 200
    assert await loaded(b) == ["hello", "manual"]
    assert await loaded(a) == ["hello"]


async def test_a_reload_on_one_instance_reloads_the_others(cluster):
    a, b = await cluster("a", "b")
    before = b.dispatcher.current.number
    assert (await a.client.post("/api/plugins/reload")).status_code == 200
    assert b.dispatcher.current.number == before + 1


async def test_an_instance_is_known_to_the_others_once_it_has_started(cluster):
    # Else a change made at once does not wait for it (and is served late there).
    a, _ = await cluster("a", "b")
    live = await a.dispatcher.replication.store.instances(replication.LIVE_WITHIN)
    assert {i.id for i in live} == {"a", "b"}


async def test_a_key_made_on_one_instance_protects_the_others_at_once(cluster):
    a, b = await cluster("a", "b")
    assert (await b.client.get("/api/keys/")).status_code == 200  # open: no key yet
    made = await a.client.post("/api/keys/", json={"name": "ops", "roles": ["admin"]})
    assert made.status_code == 201, made.text
    assert (await b.client.get("/api/keys/")).status_code == 401
    admin = {"Authorization": f"Bearer {made.json()['secret']}"}
    other = await a.client.post(
        "/api/keys/", json={"name": "ci", "roles": ["admin"]}, headers=admin
    )
    assert (await b.client.get("/api/keys/", headers=admin)).status_code == 200
    revoked = await a.client.delete(f"/api/keys/{other.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    refused = await b.client.get("/api/keys/", headers={"X-API-Key": other.json()["secret"]})
    assert refused.json()["error"]["code"] == "API_KEY_REVOKED"


async def test_the_cluster_and_health_details_show_each_instance(cluster):
    a, b = await cluster("a", "b", health_details=True)
    await upload(a.client, "plugin", plugin_archive("hello"))
    view = (await b.client.get("/api/cluster/")).json()
    assert view["instance"] == "b"
    seen = {i["id"]: i for i in view["instances"]}
    assert set(seen) == {"a", "b"}
    assert all(i["lag"] == 0 and i["state"] == "ready" for i in seen.values()), seen
    assert seen["a"]["entryPoints"] == {}  # entry_points = false: none served
    health = (await a.client.get("/api/health/")).json()
    assert health["instance"]["id"] == "a"
    assert health["instance"]["revision"] == view["revision"]


async def test_health_details_are_opt_in(cluster):
    (a,) = await cluster("a")
    assert "instance" not in (await a.client.get("/api/health/")).json()


async def test_a_change_waits_for_a_live_instance_that_lags_but_not_forever(cluster, monkeypatch):
    monkeypatch.setattr(replication, "SETTLE_TIMEOUT", 0.5)
    a, b = await cluster("a", "b")

    async def stuck(batch: replication.Batch) -> None:
        await asyncio.sleep(3600)

    b.dispatcher.replication.on_changes = stuck
    started = asyncio.get_running_loop().time()
    assert (await a.client.post("/api/plugins/reload")).status_code == 200
    waited = asyncio.get_running_loop().time() - started
    assert 0.5 <= waited < 3


async def test_the_log_says_when_a_follower_fell_behind_what_it_keeps(tmp_path, courtyard):
    runtime = await courtyard(**instance_settings(tmp_path, "a"))
    store: Store = runtime.dispatcher.services.store
    first = await store.announce("reload")
    second = await store.install("plugin", "x", Archive("tar.gz", b"x"), exclusive=True)
    assert second > first
    changes, complete = await store.changes_after(first - 1)
    assert [c.revision for c in changes] == [first, second] and complete
    assert await store.installs("plugin") == {"x": Archive("tar.gz", b"x").sha256}
    await store.remove("plugin", "x")
    assert await store.installs("plugin") == {}
    assert await store.archive(Archive("tar.gz", b"x").sha256) is None  # unused: dropped
    _, complete = await store.changes_after(0)
    assert complete


def test_courtyard_status_shows_the_instances(courtyard_server, tmp_path):
    from click.testing import CliRunner
    from courtyard.cli.status import status

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first = courtyard_server(entry_points=False, database_url=database, instance_id="first")
    courtyard_server(
        entry_points=False,
        database_url=database,
        instance_id="second",
        data_dir=tmp_path / "second",
    )
    env = {"COURTYARD_URL": None, "COURTYARD_API_KEY": None, "COLUMNS": "200"}
    done = CliRunner().invoke(status, ["--url", first.url], env=env)
    assert done.exit_code == 0, done.output
    rows = [line.split() for line in done.stdout.splitlines()[2:] if line.strip()]
    assert [(row[0], row[3], row[6]) for row in rows] == [
        ("first", "ready", "0"),
        ("second", "ready", "0"),
    ], done.stdout
    assert "first answering; the store is at revision 0" in done.stderr
    as_json = json.loads(CliRunner().invoke(status, ["--url", first.url, "--json"], env=env).stdout)
    assert as_json["instance"] == "first"
    assert {i["id"] for i in as_json["instances"]} == {"first", "second"}


def test_courtyard_status_points_out_installed_plugins_that_differ():
    from courtyard.cli.status import _differences

    same = {"gateway": "1.0.0"}
    assert _differences([{"id": "a", "entryPoints": same}, {"id": "b", "entryPoints": same}]) == ""
    differ = _differences(
        [
            {"id": "a", "entryPoints": {"gateway": "1.0.0", "queues": "2.0.0"}},
            {"id": "b", "entryPoints": {"gateway": "1.1.0", "queues": "2.0.0"}},
            {"id": "c", "entryPoints": {"queues": "2.0.0"}},
        ]
    )
    assert differ == "gateway (a: 1.0.0, b: 1.1.0, c: none)"


PICKY_CODE = """
from courtyard_sdk import hookimpl

@hookimpl
def courtyard_startup(ctx):
    if "/b/" in str(ctx.data_dir):
        raise RuntimeError("not on b")
"""


async def test_a_plugin_that_fails_on_another_instance_shows_in_the_cluster(cluster):
    a, b = await cluster("a", "b")
    archive = tgz_bytes(
        [
            tar_file("plugin.toml", b'name = "picky"\nversion = "1.0.0"\nmodule = "plugin"\n'),
            tar_file("plugin.py", PICKY_CODE.encode()),
        ]
    )
    assert (await upload(a.client, "plugin", archive)).status_code == 200
    assert await loaded(a) == ["picky"]
    assert await loaded(b) == []
    await b.dispatcher.replication._report()  # the heartbeat's, without waiting for it
    seen = {i["id"]: i for i in (await a.client.get("/api/cluster/")).json()["instances"]}
    assert (seen["a"]["failed"], seen["b"]["failed"]) == ([], ["picky"])
