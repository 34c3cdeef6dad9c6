"""Events on the bus: promotions decided and deployments finished, per tenant."""

from __future__ import annotations

import asyncio

from releases_kit import data, environment, finished_job, pipeline, promote


async def test_decisions_and_deployments_are_published(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    world = await pipeline(alice)
    to_dev = data(await promote(alice, world["release"]["id"], world["dev"]["id"]), 201)
    await finished_job(alice, to_dev["id"])
    qa = await environment(alice, "qa", order=0, requiredApprovals=1)
    pending = data(await promote(alice, world["release"]["id"], qa["id"]), 201)["id"]
    await bob.post(f"/api/v1/promotions/{pending}/reject")

    bus = releases.runtime.dispatcher.services.events
    seen: list[tuple[str, str | None]] = []

    async def collect(tenant: str | None) -> list[str]:
        topics = []
        async with bus.subscribe("releases.*", last_event_id="0-0", tenant=tenant) as events:
            try:
                async with asyncio.timeout(0.2):
                    async for event in events:
                        topics.append(event.topic)
                        seen.append((event.topic, event.tenant))
            except TimeoutError:
                pass
        return topics

    topics = await collect("acme")
    assert topics == [
        "releases.promotion.approved",
        "releases.deployment.failed",  # dev has no target
        "releases.promotion.pending_approval",
        "releases.promotion.rejected",
    ]
    assert {tenant for _, tenant in seen} == {"acme"}
    assert await collect("globex") == []
