"""Targets (secrets masked, real health checks, stickers, drift) and agents (a token
shown once, heartbeats)."""

from __future__ import annotations

import os
import stat

from releases_kit import audit_entries, data, environment, error, fake_courtyard, record_sticker

SECRET_KEY = "cyk_0123456789abcdef_target-secret-value-not-to-leak"


async def test_courtyard_target_masks_its_key_and_probes(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    with fake_courtyard() as server:
        target = data(
            await alice.post(
                "/api/v1/targets",
                json={
                    "name": "edge-1",
                    "type": "courtyard",
                    "environmentId": env["id"],
                    "connection": {"url": server.url, "apiKey": SECRET_KEY},
                },
            ),
            201,
        )
        assert target["connection"]["apiKey"] == "********"
        tid = target["id"]
        health = data(await alice.post(f"/api/v1/targets/{tid}/health-check"))
        assert health["status"] == "healthy"
        server.ready = 503
        health = data(await alice.post(f"/api/v1/targets/{tid}/health-check"))
        assert health["status"] == "unhealthy" and "503" in health["detail"]
        assert data(await alice.get(f"/api/v1/targets/{tid}"))["health"]["status"] == "unhealthy"

        # The sticker and the drift against what the server has installed.
        error(await alice.get(f"/api/v1/targets/{tid}/sticker"), 404, "STICKER_NOT_FOUND")
        components = [
            {"name": "shop", "appName": "shop", "version": "1.0.0", "digest": "sha256:" + "a" * 64}
        ]
        await record_sticker(releases.runtime, "acme", tid, components)
        sticker = data(await alice.get(f"/api/v1/targets/{tid}/sticker"))
        assert sticker["components"] == components
        server.apps = [{"name": "shop", "path": "/x", "versions": ["1.0.0"]}]
        drift = data(await alice.get(f"/api/v1/targets/{tid}/drift"))
        assert drift["drifted"] is False
        server.apps = [{"name": "shop", "path": "/x", "versions": ["0.9.0"]}]
        drift = data(await alice.get(f"/api/v1/targets/{tid}/drift"))
        assert drift["drifted"] is True and drift["items"][0]["status"] == "version_missing"
        assert f"Bearer {SECRET_KEY}" in server.seen_keys

        # Changing the URL with the mask keeps the key.
        changed = data(
            await alice.put(
                f"/api/v1/targets/{tid}",
                json={"connection": {"url": server.url + "/", "apiKey": "********"}},
            )
        )
        assert changed["connection"]["apiKey"] == "********"
        server.seen_keys.clear()
        data(await alice.get(f"/api/v1/targets/{tid}/drift"))
        assert server.seen_keys == [f"Bearer {SECRET_KEY}"]

    # The server is gone: unhealthy, drift unreachable.
    health = data(await alice.post(f"/api/v1/targets/{tid}/health-check"))
    assert health["status"] == "unhealthy"
    error(await alice.get(f"/api/v1/targets/{tid}/drift"), 422, "TARGET_UNREACHABLE")
    for path in ("/api/v1/targets", f"/api/v1/targets/{tid}"):
        assert SECRET_KEY not in (await alice.get(path)).text
    auditor = releases.user("auditor", permissions=["audit:read"])
    entries = await audit_entries(auditor, "releases.target.updated")
    mine = [e for e in entries if e["action"] == "releases.target.created"]
    assert mine and mine[0]["identity"] == "alice" and mine[0]["tenant"] == "acme"
    assert mine[0]["target"] == tid and mine[0]["time"]
    assert SECRET_KEY not in str(entries)


async def test_script_target(releases, tmp_path):
    alice = releases.user()
    env = await environment(alice, "dev")
    script = tmp_path / "deploy.sh"
    status = tmp_path / "status.sh"
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "box",
                "type": "script",
                "environmentId": env["id"],
                "connection": {
                    "deployScript": str(script),
                    "statusScript": str(status),
                    "secrets": {"TOKEN": "hush-hush-value"},
                },
            },
        ),
        201,
    )
    assert target["connection"]["secrets"] == {"TOKEN": "********"}
    tid = target["id"]
    assert data(await alice.post(f"/api/v1/targets/{tid}/health-check"))["status"] == "unhealthy"
    script.write_text("#!/bin/sh\nexit 0\n")
    status.write_text(
        '#!/bin/sh\n[ "$TOKEN" = hush-hush-value ] || exit 3\n'
        'echo \'{"components": [{"name": "api", "version": "2", "digest": null}]}\'\n'
    )
    for path in (script, status):
        os.chmod(path, stat.S_IRWXU)
    assert data(await alice.post(f"/api/v1/targets/{tid}/health-check"))["status"] == "healthy"
    await record_sticker(
        releases.runtime, "acme", tid, [{"name": "api", "version": "1", "digest": None}]
    )
    drift = data(await alice.get(f"/api/v1/targets/{tid}/drift"))
    assert drift["drifted"] is True and drift["items"][0]["status"] == "changed"
    assert "hush-hush-value" not in (await alice.get(f"/api/v1/targets/{tid}")).text


async def test_bad_targets(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    for connection, field in (
        ({"url": "file:///etc/passwd"}, "connection.url"),
        ({"url": "http://x", "extra": 1}, "connection.extra"),
        ({}, "connection.url"),
    ):
        problem = error(
            await alice.post(
                "/api/v1/targets",
                json={
                    "name": "t",
                    "type": "courtyard",
                    "environmentId": env["id"],
                    "connection": connection,
                },
            ),
            400,
            "VALIDATION_ERROR",
        )
        assert problem["validationErrors"][0]["field"] == field
    error(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "t",
                "type": "courtyard",
                "environmentId": "nope",
                "connection": {"url": "http://127.0.0.1:9"},
            },
        ),
        404,
        "ENVIRONMENT_NOT_FOUND",
    )
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "t",
                "type": "courtyard",
                "environmentId": env["id"],
                "connection": {"url": "http://127.0.0.1:9"},
            },
        ),
        201,
    )
    error(await alice.delete(f"/api/v1/environments/{env['id']}"), 409, "ENVIRONMENT_IN_USE")
    data(await alice.delete(f"/api/v1/targets/{target['id']}"), 204)
    data(await alice.delete(f"/api/v1/environments/{env['id']}"), 204)


async def test_agents_token_is_shown_once_and_stored_hashed(releases):
    alice = releases.user()
    agent = data(
        await alice.post(
            "/api/v1/agents/register",
            json={"name": "agent-1", "capabilities": ["deploy", "courtyard"]},
        ),
        201,
    )
    token = agent["token"]
    aid = agent["id"]
    assert token.startswith("rla_") and agent["status"] == "registered"
    for path in ("/api/v1/agents", f"/api/v1/agents/{aid}"):
        text = (await alice.get(path)).text
        assert token not in text and "tokenHash" not in text

    from courtyard_releases.tables import Agent

    async with releases.runtime.dispatcher.services.database.session() as session:
        row = await session.get(Agent, aid)
    assert row.token_hash != token and token not in row.token_hash

    # A heartbeat is the agent's own: its token, no JWT, no Origin.
    beat = await releases.client.post(
        f"/api/v1/agents/{aid}/heartbeat",
        headers={"X-Agent-Token": token, "Origin": ""},
        json={"capabilities": ["deploy"], "load": {"cpu": 0.5, "tasks": 1}},
    )
    beat = data(beat)
    assert beat["status"] == "online" and beat["load"] == {"cpu": 0.5, "tasks": 1}
    wrong = await releases.client.post(
        f"/api/v1/agents/{aid}/heartbeat", headers={"X-Agent-Token": token + "x"}, json={}
    )
    error(wrong, 401, "INVALID_AGENT_TOKEN")
    error(
        await releases.client.post(f"/api/v1/agents/{aid}/heartbeat", json={}),
        401,
        "INVALID_AGENT_TOKEN",
    )
    renamed = data(await alice.put(f"/api/v1/agents/{aid}", json={"name": "agent-one"}))
    assert renamed["name"] == "agent-one" and renamed["capabilities"] == ["deploy"]
    data(await alice.delete(f"/api/v1/agents/{aid}"), 204)
    gone = await releases.client.post(
        f"/api/v1/agents/{aid}/heartbeat", headers={"X-Agent-Token": token}, json={}
    )
    error(gone, 401, "INVALID_AGENT_TOKEN")
