"""The full path against a second, real Courtyard server on loopback."""

from __future__ import annotations

import httpx
import pytest
from releases_kit import app_component, data, environment, finished_job, promote, upload


@pytest.mark.slow
async def test_release_deployed_to_a_real_courtyard_server(releases, courtyard_server):
    server = courtyard_server(only_plugins=[])
    key = server.create_key(roles=["editor"])
    alice, bob, carol = releases.user("alice"), releases.user("bob"), releases.user("carol")
    dev = await environment(alice, "dev", order=1)
    prod = await environment(alice, "prod", order=2, requiredApprovals=2, separationOfDuties=True)
    for env in (dev, prod):
        target = data(
            await alice.post(
                "/api/v1/targets",
                json={
                    "name": f"server-{env['name']}",
                    "type": "courtyard",
                    "environmentId": env["id"],
                    "connection": {"url": server.url, "apiKey": key},
                },
            ),
            201,
        )
        health = data(await alice.post(f"/api/v1/targets/{target['id']}/health-check"))
        assert health["status"] == "healthy", health
    shop = await app_component(alice)
    await upload(alice, shop["id"], "1.0.0", "hello from the release")
    release = data(await alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})

    to_dev = data(await promote(alice, release["id"], dev["id"]), 201)
    job = await finished_job(alice, to_dev["id"], timeout=30)
    assert job["status"] == "succeeded", job
    assert "hello from the release" in httpx.get(f"{server.url}/shop/").text

    to_prod = data(await promote(alice, release["id"], prod["id"]), 201)["id"]
    await bob.post(f"/api/v1/promotions/{to_prod}/approve")
    final = data(await carol.post(f"/api/v1/promotions/{to_prod}/approve"))
    assert final["status"] == "approved"
    job = await finished_job(alice, to_prod, timeout=30)
    assert job["status"] == "succeeded", job
    target = job["tasks"][0]["targetId"]
    drift = data(await alice.get(f"/api/v1/targets/{target}/drift"))
    assert drift["drifted"] is False, drift
