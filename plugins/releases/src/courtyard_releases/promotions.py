"""PROMOT: `/api/v1/promotions[/{id}]`, `approve`, `reject`, `cancel`, `decision`,
`approvals`, `evidence` and `preview-gates`."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlmodel import select

from . import decide, gates, listing
from .common import APPROVE, READ, WRITE, Api, Body, answers, blueprint, body, caller, listed, loads
from .envelope import ReleasesError, created, now_text, ok
from .environments import get_environment
from .evidence import key_of, packet_data
from .listing import Field, timestamp
from .releases import get_release
from .tables import Approval, EvidencePacket, Promotion

FIELDS = [
    Field("status", Promotion.status),
    Field("releaseId", Promotion.release_id),
    Field("environmentId", Promotion.environment_id),
    Field("requestedBy", Promotion.requested_by),
    Field("createdAt", Promotion.created_at, "datetime"),
    Field("decidedAt", Promotion.decided_at, "datetime"),
]
APPROVAL_FIELDS = [
    Field("approver", Approval.approver),
    Field("decision", Approval.decision),
    Field("createdAt", Approval.created_at, "datetime"),
]
BLOCKED = (422, "PROMOTION_BLOCKED")


class PromotionBody(Body):
    """A request to promote a finalized release into an environment."""

    release_id: str = Spec(min_length=1, max_length=32)
    environment_id: str = Spec(min_length=1, max_length=32)
    reason: str = Spec(default="", max_length=1000)
    scheduled_at: str | None = Spec(default=None, max_length=64)
    depends_on: list[str] = Spec(default_factory=list, max_length=20)


class Verdict(Body):
    """An approver's comment."""

    comment: str = Spec(default="", max_length=2000)


def promotion_data(promotion: Promotion) -> dict[str, Any]:
    """A promotion as answered."""
    return {
        "id": promotion.id,
        "releaseId": promotion.release_id,
        "environmentId": promotion.environment_id,
        "status": promotion.status,
        "requestedBy": promotion.requested_by,
        "reason": promotion.reason,
        "scheduledAt": promotion.scheduled_at,
        "dependsOn": loads(promotion.depends_on),
        "gates": loads(promotion.gates),
        "createdAt": promotion.created_at,
        "updatedAt": promotion.updated_at,
        "decidedAt": promotion.decided_at,
        "decidedBy": promotion.decided_by,
    }


def approval_data(approval: Approval) -> dict[str, Any]:
    """An approver's decision as answered."""
    return {
        "id": approval.id,
        "promotionId": approval.promotion_id,
        "approver": approval.approver,
        "decision": approval.decision,
        "comment": approval.comment,
        "createdAt": approval.created_at,
    }


def _schedule(spec: PromotionBody) -> str | None:
    return None if spec.scheduled_at is None else timestamp(spec.scheduled_at, "scheduledAt")


def routes(api: Api) -> Blueprint:
    """The promotion routes."""
    bp = blueprint("promotions")

    @bp.post("/promotions")
    @require(WRITE)
    @document_request(PromotionBody)
    @answers(201, "The promotion: pending approval, or approved when none is needed")
    @errors(
        (404, "RELEASE_NOT_FOUND"),
        (404, "ENVIRONMENT_NOT_FOUND"),
        (409, "PROMOTION_EXISTS"),
        BLOCKED,
        (422, "RELEASE_NOT_FINALIZED"),
    )
    async def create_promotion() -> Response:
        spec = await body(PromotionBody)
        promotion = await decide.create(
            api,
            caller(),
            spec.release_id,
            spec.environment_id,
            spec.reason,
            _schedule(spec),
            list(dict.fromkeys(spec.depends_on)),
        )
        return created(promotion_data(promotion))

    @bp.post("/promotions/preview-gates")
    @require(READ)
    @document_request(PromotionBody)
    @answers(200, "The gates such a promotion would meet now; nothing is created")
    @errors((404, "RELEASE_NOT_FOUND"), (404, "ENVIRONMENT_NOT_FOUND"))
    async def preview() -> Response:
        spec = await body(PromotionBody)
        who, now = caller(), now_text()
        async with api.session() as session:
            release = await get_release(session, spec.release_id)
            environment = await get_environment(session, spec.environment_id)
            ask = gates.Request(
                release, environment, who.subject, who.roles, _schedule(spec), spec.depends_on
            )
            results = await gates.evaluate(session, ask, now, who.subject)
        blocking = gates.failing(results, gates.BLOCKING)
        return ok(
            {
                "releaseId": release.id,
                "environmentId": environment.id,
                "releaseFinalized": release.status == "finalized",
                "gates": results,
                "blockedBy": [g["gate"] for g in blocking],
                "wouldBeBlocked": bool(blocking) or release.status != "finalized",
            }
        )

    @bp.get("/promotions")
    @require(READ)
    @listed("The promotions")
    async def list_promotions() -> Response:
        query = listing.parse(request.args, FIELDS, "-createdAt")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Promotion), query, Promotion.id)
        return ok([promotion_data(r) for r in rows], pagination=pages)

    @bp.get("/promotions/<promotion_id>")
    @require(READ)
    @answers(200, "The promotion")
    @errors((404, "PROMOTION_NOT_FOUND"))
    async def get_promotion(promotion_id: str) -> Response:
        async with api.session() as session:
            return ok(promotion_data(await decide.get_promotion(session, promotion_id)))

    async def verdict(promotion_id: str, decision: str) -> Response:
        spec = await body(Verdict)
        promotion = await decide.decide(api, caller(), promotion_id, decision, spec.comment)
        return ok(promotion_data(promotion))

    @bp.post("/promotions/<promotion_id>/approve")
    @require(APPROVE)
    @document_request(Verdict)
    @answers(200, "The promotion after the approval")
    @errors(
        (403, "APPROVER_NOT_ELIGIBLE"),
        (404, "PROMOTION_NOT_FOUND"),
        (409, "INVALID_STATE_TRANSITION"),
        (409, "ALREADY_DECIDED"),
        BLOCKED,
        (422, "SEPARATION_OF_DUTIES"),
    )
    async def approve(promotion_id: str) -> Response:
        return await verdict(promotion_id, "approved")

    @bp.post("/promotions/<promotion_id>/reject")
    @require(APPROVE)
    @document_request(Verdict)
    @answers(200, "The promotion, rejected")
    @errors(
        (403, "APPROVER_NOT_ELIGIBLE"),
        (404, "PROMOTION_NOT_FOUND"),
        (409, "INVALID_STATE_TRANSITION"),
        (409, "ALREADY_DECIDED"),
        (422, "SEPARATION_OF_DUTIES"),
    )
    async def reject(promotion_id: str) -> Response:
        return await verdict(promotion_id, "rejected")

    @bp.post("/promotions/<promotion_id>/cancel")
    @require(WRITE)
    @answers(200, "The promotion, cancelled")
    @errors((404, "PROMOTION_NOT_FOUND"), (409, "INVALID_STATE_TRANSITION"))
    async def cancel(promotion_id: str) -> Response:
        can_approve = current_identity().can(APPROVE)
        return ok(promotion_data(await decide.cancel(api, caller(), promotion_id, can_approve)))

    @bp.get("/promotions/<promotion_id>/decision")
    @require(READ)
    @answers(200, "Every gate's result with its reason, who and when")
    @errors((404, "PROMOTION_NOT_FOUND"))
    async def decision(promotion_id: str) -> Response:
        who = caller()
        async with api.session() as session:
            loaded = await decide.load(session, promotion_id)
            promotion = loaded.promotion
            live = promotion.status == "pending_approval"
            results = (
                await gates.evaluate(session, loaded.ask(), now_text(), who.subject)
                if live
                else loads(promotion.gates)
            )
        return ok(
            {
                "promotionId": promotion.id,
                "status": promotion.status,
                "live": live,
                "gates": results,
                "approvals": [approval_data(a) for a in loaded.approvals],
                "decidedAt": promotion.decided_at,
                "decidedBy": promotion.decided_by,
            }
        )

    @bp.get("/promotions/<promotion_id>/approvals")
    @require(READ)
    @listed("The approvers' decisions on the promotion")
    @errors((404, "PROMOTION_NOT_FOUND"))
    async def approvals(promotion_id: str) -> Response:
        query = listing.parse(request.args, APPROVAL_FIELDS, "createdAt")
        async with api.session() as session:
            await decide.get_promotion(session, promotion_id)
            statement = select(Approval).where(Approval.promotion_id == promotion_id)
            rows, pages = await listing.page(session, statement, query, Approval.id)
        return ok([approval_data(r) for r in rows], pagination=pages)

    @bp.get("/promotions/<promotion_id>/evidence")
    @require(READ)
    @answers(200, "The promotion's signed evidence packet")
    @errors((404, "PROMOTION_NOT_FOUND"), (404, "EVIDENCE_PACKET_NOT_FOUND"))
    async def evidence(promotion_id: str) -> Response:
        async with api.session() as session:
            await decide.get_promotion(session, promotion_id)
            packet = (
                await session.exec(
                    select(EvidencePacket)
                    .where(
                        EvidencePacket.promotion_id == promotion_id,
                        EvidencePacket.kind == "promotion.decision",
                    )
                    .order_by(EvidencePacket.created_at.desc())
                )
            ).first()
            if packet is None:
                raise ReleasesError(
                    404, "EVIDENCE_PACKET_NOT_FOUND", "the promotion is not decided yet"
                )
            return ok(packet_data(packet, await key_of(session, packet)))

    return bp
