"""Promotions through their gates, approvals with separation of duties, the state
machine, and concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from releases_kit import (
    DIGEST_A,
    data,
    environment,
    error,
    finalized_release,
    image_component,
    pipeline,
    promote,
    record_deployment,
)


def at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_no_approval_needed_is_approved_at_once_with_evidence(releases):
    alice = releases.user()
    world = await pipeline(alice)
    promotion = data(await promote(alice, world["release"]["id"], world["dev"]["id"]), 201)
    assert promotion["status"] == "approved"
    assert [g["gate"] for g in promotion["gates"]] == [
        "freeze-window",
        "approvals",
        "policy",
        "schedule",
        "dependency",
    ]
    packet = data(await alice.get(f"/api/v1/promotions/{promotion['id']}/evidence"))
    assert packet["content"]["promotion"]["status"] == "approved"


async def test_two_approvals_with_separation_of_duties(releases_db):
    releases = releases_db
    alice = releases.user("alice")  # the release's author and the requester
    bob, carol = releases.user("bob"), releases.user("carol")
    world = await pipeline(alice)
    rid, prod = world["release"]["id"], world["prod"]["id"]

    # Policy gate: not deployed to dev yet.
    problem = error(await promote(alice, rid, prod), 422, "PROMOTION_BLOCKED")
    assert [g["gate"] for g in problem["details"]["gates"]] == ["policy"]
    assert "dev" in problem["details"]["gates"][0]["reason"]
    await record_deployment(releases.runtime, "acme", rid, world["dev"]["id"])

    promotion = data(await promote(alice, rid, prod, reason="ship it"), 201)
    pid = promotion["id"]
    assert promotion["status"] == "pending_approval"
    error(await promote(alice, rid, prod), 409, "PROMOTION_EXISTS")

    error(await alice.post(f"/api/v1/promotions/{pid}/approve"), 422, "SEPARATION_OF_DUTIES")
    pending = data(await bob.get("/api/v1/my/pending-approvals"))
    assert [p["id"] for p in pending] == [pid]
    assert data(await alice.get("/api/v1/my/pending-approvals")) == []

    after_bob = data(await bob.post(f"/api/v1/promotions/{pid}/approve", json={"comment": "ok"}))
    assert after_bob["status"] == "pending_approval"
    error(await bob.post(f"/api/v1/promotions/{pid}/approve"), 409, "ALREADY_DECIDED")
    assert data(await bob.get("/api/v1/my/pending-approvals")) == []
    decision = data(await bob.get(f"/api/v1/promotions/{pid}/decision"))
    approvals_gate = next(g for g in decision["gates"] if g["gate"] == "approvals")
    assert approvals_gate["passed"] is False and approvals_gate["reason"] == "1 of 2 approvals"

    final = data(await carol.post(f"/api/v1/promotions/{pid}/approve"))
    assert final["status"] == "approved" and final["decidedBy"] == "carol"
    approvals = data(await alice.get(f"/api/v1/promotions/{pid}/approvals"))
    assert [a["approver"] for a in approvals] == ["bob", "carol"]
    decision = data(await alice.get(f"/api/v1/promotions/{pid}/decision"))
    assert decision["live"] is False and all(g["passed"] for g in decision["gates"])
    # The state machine: an approved promotion is not approved, rejected or cancelled again.
    dave = releases.user("dave")
    error(await dave.post(f"/api/v1/promotions/{pid}/approve"), 409, "INVALID_STATE_TRANSITION")
    error(await dave.post(f"/api/v1/promotions/{pid}/reject"), 409, "INVALID_STATE_TRANSITION")
    error(await alice.post(f"/api/v1/promotions/{pid}/cancel"), 409, "INVALID_STATE_TRANSITION")


async def test_without_separation_of_duties_the_requester_may_approve(releases):
    alice = releases.user()
    env = await environment(alice, "only", requiredApprovals=1)
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    pid = data(await promote(alice, release["id"], env["id"]), 201)["id"]
    assert data(await alice.post(f"/api/v1/promotions/{pid}/approve"))["status"] == "approved"


async def test_reject_and_cancel(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    env = await environment(alice, "qa", requiredApprovals=1, separationOfDuties=True)
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")

    first = data(await promote(alice, release["id"], env["id"]), 201)["id"]
    rejected = data(await bob.post(f"/api/v1/promotions/{first}/reject", json={"comment": "no"}))
    assert rejected["status"] == "rejected"
    packet = data(await bob.get(f"/api/v1/promotions/{first}/evidence"))
    assert packet["content"]["approvals"][0]["decision"] == "rejected"

    second = data(await promote(alice, release["id"], env["id"]), 201)["id"]
    reader = releases.user("eve", permissions=["releases:read", "releases:write"])
    error(await reader.post(f"/api/v1/promotions/{second}/cancel"), 403, "AUTHORIZATION_FAILED")
    assert data(await alice.post(f"/api/v1/promotions/{second}/cancel"))["status"] == "cancelled"
    error(await bob.post(f"/api/v1/promotions/{second}/approve"), 409, "INVALID_STATE_TRANSITION")
    error(await alice.post(f"/api/v1/promotions/{second}/cancel"), 409, "INVALID_STATE_TRANSITION")
    error(await bob.get(f"/api/v1/promotions/{second}/evidence"), 404, "EVIDENCE_PACKET_NOT_FOUND")


async def test_freeze_window_blocks_except_for_exceptions(releases):
    alice = releases.user("alice")
    oncall = releases.user("zoe", roles=["oncall"])
    env = await environment(alice, "dev")
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    window = data(
        await alice.post(
            f"/api/v1/environments/{env['id']}/freeze-windows",
            json={
                "startsAt": at(timedelta(hours=-1)),
                "endsAt": at(timedelta(hours=1)),
                "reason": "holidays",
                "exceptions": {"users": ["hotfixer"], "roles": ["oncall"]},
            },
        ),
        201,
    )
    problem = error(await promote(alice, release["id"], env["id"]), 422, "PROMOTION_BLOCKED")
    [gate] = problem["details"]["gates"]
    assert gate["gate"] == "freeze-window" and "holidays" in gate["reason"]
    hotfixer = releases.user("hotfixer")
    assert data(await promote(hotfixer, release["id"], env["id"]), 201)["status"] == "approved"
    assert data(await promote(oncall, release["id"], env["id"]), 201)["status"] == "approved"

    # A window that is over, or not begun, does not block.
    data(await alice.delete(f"/api/v1/environments/{env['id']}/freeze-windows/{window['id']}"), 204)
    data(
        await alice.post(
            f"/api/v1/environments/{env['id']}/freeze-windows",
            json={"startsAt": at(timedelta(hours=1)), "endsAt": at(timedelta(hours=2))},
        ),
        201,
    )
    assert data(await promote(alice, release["id"], env["id"]), 201)["status"] == "approved"
    error(
        await alice.post(
            f"/api/v1/environments/{env['id']}/freeze-windows",
            json={"startsAt": at(timedelta(hours=2)), "endsAt": at(timedelta(hours=1))},
        ),
        400,
        "VALIDATION_ERROR",
    )


async def test_policy_needs_pinned_digests(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    loose = await image_component(alice, "loose", [{"version": "latest"}])
    release = await finalized_release(alice, "r1", loose["id"], "latest")
    problem = error(await promote(alice, release["id"], env["id"]), 422, "PROMOTION_BLOCKED")
    [gate] = problem["details"]["gates"]
    assert gate["gate"] == "policy" and gate["details"]["unpinned"] == ["loose"]


async def test_schedule_gate(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    env = await environment(alice, "dev")
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    later = at(timedelta(hours=3))
    problem = error(
        await promote(alice, release["id"], env["id"], scheduledAt=later), 422, "PROMOTION_BLOCKED"
    )
    assert problem["details"]["gates"][0]["gate"] == "schedule"
    past = at(timedelta(minutes=-1))
    assert (
        data(await promote(alice, release["id"], env["id"], scheduledAt=past), 201)["status"]
        == "approved"
    )

    # With approvals to wait for, the promotion waits; the deciding approval is blocked
    # until the time comes.
    gated = await environment(alice, "gated", order=0, requiredApprovals=1)
    pid = data(await promote(alice, release["id"], gated["id"], scheduledAt=later), 201)["id"]
    problem = error(await bob.post(f"/api/v1/promotions/{pid}/approve"), 422, "PROMOTION_BLOCKED")
    assert [g["gate"] for g in problem["details"]["gates"]] == ["schedule"]
    assert data(await bob.get(f"/api/v1/promotions/{pid}/approvals")) == []


async def test_dependency_gate(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    api = await image_component(
        alice, "api", [{"version": "1", "digest": DIGEST_A}, {"version": "2", "digest": DIGEST_A}]
    )
    base = await finalized_release(alice, "base", api["id"], "1")
    top = await finalized_release(alice, "top", api["id"], "2")
    problem = error(
        await promote(alice, top["id"], env["id"], dependsOn=[base["id"]]), 422, "PROMOTION_BLOCKED"
    )
    assert problem["details"]["gates"][0]["details"]["missing"] == [base["id"]]
    data(await promote(alice, base["id"], env["id"]), 201)
    data(await promote(alice, top["id"], env["id"], dependsOn=[base["id"]]), 201)
    error(await promote(alice, top["id"], env["id"], dependsOn=["nope"]), 400, "VALIDATION_ERROR")


async def test_preview_gates_creates_nothing(releases):
    alice = releases.user()
    world = await pipeline(alice)
    preview = data(
        await alice.post(
            "/api/v1/promotions/preview-gates",
            json={"releaseId": world["release"]["id"], "environmentId": world["prod"]["id"]},
        )
    )
    assert preview["blockedBy"] == ["policy"] and preview["wouldBeBlocked"] is True
    approvals = next(g for g in preview["gates"] if g["gate"] == "approvals")
    assert approvals["details"]["required"] == 2
    assert data(await alice.get("/api/v1/promotions")) == []


async def test_drafts_cannot_be_promoted(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    draft = data(await alice.post("/api/v1/releases", json={"name": "d"}), 201)
    error(await promote(alice, draft["id"], env["id"]), 422, "RELEASE_NOT_FINALIZED")
    error(await promote(alice, "nope", env["id"]), 404, "RELEASE_NOT_FOUND")


async def test_approval_policies(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    lead = releases.user("lead", roles=["release-lead"])
    env = await environment(alice, "prod")
    policy = data(
        await alice.post(
            "/api/v1/approval-policies",
            json={
                "name": "leads",
                "environmentId": env["id"],
                "requiredApprovals": 1,
                "approverRoles": ["release-lead"],
            },
        ),
        201,
    )
    assert data(await alice.get("/api/v1/approval-policies"))[0]["id"] == policy["id"]
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    pid = data(await promote(alice, release["id"], env["id"]), 201)["id"]
    error(await bob.post(f"/api/v1/promotions/{pid}/approve"), 403, "APPROVER_NOT_ELIGIBLE")
    assert data(await lead.post(f"/api/v1/promotions/{pid}/approve"))["status"] == "approved"


async def test_concurrent_approvals_decide_once(releases_db):
    releases = releases_db
    alice = releases.user("alice")
    env = await environment(alice, "prod", requiredApprovals=2, separationOfDuties=True)
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    pid = data(await promote(alice, release["id"], env["id"]), 201)["id"]
    approvers = [releases.user(f"user-{i}") for i in range(4)]
    answers = await asyncio.gather(
        *(u.post(f"/api/v1/promotions/{pid}/approve") for u in approvers)
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 2 and statuses.count(409) == 2, [a.text for a in answers]
    approvals = data(await alice.get(f"/api/v1/promotions/{pid}/approvals"))
    assert len(approvals) == 2
    packets = data(
        await alice.get(
            "/api/v1/evidence-packets",
            params={"filter": f'{{"promotionId": "{pid}", "kind": "promotion.decision"}}'},
        )
    )
    assert len(packets) == 1


async def test_concurrent_promotions_keep_one_pending(releases_db):
    releases = releases_db
    alice = releases.user("alice")
    env = await environment(alice, "prod", requiredApprovals=1)
    api = await image_component(alice, "api", [{"version": "1", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1")
    answers = await asyncio.gather(*(promote(alice, release["id"], env["id"]) for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
