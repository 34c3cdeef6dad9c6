"""RELEVI: signed evidence packets of decided promotions, the tenants' public keys, and
version stickers.

A packet is canonical JSON (`crypto.canonical`); its `sha256` is that of those exact
bytes, and its `signature` is the tenant's Ed25519 signature of them. `download` answers
the bytes as a string with the signature and the public key, so that anyone can verify
the packet offline."""

from __future__ import annotations

import hashlib
from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from . import crypto, listing
from .common import READ, Api, answers, blueprint, listed, loads
from .envelope import ReleasesError, not_found, now_text, ok
from .listing import Field
from .tables import (
    Approval,
    Environment,
    EvidencePacket,
    Promotion,
    Release,
    SigningKey,
    Sticker,
)
from .targets import sticker_data

SCHEMA = "courtyard.releases/evidence@1"
ALGORITHM = "Ed25519"
FIELDS = [
    Field("kind", EvidencePacket.kind),
    Field("promotionId", EvidencePacket.promotion_id),
    Field("releaseId", EvidencePacket.release_id),
    Field("environmentId", EvidencePacket.environment_id),
    Field("createdAt", EvidencePacket.created_at, "datetime"),
]
STICKER_FIELDS = [
    Field("targetId", Sticker.target_id),
    Field("environmentId", Sticker.environment_id),
    Field("releaseId", Sticker.release_id),
    Field("deployedAt", Sticker.deployed_at, "datetime"),
]


async def signing_key(api: Api, tenant: str) -> SigningKey:
    """The tenant's key, made on first use (two first uses at once keep one key)."""
    async with api.session_for(tenant) as session:
        key = (await session.exec(select(SigningKey))).first()
        if key is not None:
            return key
        public, private = crypto.new_signing_key()
        key = SigningKey(
            tenant_id=tenant,
            public_key=public,
            private_key=api.sealer.seal(private),
            created_at=now_text(),
        )
        session.add(key)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            return (await session.exec(select(SigningKey))).one()
    await api.audit("signing_key.created", key.id)
    return key


def packet_content(
    tenant: str,
    promotion: Promotion,
    release: Release,
    environment: Environment,
    approvals: list[Approval],
    gates: list[dict[str, Any]],
) -> dict[str, Any]:
    """What a decided promotion's packet says."""
    return {
        "schema": SCHEMA,
        "kind": "promotion.decision",
        "tenant": tenant,
        "promotion": {
            "id": promotion.id,
            "status": promotion.status,
            "requestedBy": promotion.requested_by,
            "requestedAt": promotion.created_at,
            "reason": promotion.reason,
            "scheduledAt": promotion.scheduled_at,
            "dependsOn": loads(promotion.depends_on),
            "decidedAt": promotion.decided_at,
            "decidedBy": promotion.decided_by,
        },
        "release": {
            "id": release.id,
            "name": release.name,
            "status": release.status,
            "createdBy": release.created_by,
            "finalizedAt": release.finalized_at,
            "finalizedBy": release.finalized_by,
            "components": loads(release.components),
        },
        "environment": {
            "id": environment.id,
            "name": environment.name,
            "order": environment.order_index,
            "requiredApprovals": environment.required_approvals,
            "separationOfDuties": environment.separation_of_duties,
        },
        "gates": gates,
        "approvals": [
            {
                "approver": a.approver,
                "decision": a.decision,
                "comment": a.comment,
                "at": a.created_at,
            }
            for a in approvals
        ],
        "deployments": [],
    }


def sign_packet(api: Api, key: SigningKey, content: dict[str, Any]) -> tuple[str, str, str]:
    """(canonical JSON, its sha256, the signature)."""
    raw = crypto.canonical(content)
    signature = crypto.sign(private_key(api, key), raw)
    return raw.decode(), hashlib.sha256(raw).hexdigest(), signature


def private_key(api: Api, key: SigningKey) -> str:
    """The tenant's private key, for signing only; a clear 500 when it was sealed with
    another `secret_key` (nothing is signed, and the decision it would record is not)."""
    try:
        return api.sealer.open(key.private_key)
    except ValueError:
        raise ReleasesError(
            500,
            "SIGNING_KEY_UNREADABLE",
            "the tenant's signing key was sealed with another secret_key: restore that key",
        ) from None


def packet_data(packet: EvidencePacket, key: SigningKey | None) -> dict[str, Any]:
    """A packet as answered: its content, digest and signature."""
    return {
        "id": packet.id,
        "kind": packet.kind,
        "promotionId": packet.promotion_id,
        "releaseId": packet.release_id,
        "environmentId": packet.environment_id,
        "sha256": packet.sha256,
        "signature": packet.signature,
        "algorithm": ALGORITHM,
        "keyId": packet.key_id,
        "publicKey": key.public_key if key is not None else None,
        "content": loads(packet.content),
        "createdAt": packet.created_at,
    }


def key_data(key: SigningKey) -> dict[str, Any]:
    """A tenant's public key (never the private half)."""
    return {
        "id": key.id,
        "algorithm": ALGORITHM,
        "publicKey": key.public_key,
        "encoding": "base64 of the raw 32-byte Ed25519 public key",
        "createdAt": key.created_at,
    }


async def get_packet(session: Any, packet_id: str) -> EvidencePacket:
    """The tenant's packet; 404 `EVIDENCE_PACKET_NOT_FOUND`."""
    packet = await session.get(EvidencePacket, packet_id)
    if packet is None:
        raise not_found("evidence_packet", packet_id)
    return packet


async def key_of(session: Any, packet: EvidencePacket) -> SigningKey | None:
    """The key that signed `packet`."""
    return await session.get(SigningKey, packet.key_id)


def download_data(packet: EvidencePacket, key: SigningKey | None) -> dict[str, Any]:
    """The exact signed bytes (as a string), with what verifies them."""
    return {
        "id": packet.id,
        "packet": packet.content,
        "sha256": packet.sha256,
        "signature": packet.signature,
        "algorithm": ALGORITHM,
        "keyId": packet.key_id,
        "publicKey": key.public_key if key is not None else None,
    }


def routes(api: Api) -> Blueprint:
    """The evidence, key and sticker routes."""
    bp = blueprint("evidence")

    @bp.get("/evidence-packets")
    @require(READ)
    @listed("The evidence packets")
    async def list_packets() -> Response:
        query = listing.parse(request.args, FIELDS, "-createdAt")
        async with api.session() as session:
            rows, pages = await listing.page(
                session, select(EvidencePacket), query, EvidencePacket.id
            )
            keys = {k.id: k for k in (await session.exec(select(SigningKey))).all()}
        return ok([packet_data(r, keys.get(r.key_id)) for r in rows], pagination=pages)

    @bp.get("/evidence-packets/<packet_id>")
    @require(READ)
    @answers(200, "The evidence packet")
    @errors((404, "EVIDENCE_PACKET_NOT_FOUND"))
    async def get_packet_route(packet_id: str) -> Response:
        async with api.session() as session:
            packet = await get_packet(session, packet_id)
            return ok(packet_data(packet, await key_of(session, packet)))

    @bp.get("/evidence-packets/<packet_id>/download")
    @require(READ)
    @answers(200, "The signed bytes, their sha256, the signature and the public key")
    @errors((404, "EVIDENCE_PACKET_NOT_FOUND"))
    async def download(packet_id: str) -> Response:
        async with api.session() as session:
            packet = await get_packet(session, packet_id)
            return ok(download_data(packet, await key_of(session, packet)))

    @bp.get("/signing-keys")
    @require(READ)
    @answers(200, "The tenant's public evidence keys")
    async def signing_keys() -> Response:
        async with api.session() as session:
            keys = (await session.exec(select(SigningKey).order_by(SigningKey.created_at))).all()
        return ok([key_data(k) for k in keys])

    @bp.get("/version-stickers")
    @require(READ)
    @listed("What each target ran, newest first")
    async def list_stickers() -> Response:
        query = listing.parse(request.args, STICKER_FIELDS, "-deployedAt")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Sticker), query, Sticker.id)
        return ok([sticker_data(r) for r in rows], pagination=pages)

    @bp.get("/version-stickers/<sticker_id>")
    @require(READ)
    @answers(200, "The version sticker")
    @errors((404, "VERSION_STICKER_NOT_FOUND"))
    async def get_sticker(sticker_id: str) -> Response:
        async with api.session() as session:
            sticker = await session.get(Sticker, sticker_id)
        if sticker is None:
            raise not_found("version_sticker", sticker_id)
        return ok(sticker_data(sticker))

    return bp
