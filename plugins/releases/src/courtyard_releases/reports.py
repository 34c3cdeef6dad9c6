"""RELEVI, audit reports: `POST /api/v1/audit-reports` gathers, for a time range, every
promotion asked for or decided, every approver's decision, every deployment and every
evidence packet (by its sha256) of the tenant into one canonical JSON document, signed
like evidence packets; `GET .../{id}` and `.../{id}/download` read it back."""

from __future__ import annotations

import hashlib
from typing import Any

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlalchemy import or_
from sqlmodel import select

from . import crypto
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, loads
from .envelope import created, invalid, not_found, now_text, ok
from .evidence import ALGORITHM, private_key, signing_key
from .listing import timestamp
from .tables import Approval, AuditReport, Deployment, EvidencePacket, Promotion, SigningKey

MAX_ROWS = 10_000  # of each kind in one report


class ReportBody(Body):
    """The time range of a report: `from` inclusive, `to` exclusive."""

    from_: str = Spec(alias="from", max_length=64)
    to: str = Spec(max_length=64)


def report_data(report: AuditReport, key: SigningKey | None, with_content: bool) -> dict:
    """A report as answered."""
    out: dict[str, Any] = {
        "id": report.id,
        "from": report.starts_at,
        "to": report.ends_at,
        "sha256": report.sha256,
        "signature": report.signature,
        "algorithm": ALGORITHM,
        "keyId": report.key_id,
        "publicKey": key.public_key if key is not None else None,
        "createdBy": report.created_by,
        "createdAt": report.created_at,
    }
    if with_content:
        out["content"] = loads(report.content)
    return out


async def gather(session: Any, tenant: str, start: str, end: str, by: str) -> dict[str, Any]:
    """What the tenant's records say about `[start, end)`."""

    def within(column: Any) -> Any:
        return (column >= start) & (column < end)

    promotions = (
        await session.exec(
            select(Promotion)
            .where(or_(within(Promotion.created_at), within(Promotion.decided_at)))
            .order_by(Promotion.created_at, Promotion.id)
            .limit(MAX_ROWS)
        )
    ).all()
    approvals = (
        await session.exec(
            select(Approval)
            .where(within(Approval.created_at))
            .order_by(Approval.created_at, Approval.id)
            .limit(MAX_ROWS)
        )
    ).all()
    jobs = (
        await session.exec(
            select(Deployment)
            .where(within(Deployment.created_at))
            .order_by(Deployment.created_at, Deployment.id)
            .limit(MAX_ROWS)
        )
    ).all()
    packets = (
        await session.exec(
            select(EvidencePacket)
            .where(within(EvidencePacket.created_at))
            .order_by(EvidencePacket.created_at, EvidencePacket.id)
            .limit(MAX_ROWS)
        )
    ).all()
    return {
        "schema": "courtyard.releases/audit-report@1",
        "tenant": tenant,
        "from": start,
        "to": end,
        "generatedAt": now_text(),
        "generatedBy": by,
        "promotions": [
            {
                "id": p.id,
                "releaseId": p.release_id,
                "environmentId": p.environment_id,
                "status": p.status,
                "requestedBy": p.requested_by,
                "requestedAt": p.created_at,
                "decidedBy": p.decided_by,
                "decidedAt": p.decided_at,
            }
            for p in promotions
        ],
        "approvals": [
            {
                "promotionId": a.promotion_id,
                "approver": a.approver,
                "decision": a.decision,
                "at": a.created_at,
            }
            for a in approvals
        ],
        "deployments": [
            {
                "id": j.id,
                "kind": j.kind,
                "releaseId": j.release_id,
                "environmentId": j.environment_id,
                "status": j.status,
                "requestedBy": j.requested_by,
                "createdAt": j.created_at,
                "finishedAt": j.finished_at,
            }
            for j in jobs
        ],
        "evidencePackets": [
            {"id": e.id, "kind": e.kind, "sha256": e.sha256, "createdAt": e.created_at}
            for e in packets
        ],
    }


def routes(api: Api) -> Blueprint:
    """The audit report routes."""
    bp = blueprint("reports")

    @bp.post("/audit-reports")
    @require(WRITE)
    @document_request(ReportBody)
    @answers(201, "The signed report")
    async def create_report() -> Response:
        spec = await body(ReportBody)
        start, end = timestamp(spec.from_, "from"), timestamp(spec.to, "to")
        if end <= start:
            raise invalid("to", "must be after from", "INVALID_RANGE")
        who = caller()
        key = await signing_key(api, who.tenant)
        async with api.session() as session:
            content = await gather(session, who.tenant, start, end, who.subject)
            raw = crypto.canonical(content)
            report = AuditReport(
                tenant_id=who.tenant,
                starts_at=start,
                ends_at=end,
                content=raw.decode(),
                sha256=hashlib.sha256(raw).hexdigest(),
                signature=crypto.sign(private_key(api, key), raw),
                key_id=key.id,
                created_by=who.subject,
                created_at=now_text(),
            )
            session.add(report)
            await session.commit()
        await api.audit("audit_report.created", report.id, start=start, end=end)
        return created(report_data(report, key, True))

    @bp.get("/audit-reports/<report_id>")
    @require(READ)
    @answers(200, "The report")
    @errors((404, "AUDIT_REPORT_NOT_FOUND"))
    async def get_report(report_id: str) -> Response:
        async with api.session() as session:
            report = await _get(session, report_id)
            return ok(report_data(report, await session.get(SigningKey, report.key_id), True))

    @bp.get("/audit-reports/<report_id>/download")
    @require(READ)
    @answers(200, "The signed bytes, their sha256, the signature and the public key")
    @errors((404, "AUDIT_REPORT_NOT_FOUND"))
    async def download(report_id: str) -> Response:
        async with api.session() as session:
            report = await _get(session, report_id)
            key = await session.get(SigningKey, report.key_id)
        return ok({**report_data(report, key, False), "report": report.content})

    return bp


async def _get(session: Any, report_id: str) -> AuditReport:
    report = await session.get(AuditReport, report_id)
    if report is None:
        raise not_found("audit_report", report_id)
    return report
