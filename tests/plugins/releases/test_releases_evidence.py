"""Signed evidence packets, verified offline with the published key."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from releases_kit import data, error, pipeline, promote, record_deployment


def verify(public_b64: str, packet: str, signature_b64: str) -> bool:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    try:
        key.verify(base64.b64decode(signature_b64), packet.encode())
    except InvalidSignature:
        return False
    return True


async def test_packet_verifies_with_the_published_key(releases):
    alice, bob, carol = releases.user("alice"), releases.user("bob"), releases.user("carol")
    world = await pipeline(alice)
    rid = world["release"]["id"]
    await record_deployment(releases.runtime, "acme", rid, world["dev"]["id"])
    pid = data(await promote(alice, rid, world["prod"]["id"]), 201)["id"]
    await bob.post(f"/api/v1/promotions/{pid}/approve")
    await carol.post(f"/api/v1/promotions/{pid}/approve")

    decisions = '{"kind": "promotion.decision"}'
    [packet] = data(await alice.get("/api/v1/evidence-packets", params={"filter": decisions}))
    download = data(await alice.get(f"/api/v1/evidence-packets/{packet['id']}/download"))
    [key] = data(await alice.get("/api/v1/signing-keys"))
    assert set(key) == {"id", "algorithm", "publicKey", "encoding", "createdAt"}
    assert download["keyId"] == key["id"] and download["algorithm"] == "Ed25519"

    raw = download["packet"]
    # Canonical JSON: sorted keys, no insignificant whitespace.
    parsed = json.loads(raw)
    assert raw == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(raw.encode()).hexdigest() == download["sha256"] == packet["sha256"]
    assert verify(key["publicKey"], raw, download["signature"])
    assert not verify(key["publicKey"], raw.replace("carol", "mallory"), download["signature"])

    assert parsed["release"]["components"][0]["digest"].startswith("sha256:")
    assert [a["approver"] for a in parsed["approvals"]] == ["bob", "carol"]
    assert [g["gate"] for g in parsed["gates"]] == [
        "freeze-window",
        "approvals",
        "policy",
        "schedule",
        "dependency",
    ]
    assert all(g["passed"] for g in parsed["gates"])
    assert parsed["promotion"]["decidedBy"] == "carol"

    # The private key never leaves: not in any answer, sealed in the database.
    for path in (
        "/api/v1/signing-keys",
        f"/api/v1/evidence-packets/{packet['id']}",
        f"/api/v1/promotions/{pid}/evidence",
    ):
        assert "private" not in (await alice.get(path)).text.lower()

    # Another tenant has its own key, and cannot read this packet.
    other = releases.user("olga", tenant="globex")
    error(
        await other.get(f"/api/v1/evidence-packets/{packet['id']}/download"),
        404,
        "EVIDENCE_PACKET_NOT_FOUND",
    )
    assert data(await other.get("/api/v1/signing-keys")) == []


async def test_private_key_is_sealed_at_rest(releases):
    alice = releases.user()
    world = await pipeline(alice)
    data(await promote(alice, world["release"]["id"], world["dev"]["id"]), 201)
    from courtyard_releases.tables import SigningKey
    from sqlmodel import select

    async with releases.runtime.dispatcher.services.database.session() as session:
        [row] = (await session.exec(select(SigningKey))).all()
    assert row.private_key.startswith("gAAAA")  # a Fernet token, not the raw key
    assert len(base64.b64decode(row.public_key)) == 32


async def test_audit_report_over_a_time_range(releases):
    alice, bob = releases.user("alice"), releases.user("bob")
    world = await pipeline(alice)
    rid = world["release"]["id"]
    await record_deployment(releases.runtime, "acme", rid, world["dev"]["id"])
    pid = data(await promote(alice, rid, world["prod"]["id"]), 201)["id"]
    await bob.post(f"/api/v1/promotions/{pid}/approve", json={"comment": "fine"})

    report = data(
        await alice.post(
            "/api/v1/audit-reports",
            json={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        ),
        201,
    )
    content = report["content"]
    assert [p["id"] for p in content["promotions"]] == [pid]
    assert content["approvals"] == [
        {
            "promotionId": pid,
            "approver": "bob",
            "decision": "approved",
            "at": content["approvals"][0]["at"],
        }
    ]
    download = data(await alice.get(f"/api/v1/audit-reports/{report['id']}/download"))
    [key] = data(await alice.get("/api/v1/signing-keys"))
    assert verify(key["publicKey"], download["report"], download["signature"])
    assert hashlib.sha256(download["report"].encode()).hexdigest() == download["sha256"]
    assert data(await alice.get(f"/api/v1/audit-reports/{report['id']}"))["content"] == content

    empty = data(
        await alice.post(
            "/api/v1/audit-reports",
            json={"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"},
        ),
        201,
    )
    assert empty["content"]["promotions"] == [] and empty["content"]["approvals"] == []
    error(
        await alice.post(
            "/api/v1/audit-reports",
            json={"from": "2001-01-01T00:00:00Z", "to": "2000-01-01T00:00:00Z"},
        ),
        400,
        "VALIDATION_ERROR",
    )
    other = releases.user("olga", tenant="globex")
    error(await other.get(f"/api/v1/audit-reports/{report['id']}"), 404, "AUDIT_REPORT_NOT_FOUND")
