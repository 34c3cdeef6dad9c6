"""The gates a promotion passes, in order: freeze window, approvals, policy, schedule,
dependency.

Freeze, policy and dependency *block*: a promotion that fails one is refused (422
`PROMOTION_BLOCKED`) when it is asked for and whenever it would be decided. Approvals and
schedule *wait*: a promotion waits for its approvers, and is decided only once the
scheduled time has come (an approval that would decide it earlier is refused as blocked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import select

from .common import loads
from .tables import (
    Approval,
    ApprovalPolicy,
    Deployment,
    Environment,
    FreezeWindow,
    Promotion,
    Release,
)

ORDER = ("freeze-window", "approvals", "policy", "schedule", "dependency")
BLOCKING = ("freeze-window", "policy", "dependency")
SUCCEEDED = "succeeded"
PROMOTED = ("approved", "deployed")


@dataclass(frozen=True)
class Requirements:
    """What approving a promotion into an environment takes."""

    required: int
    separation_of_duties: bool
    approver_roles: frozenset[str]


@dataclass
class Request:
    """What the gates look at: the release, where it goes, who asks, and when."""

    release: Release
    environment: Environment
    requester: str
    requester_roles: frozenset[str]
    scheduled_at: str | None = None
    depends_on: Sequence[str] = ()
    approvals: Sequence[Approval] = field(default_factory=list)


def result(gate: str, passed: bool, reason: str, when: str, by: str, **details: Any) -> dict:
    """One gate's result, as recorded in decisions and evidence."""
    out: dict[str, Any] = {
        "gate": gate,
        "passed": passed,
        "reason": reason,
        "evaluatedAt": when,
        "evaluatedBy": by,
    }
    if details:
        out["details"] = details
    return out


async def requirements(session: Any, environment: Environment) -> Requirements:
    """The environment's own rules joined with its approval policies (the most
    approvals, separation of duties if any asks, the roles any policy names)."""
    policies = (
        await session.exec(
            select(ApprovalPolicy).where(ApprovalPolicy.environment_id == environment.id)
        )
    ).all()
    required = max([environment.required_approvals, *(p.required_approvals for p in policies)])
    duties = environment.separation_of_duties or any(p.separation_of_duties for p in policies)
    roles = frozenset(r for p in policies for r in loads(p.approver_roles))
    return Requirements(required, duties, roles)


async def evaluate(session: Any, ask: Request, now: str, by: str) -> list[dict[str, Any]]:
    """Every gate's result, in order."""
    env = ask.environment
    return (
        [
            await _freeze(session, ask, now, by),
            await _approvals(session, ask, now, by),
            await _policy(session, ask, now, by),
            _schedule(ask, now, by),
            await _dependency(session, ask, now, by),
        ]
        if env is not None
        else []
    )


def failing(results: list[dict[str, Any]], gates: Sequence[str]) -> list[dict[str, Any]]:
    """The results among `gates` that did not pass."""
    return [r for r in results if r["gate"] in gates and not r["passed"]]


async def _freeze(session: Any, ask: Request, now: str, by: str) -> dict[str, Any]:
    windows = (
        await session.exec(
            select(FreezeWindow).where(
                FreezeWindow.environment_id == ask.environment.id,
                FreezeWindow.starts_at <= now,
                FreezeWindow.ends_at > now,
            )
        )
    ).all()
    if not windows:
        return result("freeze-window", True, "no freeze window is active", now, by)
    for window in windows:
        users = set(loads(window.exception_users))
        roles = set(loads(window.exception_roles))
        if ask.requester not in users and not (roles & ask.requester_roles):
            return result(
                "freeze-window",
                False,
                f"frozen until {window.ends_at}: {window.reason}".rstrip(": "),
                now,
                by,
                windowId=window.id,
                endsAt=window.ends_at,
            )
    ids = [w.id for w in windows]
    return result(
        "freeze-window", True, "frozen, but the requester is an exception", now, by, windowIds=ids
    )


async def _approvals(session: Any, ask: Request, now: str, by: str) -> dict[str, Any]:
    rules = await requirements(session, ask.environment)
    approvers = [
        {"approver": a.approver, "at": a.created_at, "comment": a.comment}
        for a in ask.approvals
        if a.decision == "approved"
    ]
    count = len({a["approver"] for a in approvers})
    return result(
        "approvals",
        count >= rules.required,
        f"{count} of {rules.required} approvals",
        now,
        by,
        required=rules.required,
        received=count,
        approvers=approvers,
        separationOfDuties=rules.separation_of_duties,
        approverRoles=sorted(rules.approver_roles),
    )


async def previous_environment(session: Any, environment: Environment) -> Environment | None:
    """The environment just before `environment` in the order, if any."""
    statement = (
        select(Environment)
        .where(Environment.order_index < environment.order_index)
        .order_by(Environment.order_index.desc(), Environment.name.desc())
        .limit(1)
    )
    return (await session.exec(statement)).first()


async def _policy(session: Any, ask: Request, now: str, by: str) -> dict[str, Any]:
    problems: list[str] = []
    components = loads(ask.release.components)
    loose = [c["name"] for c in components if not c.get("digest")]
    if loose:
        problems.append(f"not digest-pinned: {', '.join(loose)}")
    previous = await previous_environment(session, ask.environment)
    if previous is not None:
        deployed = (
            await session.exec(
                select(Deployment.id).where(
                    Deployment.release_id == ask.release.id,
                    Deployment.environment_id == previous.id,
                    Deployment.status == SUCCEEDED,
                )
            )
        ).first()
        if deployed is None:
            problems.append(f"not deployed successfully to {previous.name} first")
    return result(
        "policy",
        not problems,
        "; ".join(problems)
        or (
            f"pinned, and deployed to {previous.name}"
            if previous is not None
            else "pinned; the first environment"
        ),
        now,
        by,
        previousEnvironment=previous.name if previous is not None else None,
        unpinned=loose,
    )


def _schedule(ask: Request, now: str, by: str) -> dict[str, Any]:
    if ask.scheduled_at is None or ask.scheduled_at <= now:
        return result("schedule", True, "no schedule, or its time has come", now, by)
    return result(
        "schedule", False, f"not before {ask.scheduled_at}", now, by, notBefore=ask.scheduled_at
    )


async def _dependency(session: Any, ask: Request, now: str, by: str) -> dict[str, Any]:
    missing: list[str] = []
    for release_id in ask.depends_on:
        promoted = (
            await session.exec(
                select(Promotion.id).where(
                    Promotion.release_id == release_id,
                    Promotion.environment_id == ask.environment.id,
                    Promotion.status.in_(PROMOTED),  # type: ignore[attr-defined]
                )
            )
        ).first()
        if promoted is None:
            missing.append(release_id)
    if missing:
        return result(
            "dependency",
            False,
            f"{len(missing)} release(s) must be promoted to {ask.environment.name} first",
            now,
            by,
            missing=missing,
        )
    return result("dependency", True, "every dependency is promoted here", now, by)
