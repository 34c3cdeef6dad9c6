"""Projects CRUD (`/api/projects`), operations by id, and the API's refusals."""

from __future__ import annotations

from typing import Any

from platform_kit import SPEC, assert_done, spec, wait_op


async def test_projects_crud(platform: Any) -> None:
    rt = await platform()
    client = rt.client
    assert (await client.get("/api/projects")).json() == []

    created = await client.post("/api/projects", json=SPEC)
    assert created.status_code == 200, created.text
    project = created.json()
    assert project["spec"] == SPEC
    assert project["status"]["phase"] == "Reconciling"
    assert project["status"]["last_op_kind"] == "create"
    assert_done(await wait_op(client, project["status"]["last_op_id"]))

    listed = (await client.get("/api/projects")).json()
    assert [p["id"] for p in listed] == [project["id"]]
    got = (await client.get(f"/api/projects/{project['id']}")).json()
    assert got["status"]["phase"] == "Ready"
    assert got["deployments"]["dev"]["image"].startswith("registry.local/platform/demo-app:sha-")

    changed = spec(environments={"dev": {"vars": {"LOG_LEVEL": "debug"}}})
    updated = await client.put(f"/api/projects/{project['id']}", json=changed)
    assert updated.status_code == 200, updated.text
    assert updated.json()["spec"]["environments"] == changed["environments"]
    assert_done(await wait_op(client, updated.json()["status"]["last_op_id"]))

    deleted = await client.delete(f"/api/projects/{project['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["status"]["phase"] == "Deleting"
    assert_done(await wait_op(client, deleted.json()["status"]["last_op_id"]))
    assert (await client.get(f"/api/projects/{project['id']}")).status_code == 404
    assert (await client.get("/api/projects")).json() == []


async def test_refusals(platform: Any) -> None:
    rt = await platform()
    for method, url, body in [
        ("GET", "/api/projects/nope", None),
        ("PUT", "/api/projects/nope", SPEC),
        ("DELETE", "/api/projects/nope", None),
        ("GET", "/api/projects/nope/artifacts", None),
        ("GET", "/api/projects/nope/artifacts/build/image.txt", None),
        ("GET", "/api/projects/nope/ops", None),
    ]:
        answer = await rt.client.request(method, url, json=body)
        assert answer.status_code == 404, (method, url, answer.text)
        assert answer.json()["error"]["code"] == "PROJECT_NOT_FOUND"
    bad = spec(kind="Job", name="Bad_Name", networkPolicies={"ingress": "open"}, extra=True)
    answer = await rt.client.post("/api/projects", json=bad)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "INVALID_SPEC"
    assert {v["field"] for v in error["violations"]} == {
        "kind",
        "name",
        "networkPolicies.ingress",
        "networkPolicies.egress",
        "extra",
    }
    assert (await rt.client.get("/api/projects")).json() == []  # nothing stored

    answer = await rt.client.put("/api/projects/whatever", json={"kind": "App"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "INVALID_SPEC"
    for content, kind in [
        (b"{nope", "application/json"),
        (b"", "application/json"),
        (b'{"a": NaN}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"{}", "text/plain"),
    ]:
        answer = await rt.client.post(
            "/api/projects", content=content, headers={"Content-Type": kind}
        )
        assert answer.status_code == 400, (content, answer.text)
        assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    first = (await rt.client.post("/api/projects", json=SPEC)).json()
    again = await rt.client.post("/api/projects", json=SPEC)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "PROJECT_NAME_TAKEN"
    await wait_op(rt.client, first["status"]["last_op_id"])


async def test_operations_by_id(platform: Any) -> None:
    rt = await platform()
    assert (await rt.client.get("/api/ops/not-an-id")).status_code == 400
    assert (await rt.client.get("/api/ops/not-an-id")).json()["error"]["code"] == "INVALID_OP_ID"
    assert (await rt.client.get("/api/ops/" + "A" * 32)).status_code == 400
    missing = await rt.client.get("/api/ops/" + "0" * 32)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "OP_NOT_FOUND"
    assert (await rt.client.get("/api/ops/" + "0" * 32 + "/events")).status_code == 404
    assert (await rt.client.get("/api/ops/x/events")).status_code == 400

    project = (await rt.client.post("/api/projects", json=SPEC)).json()
    op = await wait_op(rt.client, project["status"]["last_op_id"])
    assert op["kind"] == "create" and op["project_id"] == project["id"]
    assert [s["worker"] for s in op["steps"]] == [
        "registrar",
        "repoBootstrap",
        "imageBuilder",
        "manifestRenderer",
    ]
    for step in op["steps"]:
        assert step["started_at"] <= step["ended_at"]
        assert step["message"] and step["artifacts"] and step["attempts"] == 1
    assert op["requested"] <= op["started"] <= op["finished"]
    ops = (await rt.client.get(f"/api/projects/{project['id']}/ops")).json()["ops"]
    assert [o["id"] for o in ops] == [op["id"]]


async def test_writes_need_an_origin_but_webhooks_do_not(platform: Any) -> None:
    rt = await platform()
    bare = {"Origin": ""}
    refused = await rt.client.post("/api/projects", json=SPEC, headers=bare)
    assert refused.status_code == 403
    refused = await rt.client.post(
        "/api/events/registration", json={"action": "create", "spec": SPEC}, headers=bare
    )
    assert refused.status_code == 403
    for url in ("/api/webhooks/source", "/api/events/deployment", "/api/events/promotion"):
        answer = await rt.client.post(url, json={"project_id": "nope"}, headers=bare)
        assert answer.status_code != 403, url
    internal = await rt.client.post(
        "/api/projects", json=SPEC, headers={"Origin": "", "X-Courtyard-Internal": "true"}
    )
    assert internal.status_code == 200
    await wait_op(rt.client, internal.json()["status"]["last_op_id"])


async def test_keys_need_platform_permissions(platform: Any) -> None:
    rt = await platform()
    reader = await rt.client_as(roles=["viewer"])
    writer = await rt.client_as(permissions=["platform:read", "platform:write"])
    assert (await rt.client.get("/api/projects")).status_code == 401
    assert (await reader.get("/api/projects")).status_code == 200
    assert (await reader.post("/api/projects", json=SPEC)).status_code == 403
    created = await writer.post("/api/projects", json=SPEC)
    assert created.status_code == 200
    await wait_op(writer, created.json()["status"]["last_op_id"])
    # A git hook on a protected server: a key, no Origin.
    event = {"project_id": created.json()["id"], "branch": "main", "commit": "c1"}
    anonymous = await rt.client.post("/api/webhooks/source", json=event, headers={"Origin": ""})
    assert anonymous.status_code == 401
    keyed = await writer.post("/api/webhooks/source", json=event, headers={"Origin": ""})
    assert keyed.status_code == 202 and keyed.json()["accepted"]
    await wait_op(writer, keyed.json()["op"]["id"])


async def test_the_openapi_document_the_page_and_the_menu(platform: Any) -> None:
    rt = await platform()
    paths = (await rt.client.get("/api/openapi.json")).json()["paths"]
    for path, method, status in [
        ("/api/projects", "get", "200"),
        ("/api/projects", "post", "400"),
        ("/api/projects/{project_id}", "put", "409"),
        ("/api/projects/{project_id}", "delete", "404"),
        ("/api/events/registration", "post", "200"),
        ("/api/events/deployment", "post", "409"),
        ("/api/events/promotion", "post", "200"),
        ("/api/webhooks/source", "post", "202"),
        ("/api/ops/{op_id}", "get", "400"),
        ("/api/ops/{op_id}/events", "get", "200"),
        ("/api/projects/{project_id}/artifacts", "get", "200"),
        ("/api/projects/{project_id}/artifacts/{path}", "get", "400"),
    ]:
        assert status in paths[path][method]["responses"], (path, method)
    page = await rt.client.get("/platform/")
    assert page.status_code == 200 and "Projects" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = await rt.client.get("/platform/page.js")
    assert script.status_code == 200 and "EventSource" in script.text
    loaded = (await rt.client.get("/api/plugins/loaded")).json()
    menus = [m for p in loaded for m in p.get("menus", [])]
    assert {"title": "Projects", "icon": "lucide:folder-git-2", "path": "/platform"} in menus
