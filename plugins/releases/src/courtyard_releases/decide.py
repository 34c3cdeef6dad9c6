"""Promotions' state machine: asking, approving, rejecting, cancelling.

    pending_approval -> approved | rejected | cancelled

Every other transition is refused with 409 `INVALID_STATE_TRANSITION`. A decision is a
conditional update on the promotion's `revision`, in the same transaction as the approval
that causes it: of two approvals arriving together, one commits first and the other is
re-evaluated against it (so the N-th distinct approver decides, exactly once). One
approver approves a promotion at most once (a unique constraint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from . import gates
from .common import Api, Caller, dumps, loads
from .deploy import Runner, create_job
from .envelope import ReleasesError, conflict, invalid, not_found, now_text
from .environments import get_environment
from .evidence import packet_content, sign_packet, signing_key
from .releases import get_release
from .tables import Approval, Environment, EvidencePacket, Promotion, Release

ATTEMPTS = 8


@dataclass
class Loaded:
    """A promotion with its release, environment and approvals."""

    promotion: Promotion
    release: Release
    environment: Environment
    approvals: list[Approval]

    def ask(self, extra: list[Approval] | None = None) -> gates.Request:
        """The promotion as the gates see it."""
        p = self.promotion
        return gates.Request(
            release=self.release,
            environment=self.environment,
            requester=p.requested_by,
            requester_roles=frozenset(loads(p.requested_roles)),
            scheduled_at=p.scheduled_at,
            depends_on=loads(p.depends_on),
            approvals=[*self.approvals, *(extra or [])],
        )


async def get_promotion(session: Any, promotion_id: str) -> Promotion:
    """The tenant's promotion; 404 `PROMOTION_NOT_FOUND`."""
    promotion = await session.get(Promotion, promotion_id)
    if promotion is None:
        raise not_found("promotion", promotion_id)
    return promotion


async def load(session: Any, promotion_id: str) -> Loaded:
    """A promotion and what its gates need."""
    promotion = await get_promotion(session, promotion_id)
    approvals = (
        await session.exec(
            select(Approval)
            .where(Approval.promotion_id == promotion_id)
            .order_by(Approval.created_at, Approval.id)
        )
    ).all()
    return Loaded(
        promotion,
        await get_release(session, promotion.release_id),
        await get_environment(session, promotion.environment_id),
        list(approvals),
    )


def blocked(failed: list[dict[str, Any]]) -> ReleasesError:
    """422 `PROMOTION_BLOCKED` with the failing gates."""
    names = ", ".join(g["gate"] for g in failed)
    return ReleasesError(
        422, "PROMOTION_BLOCKED", f"the promotion is blocked by: {names}", details={"gates": failed}
    )


def wrong_state(promotion: Promotion, action: str) -> ReleasesError:
    """409 for a transition the state machine does not define."""
    return conflict(
        "INVALID_STATE_TRANSITION",
        f"a promotion that is {promotion.status} cannot be {action}",
        status=promotion.status,
    )


def check_approver(who: Caller, loaded: Loaded, rules: gates.Requirements) -> None:
    """Refuse a caller who may not decide on this promotion."""
    if rules.approver_roles and not (who.roles & rules.approver_roles):
        raise ReleasesError(
            403,
            "APPROVER_NOT_ELIGIBLE",
            f"approvers here hold one of the roles {', '.join(sorted(rules.approver_roles))}",
        )
    if rules.separation_of_duties:
        if who.subject == loaded.promotion.requested_by:
            raise ReleasesError(
                422, "SEPARATION_OF_DUTIES", "the requester cannot approve their own promotion"
            )
        if who.subject == loaded.release.created_by:
            raise ReleasesError(
                422, "SEPARATION_OF_DUTIES", "the release's author cannot approve its promotion"
            )
    if who.subject in {a.approver for a in loaded.approvals}:
        raise conflict("ALREADY_DECIDED", "you already decided on this promotion")


async def create(
    api: Api,
    who: Caller,
    release_id: str,
    environment_id: str,
    reason: str,
    scheduled_at: str | None,
    depends_on: list[str],
) -> Promotion:
    """Ask for a promotion: 422 `PROMOTION_BLOCKED` when a blocking gate fails, else a
    pending promotion (approved at once when the environment needs no approval)."""
    key = await signing_key(api, who.tenant)
    async with api.session() as session:
        release = await get_release(session, release_id)
        environment = await get_environment(session, environment_id)
        if release.status != "finalized":
            raise ReleasesError(
                422,
                "RELEASE_NOT_FINALIZED",
                f"release {release.name!r} is {release.status}; only finalized releases move",
            )
        for index, other in enumerate(depends_on):
            if other == release_id or await session.get(Release, other) is None:
                raise invalid(f"dependsOn.{index}", "not another release", "UNKNOWN_RELEASE")
        now = now_text()
        ask = gates.Request(
            release, environment, who.subject, who.roles, scheduled_at, depends_on, []
        )
        results = await gates.evaluate(session, ask, now, who.subject)
        approved = not gates.failing(results, ("approvals",))
        failed = gates.failing(results, gates.BLOCKING + (("schedule",) if approved else ()))
        if failed:
            await api.audit(
                "promotion.blocked",
                release_id,
                environmentId=environment_id,
                gates=[g["gate"] for g in failed],
            )
            raise blocked(failed)
        promotion = Promotion(
            tenant_id=who.tenant,
            release_id=release_id,
            environment_id=environment_id,
            status="approved" if approved else "pending_approval",
            requested_by=who.subject,
            requested_roles=dumps(sorted(who.roles)),
            reason=reason,
            scheduled_at=scheduled_at,
            depends_on=dumps(depends_on),
            gates=dumps(results),
            active_key=None if approved else f"{release_id}:{environment_id}",
            created_at=now,
            updated_at=now,
            decided_at=now if approved else None,
            decided_by=who.subject if approved else None,
        )
        session.add(promotion)
        if approved:
            loaded = Loaded(promotion, release, environment, [])
            session.add(_packet(api, key, who.tenant, loaded, results))
        names = release.name, environment.name  # read before a failed commit expires them
        try:
            await session.commit()
        except IntegrityError:
            raise conflict(
                "PROMOTION_EXISTS",
                f"release {names[0]!r} already has a pending promotion to {names[1]}",
            ) from None
    await api.audit(
        "promotion.requested", promotion.id, releaseId=release_id, environmentId=environment_id
    )
    await api.publish(
        f"promotion.{promotion.status}",
        who.tenant,
        promotionId=promotion.id,
        releaseId=release_id,
        environmentId=environment_id,
    )
    if approved:
        await api.audit("promotion.approved", promotion.id, approvals=0)
        await deploy_approved(api, who, promotion)
    return promotion


async def deploy_approved(api: Api, who: Caller, promotion: Promotion) -> None:
    """An approved promotion becomes a deployment job, started at once."""
    job = await create_job(
        api, who.tenant, promotion.release_id, promotion.environment_id, promotion.id, who.subject
    )
    api.ctx.state[Runner].start(api, who.tenant, job.id)


def _packet(
    api: Api, key: Any, tenant: str, loaded: Loaded, results: list[dict[str, Any]]
) -> EvidencePacket:
    content = packet_content(
        tenant, loaded.promotion, loaded.release, loaded.environment, loaded.approvals, results
    )
    raw, digest, signature = sign_packet(api, key, content)
    return EvidencePacket(
        tenant_id=tenant,
        kind="promotion.decision",
        promotion_id=loaded.promotion.id,
        release_id=loaded.release.id,
        environment_id=loaded.environment.id,
        content=raw,
        sha256=digest,
        signature=signature,
        key_id=key.id,
        created_at=now_text(),
    )


async def decide(api: Api, who: Caller, promotion_id: str, verdict: str, comment: str) -> Promotion:
    """Record `who`'s approval (`verdict` = "approved") or rejection; an approval that
    completes the approvals decides the promotion if every other gate passes."""
    key = await signing_key(api, who.tenant)
    for _ in range(ATTEMPTS):
        async with api.session() as session:
            loaded = await load(session, promotion_id)
            promotion = loaded.promotion
            if promotion.status != "pending_approval":
                raise wrong_state(promotion, verdict)
            rules = await gates.requirements(session, loaded.environment)
            check_approver(who, loaded, rules)
            now = now_text()
            mine = Approval(
                tenant_id=who.tenant,
                promotion_id=promotion_id,
                approver=who.subject,
                decision=verdict,
                comment=comment,
                created_at=now,
            )
            results = await gates.evaluate(session, loaded.ask([mine]), now, who.subject)
            values: dict[str, Any] = {
                "revision": promotion.revision + 1,
                "gates": dumps(results),
                "updated_at": now,
            }
            final = verdict == "rejected" or not gates.failing(results, ("approvals",))
            if verdict == "approved" and final:
                failed = gates.failing(results, (*gates.BLOCKING, "schedule"))
                if failed:
                    raise blocked(failed)
            if final:
                values.update(
                    status=verdict, decided_at=now, decided_by=who.subject, active_key=None
                )
            try:
                session.add(mine)
                await session.flush()
                changed = await session.exec(
                    update(Promotion)  # type: ignore[call-overload]
                    .where(
                        Promotion.id == promotion_id,
                        Promotion.revision == promotion.revision,
                        Promotion.status == "pending_approval",
                    )
                    .values(**values)
                )
                if changed.rowcount != 1:
                    await session.rollback()
                    continue  # another decision landed first: look again
                if final:
                    await session.refresh(promotion)
                    loaded.approvals.append(mine)
                    session.add(_packet(api, key, who.tenant, loaded, results))
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise conflict("ALREADY_DECIDED", "you already decided on this promotion") from None
        await api.audit(
            f"promotion.{'approval' if verdict == 'approved' else 'rejection'}",
            promotion_id,
            comment=comment[:200],
        )
        if final:
            await api.audit(f"promotion.{verdict}", promotion_id)
        async with api.session() as session:
            decided = await get_promotion(session, promotion_id)
        if final:
            await api.publish(
                f"promotion.{verdict}",
                who.tenant,
                promotionId=promotion_id,
                releaseId=decided.release_id,
                environmentId=decided.environment_id,
            )
        if final and verdict == "approved":
            await deploy_approved(api, who, decided)
        return decided
    raise conflict("CONCURRENT_UPDATE", "the promotion kept changing; try again")


async def cancel(api: Api, who: Caller, promotion_id: str, can_approve: bool) -> Promotion:
    """Cancel a pending promotion (its requester, or an approver)."""
    async with api.session() as session:
        promotion = await get_promotion(session, promotion_id)
        if who.subject != promotion.requested_by and not can_approve:
            raise ReleasesError(
                403, "AUTHORIZATION_FAILED", "only the requester or an approver may cancel"
            )
        now = now_text()
        changed = await session.exec(
            update(Promotion)  # type: ignore[call-overload]
            .where(Promotion.id == promotion_id, Promotion.status == "pending_approval")
            .values(
                status="cancelled",
                active_key=None,
                decided_at=now,
                decided_by=who.subject,
                updated_at=now,
                revision=promotion.revision + 1,
            )
        )
        if changed.rowcount != 1:
            raise wrong_state(promotion, "cancelled")
        await session.commit()
    await api.audit("promotion.cancelled", promotion_id)
    await api.publish("promotion.cancelled", who.tenant, promotionId=promotion_id)
    async with api.session() as session:
        return await get_promotion(session, promotion_id)
