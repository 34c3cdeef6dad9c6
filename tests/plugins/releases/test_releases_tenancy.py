"""A second tenant's token sees and changes nothing of the first's, through every route."""

from __future__ import annotations

import json

from releases_kit import (
    DIGEST_A,
    data,
    error,
    finished_job,
    pipeline,
    promote,
    record_deployment,
    record_sticker,
    upload,
)


async def test_a_tenant_never_sees_or_changes_another_tenants_data(releases_db):
    releases = releases_db
    alice = releases.user("alice", tenant="acme")
    bob = releases.user("bob", tenant="acme")
    world = await pipeline(alice)
    env, prod, rid = world["dev"]["id"], world["prod"]["id"], world["release"]["id"]
    cid = world["component"]["id"]
    window = data(
        await alice.post(
            f"/api/v1/environments/{env}/freeze-windows",
            json={"startsAt": "2030-01-01T00:00:00Z", "endsAt": "2030-01-02T00:00:00Z"},
        ),
        201,
    )["id"]
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "t1",
                "type": "courtyard",
                "environmentId": env,
                "connection": {"url": "http://127.0.0.1:9", "apiKey": "k" * 20},
            },
        ),
        201,
    )["id"]
    agent = data(await alice.post("/api/v1/agents/register", json={"name": "a1"}), 201)
    app = data(
        await alice.post("/api/v1/components", json={"name": "shop", "kind": "courtyard-app"}),
        201,
    )["id"]
    await upload(alice, app, "1.0.0")
    other_release = data(await alice.post("/api/v1/releases", json={"name": "draft"}), 201)["id"]
    dev_promotion = data(await promote(alice, rid, env), 201)["id"]
    await finished_job(alice, dev_promotion)  # its deployment changes nothing from now on
    await record_deployment(releases.runtime, "acme", rid, env)
    pending = data(await promote(alice, rid, prod), 201)["id"]
    data(
        await alice.post("/api/v1/approval-policies", json={"name": "p", "environmentId": prod}),
        201,
    )
    await record_sticker(releases.runtime, "acme", target, [])
    sticker = data(await alice.get("/api/v1/version-stickers"))[0]["id"]
    packet = data(await alice.get("/api/v1/evidence-packets"))[0]["id"]
    all_time = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    report = data(await alice.post("/api/v1/audit-reports", json=all_time), 201)["id"]
    jobs = data(await alice.get("/api/v1/deployment-jobs"))
    job = jobs[0]["id"]
    task = data(await alice.get(f"/api/v1/deployment-jobs/{job}/tasks"))[0]["id"]

    reads = [
        f"/api/v1/environments/{env}",
        f"/api/v1/environments/{env}/freeze-windows",
        f"/api/v1/targets/{target}",
        f"/api/v1/targets/{target}/sticker",
        f"/api/v1/targets/{target}/drift",
        f"/api/v1/agents/{agent['id']}",
        f"/api/v1/components/{cid}",
        f"/api/v1/components/{cid}/versions",
        f"/api/v1/releases/{rid}",
        f"/api/v1/releases/{rid}/state",
        f"/api/v1/releases/{rid}/compare/{other_release}",
        f"/api/v1/promotions/{pending}",
        f"/api/v1/promotions/{pending}/decision",
        f"/api/v1/promotions/{pending}/approvals",
        f"/api/v1/promotions/{dev_promotion}/evidence",
        f"/api/v1/evidence-packets/{packet}",
        f"/api/v1/evidence-packets/{packet}/download",
        f"/api/v1/version-stickers/{sticker}",
        f"/api/v1/audit-reports/{report}",
        f"/api/v1/audit-reports/{report}/download",
        f"/api/v1/deployment-jobs/{job}",
        f"/api/v1/deployment-jobs/{job}/tasks",
        f"/api/v1/deployment-jobs/{job}/tasks/{task}",
        f"/api/v1/deployment-jobs/{job}/tasks/{task}/logs",
        f"/api/v1/deployment-jobs/{job}/artifacts",
    ]
    lists = [
        "/api/v1/environments",
        "/api/v1/targets",
        "/api/v1/agents",
        "/api/v1/components",
        "/api/v1/releases",
        "/api/v1/promotions",
        "/api/v1/approval-policies",
        "/api/v1/my/pending-approvals",
        "/api/v1/evidence-packets",
        "/api/v1/version-stickers",
        "/api/v1/signing-keys",
        "/api/v1/deployment-jobs",
        "/api/v1/rollbacks",
    ]
    writes = [
        ("PUT", f"/api/v1/environments/{env}", {"name": "x"}),
        ("DELETE", f"/api/v1/environments/{env}", None),
        (
            "POST",
            f"/api/v1/environments/{env}/freeze-windows",
            {"startsAt": "2030-01-01T00:00:00Z", "endsAt": "2030-01-02T00:00:00Z"},
        ),
        ("DELETE", f"/api/v1/environments/{env}/freeze-windows/{window}", None),
        (
            "POST",
            "/api/v1/targets",
            {
                "name": "t",
                "type": "courtyard",
                "environmentId": env,
                "connection": {"url": "http://127.0.0.1:9"},
            },
        ),
        ("PUT", f"/api/v1/targets/{target}", {"name": "x"}),
        ("DELETE", f"/api/v1/targets/{target}", None),
        ("POST", f"/api/v1/targets/{target}/health-check", None),
        ("PUT", f"/api/v1/agents/{agent['id']}", {"name": "x"}),
        ("DELETE", f"/api/v1/agents/{agent['id']}", None),
        ("PUT", f"/api/v1/components/{cid}", {"name": "x"}),
        ("DELETE", f"/api/v1/components/{cid}", None),
        (
            "POST",
            f"/api/v1/components/{cid}/sync-versions",
            {"versions": [{"version": "9", "digest": DIGEST_A}]},
        ),
        ("PUT", f"/api/v1/releases/{other_release}", {"name": "x"}),
        ("DELETE", f"/api/v1/releases/{other_release}", None),
        ("POST", f"/api/v1/releases/{rid}/deprecate", None),
        ("POST", "/api/v1/releases/from-latest", {"name": "x", "componentIds": [cid]}),
        ("POST", "/api/v1/promotions", {"releaseId": rid, "environmentId": env}),
        ("POST", "/api/v1/promotions/preview-gates", {"releaseId": rid, "environmentId": env}),
        ("POST", f"/api/v1/promotions/{pending}/approve", None),
        ("POST", f"/api/v1/promotions/{pending}/reject", None),
        ("POST", f"/api/v1/promotions/{pending}/cancel", None),
        ("POST", "/api/v1/approval-policies", {"name": "p", "environmentId": prod}),
        ("POST", "/api/v1/rollbacks", {"environmentId": env}),
    ]

    async def snapshot() -> list[str]:
        out = []
        for path in reads + lists:
            answer = await alice.get(path)
            body = answer.json()
            if body.get("success"):
                # Live fields (a decision's evaluation time) are left out.
                out.append(json.dumps(body["data"], sort_keys=True).split('"evaluatedAt"')[0])
            else:
                out.append(body["error"]["code"])
        return out

    before = await snapshot()
    eve = releases.user("eve", tenant="globex")
    for path in reads:
        answer = await eve.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["success"] is False
    for path in lists:
        assert data(await eve.get(path)) == [], path
    for method, path, payload in writes:
        answer = await releases.client.request(method, path, headers=eve.headers(), json=payload)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"].endswith("_NOT_FOUND")
    # Another tenant's agent claims nothing of this tenant's, and fetches none of its files.
    spy = data(await eve.post("/api/v1/agents/register", json={"name": "spy"}), 201)
    spy_headers = {"X-Agent-Token": spy["token"]}
    claim = await releases.client.post(
        f"/api/v1/agents/{spy['id']}/tasks/claim", headers=spy_headers
    )
    assert claim.status_code == 204
    version = data(await alice.get(f"/api/v1/components/{app}/versions"))[0]["id"]
    fetch = await releases.client.get(
        f"/api/v1/agents/{spy['id']}/tasks/{task}/archives/{version}", headers=spy_headers
    )
    error(fetch, 404, "DEPLOYMENT_TASK_NOT_FOUND")
    # The agent's heartbeat needs the agent's token; another tenant's JWT is no token.
    error(
        await eve.post(f"/api/v1/agents/{agent['id']}/heartbeat", json={}),
        401,
        "INVALID_AGENT_TOKEN",
    )
    assert await snapshot() == before
    theirs = data(await eve.post("/api/v1/audit-reports", json=all_time), 201)["content"]
    assert theirs["promotions"] == theirs["deployments"] == theirs["evidencePackets"] == []
    # And the first tenant's work goes on: bob approves.
    assert data(await bob.post(f"/api/v1/promotions/{pending}/approve"))["status"] == (
        "pending_approval"
    )
    assert data(await eve.get("/api/v1/my/pending-approvals")) == []
