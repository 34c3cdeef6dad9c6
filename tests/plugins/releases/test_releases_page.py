"""The Releases page and menu."""

from __future__ import annotations

from releases_kit import data, pipeline, promote, record_deployment


async def test_page_shows_environments_releases_and_pending_approvals(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    world = await pipeline(alice)
    rid = world["release"]["id"]
    await record_deployment(releases.runtime, "acme", rid, world["dev"]["id"])
    mallory = releases.user("<script>alert(1)</script>")
    data(await mallory.post("/api/v1/releases", json={"name": "x"}), 201)
    pid = data(await promote(alice, rid, world["prod"]["id"]), 201)["id"]

    page = await bob.get("/releases/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["Content-Security-Policy"]
    html = page.text
    assert "<td>dev</td>" in html and "<td>prod</td>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert pid in html  # awaiting bob's approval
    assert pid not in (await alice.get("/releases/")).text  # the requester cannot approve
    other = await releases.user("olga", tenant="globex").get("/releases/")
    assert "r1" not in other.text and "No environment yet." in other.text
    assert (await releases.client.get("/releases/")).status_code == 401

    loaded = (await releases.client.get("/api/plugins/loaded")).json()
    [mine] = [p for p in loaded if p["name"] == "releases"]
    assert mine["menus"] == [{"title": "Releases", "icon": "lucide:rocket", "path": "/releases"}]
