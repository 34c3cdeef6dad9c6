"""PROMOT, approval policies (`/api/v1/approval-policies`) and the caller's pending
approvals (`/api/v1/my/pending-approvals`)."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlmodel import select

from . import decide, gates, listing
from .common import (
    APPROVE,
    READ,
    WRITE,
    Api,
    Body,
    answers,
    blueprint,
    body,
    caller,
    dumps,
    listed,
    loads,
)
from .envelope import ReleasesError, created, now_text, ok
from .environments import NAME, get_environment
from .listing import Field
from .promotions import FIELDS as PROMOTION_FIELDS
from .promotions import promotion_data
from .tables import ApprovalPolicy, Promotion

FIELDS = [
    Field("name", ApprovalPolicy.name),
    Field("environmentId", ApprovalPolicy.environment_id),
    Field("requiredApprovals", ApprovalPolicy.required_approvals, "integer"),
    Field("createdAt", ApprovalPolicy.created_at, "datetime"),
]
MAX_PENDING = 1000  # pending promotions looked at for one caller


class PolicyBody(Body):
    """An approval policy of an environment."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    environment_id: str = Spec(min_length=1, max_length=32)
    required_approvals: int = Spec(default=1, ge=0, le=20)
    separation_of_duties: bool = True
    approver_roles: list[str] = Spec(default_factory=list, max_length=20)


def policy_data(policy: ApprovalPolicy) -> dict[str, Any]:
    """A policy as answered."""
    return {
        "id": policy.id,
        "name": policy.name,
        "environmentId": policy.environment_id,
        "requiredApprovals": policy.required_approvals,
        "separationOfDuties": policy.separation_of_duties,
        "approverRoles": loads(policy.approver_roles),
        "createdBy": policy.created_by,
        "createdAt": policy.created_at,
    }


def routes(api: Api) -> Blueprint:
    """The approval policy routes."""
    bp = blueprint("policies")

    @bp.post("/approval-policies")
    @require(WRITE)
    @document_request(PolicyBody)
    @answers(201, "The policy")
    @errors((404, "ENVIRONMENT_NOT_FOUND"))
    async def create_policy() -> Response:
        spec = await body(PolicyBody)
        who = caller()
        async with api.session() as session:
            await get_environment(session, spec.environment_id)
            policy = ApprovalPolicy(
                tenant_id=who.tenant,
                name=spec.name,
                environment_id=spec.environment_id,
                required_approvals=spec.required_approvals,
                separation_of_duties=spec.separation_of_duties,
                approver_roles=dumps(sorted(set(spec.approver_roles))),
                created_by=who.subject,
                created_at=now_text(),
            )
            session.add(policy)
            await session.commit()
        await api.audit("approval_policy.created", policy.id, environmentId=spec.environment_id)
        return created(policy_data(policy))

    @bp.get("/approval-policies")
    @require(READ)
    @listed("The approval policies")
    async def list_policies() -> Response:
        query = listing.parse(request.args, FIELDS, "name")
        async with api.session() as session:
            rows, pages = await listing.page(
                session, select(ApprovalPolicy), query, ApprovalPolicy.id
            )
        return ok([policy_data(r) for r in rows], pagination=pages)

    @bp.get("/my/pending-approvals")
    @require(READ)
    @listed("The pending promotions the caller may approve")
    async def pending() -> Response:
        query = listing.parse(request.args, PROMOTION_FIELDS, "createdAt")
        who = caller()
        mine: list[dict[str, Any]] = []
        if current_identity().can(APPROVE):
            async with api.session() as session:
                statement = (
                    select(Promotion)
                    .where(Promotion.status == "pending_approval", query.where)
                    .order_by(*query.order, Promotion.id)
                    .limit(MAX_PENDING)
                )
                for promotion in (await session.exec(statement)).all():
                    loaded = await decide.load(session, promotion.id)
                    rules = await gates.requirements(session, loaded.environment)
                    try:
                        decide.check_approver(who, loaded, rules)
                    except ReleasesError:
                        continue
                    mine.append(promotion_data(promotion))
        shown, pages = listing.paged(mine, query.page, query.page_size)
        return ok(shown, pagination=pages)

    return bp
