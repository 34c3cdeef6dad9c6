"""The plugin's page at its base (`/releases/`): the environments and what each runs,
the newest releases, the promotions awaiting the caller's approval, and the deployments
in progress. Server-rendered for the caller's tenant with `courtyard_sdk.pages` (native in
the operator console), every text escaped, no script. It needs `releases:read`, like the
API."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import responds
from courtyard_sdk.pages import escape, page, table
from sqlmodel import select

from . import decide, gates
from .common import APPROVE, READ, Api, caller
from .envelope import ReleasesError
from .tables import Deployment, Environment, Promotion, Release, Sticker, Target


async def _environments(session: Any) -> str:
    envs = (await session.exec(select(Environment).order_by(Environment.order_index))).all()
    targets = (await session.exec(select(Target).order_by(Target.name))).all()
    rows = []
    for env in envs:
        runs = []
        for target in (t for t in targets if t.environment_id == env.id):
            sticker = (
                await session.exec(
                    select(Sticker)
                    .where(Sticker.target_id == target.id)
                    .order_by(Sticker.deployed_at.desc())
                    .limit(1)
                )
            ).first()
            what = escape(sticker.release_name) if sticker else '<span class="muted">nothing</span>'
            runs.append(f"<code>{escape(target.name)}</code>: {what}")
        rows.append(
            [
                escape(env.name),
                str(env.required_approvals),
                "yes" if env.separation_of_duties else "no",
                "<br>".join(runs) or '<span class="muted">no target</span>',
            ]
        )
    return table(
        ["Environment", "Approvals", "Separation of duties", "Runs"], rows, "No environment yet."
    )


async def _releases(session: Any) -> str:
    latest = (
        await session.exec(select(Release).order_by(Release.created_at.desc()).limit(20))
    ).all()
    rows = [
        [escape(r.name), escape(r.status), escape(r.created_by), escape(r.created_at[:19])]
        for r in latest
    ]
    return table(["Release", "Status", "Author", "Created"], rows, "No release yet.")


async def _pending(session: Any) -> str:
    who = caller()
    rows = []
    if current_identity().can(APPROVE):
        pending = (
            await session.exec(
                select(Promotion)
                .where(Promotion.status == "pending_approval")
                .order_by(Promotion.created_at)
                .limit(200)
            )
        ).all()
        for promotion in pending:
            loaded = await decide.load(session, promotion.id)
            try:
                decide.check_approver(
                    who, loaded, await gates.requirements(session, loaded.environment)
                )
            except ReleasesError:
                continue
            rows.append(
                [
                    escape(loaded.release.name),
                    escape(loaded.environment.name),
                    escape(promotion.requested_by),
                    f"<code>{escape(promotion.id)}</code>",
                ]
            )
    return table(
        ["Release", "Into", "Asked by", "Promotion"], rows, "Nothing awaits your approval."
    )


async def _deployments(session: Any) -> str:
    running = (
        await session.exec(
            select(Deployment)
            .where(Deployment.status.in_(("pending", "running")))  # type: ignore[attr-defined]
            .order_by(Deployment.created_at)
        )
    ).all()
    names = {r.id: r.name for r in (await session.exec(select(Release))).all()}
    envs = {e.id: e.name for e in (await session.exec(select(Environment))).all()}
    rows = [
        [
            escape(names.get(j.release_id, j.release_id)),
            escape(envs.get(j.environment_id, j.environment_id)),
            escape(j.kind),
            escape(j.status),
            escape((j.started_at or j.created_at)[:19]),
        ]
        for j in running
    ]
    return table(
        ["Release", "Environment", "Kind", "Status", "Since"], rows, "No deployment in progress."
    )


def routes(api: Api) -> Blueprint:
    """The page at the plugin's base."""
    bp = Blueprint("page", __name__)

    @bp.get("/")
    @require(READ)
    @responds(200, "The releases page", media_type="text/html")
    async def index() -> Response:
        async with api.session() as session:
            sections = [
                ("Environments", await _environments(session)),
                ("Releases", await _releases(session)),
                ("Awaiting your approval", await _pending(session)),
                ("Deployments in progress", await _deployments(session)),
            ]
        return page("Releases", "".join(f"<h2>{escape(t)}</h2>{body}" for t, body in sections))

    return bp
