"""Installs, removals and reloads answered by one instance are served by every other:
the instance that answers has waited until every live instance applied the change (the
contract: at most 5 s, then it answers anyway), and in any case another instance serves
it within 2 s. Also: concurrent uploads of one app version on two instances, the
instance details of `/api/health/`, `GET /api/cluster/` and `courtyard status`."""

from __future__ import annotations

import threading

import httpx
import pytest
from cluster_kit import (
    MESSAGE_PLUGIN,
    Cluster,
    Instance,
    app_files,
    app_names,
    applied_at_once,
    eventually,
    message_of,
    page_of,
    plugin_files,
    tgz,
    upload,
)

pytestmark = pytest.mark.slow


def test_an_app_uploaded_on_one_instance_is_served_by_the_other(pair) -> None:
    a, b = pair
    answer = upload(a.client(), "app", "site.tgz", tgz(app_files("site", "1.0.0", "site one")))
    assert answer.status_code == 200, answer.text
    applied_at_once(b, lambda: page_of(b, "/site@1.0.0/") == "site one", "the upload")
    assert app_names(b) == ["site"]
    # B installed it in its own app folder, as A did in its.
    assert (b.data_dir / "apps" / "site" / "1.0.0" / "index.html").read_text() == "site one"

    # A second version, uploaded on B this time, is served by A.
    data = tgz(app_files("site", "1.1.0", "site two"))
    assert upload(b.client(), "app", "site.tgz", data).status_code == 200
    applied_at_once(a, lambda: page_of(a, "/site@1/") == "site two", "the second version")
    assert page_of(a, "/site@1.0.0/") == "site one"


def test_an_app_removed_on_one_instance_is_gone_from_the_other(pair) -> None:
    a, b = pair
    for version in ("1.0.0", "2.0.0"):
        data = tgz(app_files("gone", version, f"gone {version}"))
        answer = upload(a.client(), "app", "gone.tgz", data)
        assert answer.status_code == 200, f"{answer.text}\n{a.log[-3000:]}"
    applied_at_once(b, lambda: page_of(b, "/gone@2.0.0/") == "gone 2.0.0", "the uploads")

    # One version, removed on B: gone from A; the other still served.
    assert b.client().delete("/api/apps/_/gone/1.0.0").status_code == 200
    applied_at_once(a, lambda: a.get("/gone@1.0.0/").status_code == 404, "the removal")
    assert page_of(a, "/gone@2.0.0/") == "gone 2.0.0"
    # The whole app, removed on B: gone from A's listing, its pages and its folder.
    answer = b.client().delete("/api/apps/_/gone")
    assert answer.status_code == 200, f"{answer.text}\n{b.log[-3000:]}"
    applied_at_once(a, lambda: "gone" not in app_names(a), "the app's removal")
    assert a.get("/gone@2.0.0/").status_code == 404
    assert not (a.data_dir / "apps" / "gone").exists()


def test_a_plugin_uploaded_overwritten_and_removed_anywhere_is_everywhere(pair) -> None:
    a, b = pair
    data = tgz(plugin_files("greet", "hello from v1"))
    answer = upload(a.client(), "plugin", "greet.tgz", data)
    assert answer.status_code == 200, answer.text
    applied_at_once(b, lambda: message_of(b, "/greet/") == "hello from v1", "the plugin")
    loaded = [p["name"] for p in b.get("/api/plugins/loaded").json()]
    assert "greet" in loaded

    # Overwritten on B: A serves the new version.
    data = tgz(plugin_files("greet", "hello from v2", version="2.0.0"))
    assert upload(b.client(), "plugin", "greet.tgz", data).status_code == 200
    applied_at_once(a, lambda: message_of(a, "/greet/") == "hello from v2", "the overwrite")

    # Removed on A: B no longer serves it, and its folder is gone.
    assert a.client().delete("/api/plugins/greet").status_code == 200
    applied_at_once(b, lambda: b.get("/greet/").status_code == 404, "the removal")
    assert not (b.data_dir / "plugins" / "greet").exists()
    assert message_of(b, "/hello/") == "hello"  # the shared folder's plugin serves on


def test_a_reload_on_one_instance_reloads_the_other(cluster: Cluster, pair) -> None:
    """A reload re-reads the plugin folders. A folder every instance reads (a volume, an
    image's plugins) changed: a reload on A must leave B serving what the folder now
    holds too, or the two would answer the same request differently."""
    a, b = pair
    assert message_of(a, "/hello/") == message_of(b, "/hello/") == "hello"
    before = b.details()["generation"]
    code = MESSAGE_PLUGIN.format(message="hello again", blueprint="hello")
    (cluster.shared_plugins / "hello" / "plugin.py").write_text(code, encoding="utf-8")

    answer = a.client().post("/api/plugins/reload")
    assert answer.status_code == 200, answer.text
    assert message_of(a, "/hello/") == "hello again"
    applied_at_once(b, lambda: message_of(b, "/hello/") == "hello again", "the reload")
    assert b.details()["generation"] > before


def race(a: Instance, b: Instance, version: str) -> None:
    """Upload one app version on A and B at the same moment (each archive its own page):
    one 200, one 409 VERSION_EXISTS, and both instances serve the winner's page."""
    pages = {i.name: f"{version} from {i.name}" for i in (a, b)}
    bodies = {i.name: tgz(app_files("race", version, pages[i.name], 512 * 1024)) for i in (a, b)}
    clients = {i.name: i.client() for i in (a, b)}
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(2)

    def send(name: str) -> None:
        start.wait()
        answers[name] = upload(clients[name], "app", "race.tgz", bodies[name])

    threads = [threading.Thread(target=send, args=(i.name,)) for i in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(answer.status_code for answer in answers.values())
    assert statuses == [200, 409], {k: v.text for k, v in answers.items()}
    loser = next(v for v in answers.values() if v.status_code == 409)
    assert loser.json()["error"]["code"] == "VERSION_EXISTS"
    winner = next(k for k, v in answers.items() if v.status_code == 200)
    for instance in (a, b):
        served = lambda i=instance: page_of(i, f"/race@{version}/") == pages[winner]  # noqa: E731
        applied_at_once(instance, served, f"the winner's {version}")


def test_the_same_app_version_uploaded_on_two_instances_at_once(pair) -> None:
    """One upload wins (200), the other is refused as the documented conflict of POST
    /api/apps/upload (409 VERSION_EXISTS), and both instances serve the winner's files;
    three versions, three races."""
    a, b = pair
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        race(a, b, version)


def test_health_details_the_cluster_api_and_courtyard_status(cluster: Cluster, pair) -> None:
    a, b = pair
    details = a.details()
    assert details["id"] == "node-a"
    assert isinstance(details["generation"], int) and isinstance(details["revision"], int)

    answer = upload(a.client(), "app", "s.tgz", tgz(app_files("counted", "1.0.0", "x")))
    assert answer.status_code == 200
    revision = a.details()["revision"]
    assert revision > details["revision"]  # the install is in the change log
    applied_at_once(b, lambda: b.details()["revision"] == revision, "the revision")

    def listing(instance: Instance) -> dict:
        answer = instance.get("/api/cluster/")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def caught_up(instance: Instance) -> bool:
        """Every instance listed has reported the revision (each reports every 2 s)."""
        return all(e["revision"] == revision for e in listing(instance)["instances"])

    for instance in (a, b):
        eventually(lambda i=instance: caught_up(i), "the listing shows the revision", 3)
        body = listing(instance)
        assert body["instance"] == instance.name and body["revision"] == revision
        seen = {entry["id"]: entry for entry in body["instances"]}
        assert set(seen) == {"node-a", "node-b"}, body
        for entry in seen.values():
            expected = {"id", "host", "pid", "generation", "revision", "lag", "state"}
            assert expected | {"startedAt", "seenAt"} <= set(entry), entry
            assert entry["lag"] == 0 and entry["state"] == "ready", entry
        assert seen["node-a"]["pid"] == a.process.pid
        assert seen["node-b"]["pid"] == b.process.pid

    # Protected: a credential that may read it is needed (an admin's). The first key is
    # made over the API of the open server, the way a fresh install makes it.
    on_a = a.client()
    made = on_a.post("/api/keys/", json={"name": "operator", "roles": ["admin"]})
    assert made.status_code == 201, made.text
    admin = {"Authorization": f"Bearer {made.json()['secret']}"}
    made = on_a.post(
        "/api/keys/", json={"name": "apps-reader", "permissions": ["apps:read"]}, headers=admin
    )
    assert made.status_code == 201, made.text
    other = {"Authorization": f"Bearer {made.json()['secret']}"}
    eventually(lambda: b.get("/api/cluster/").status_code == 401, "B protected", 2)
    assert a.get("/api/cluster/").status_code == 401
    assert a.get("/api/cluster/", headers=other).status_code == 403
    assert b.get("/api/cluster/", headers=admin).status_code == 200

    # `courtyard status` prints the instances as a table.
    done = a.run_cli("status", "--url", b.url, "--api-key", admin["Authorization"][7:])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for instance in (a, b):
        row = next(line for line in lines if line.startswith(instance.name))
        assert str(instance.process.pid) in row and "ready" in row, done.stdout
