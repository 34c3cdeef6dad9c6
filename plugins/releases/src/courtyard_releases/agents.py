"""ENVMGR, agents: `register` (answers the agent's token, once; stored hashed),
`heartbeat` (the agent proves itself with `X-Agent-Token`), and the CRUD routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from courtyard_sdk import Blueprint, Response, allow_without_origin, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlmodel import select

from . import listing
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, dumps, listed, loads
from .crypto import new_token, token_hash, token_matches
from .envelope import ReleasesError, conflict, created, no_content, not_found, now_text, ok
from .environments import NAME
from .listing import Field
from .tables import Agent, Target

TOKEN_HEADER = "X-Agent-Token"
ONLINE_SECONDS = 90  # an agent not heard from for this long is offline
FIELDS = [
    Field("name", Agent.name),
    Field("version", Agent.version),
    Field("lastHeartbeatAt", Agent.last_heartbeat_at, "datetime"),
    Field("createdAt", Agent.created_at, "datetime"),
]


class AgentBody(Body):
    """An agent registering."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    capabilities: list[str] = Spec(default_factory=list, max_length=50)
    labels: dict[str, str] = Spec(default_factory=dict, max_length=50)
    version: str = Spec(default="", max_length=64)


class AgentUpdate(Body):
    """Changes to an agent."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    capabilities: list[str] | None = Spec(default=None, max_length=50)
    labels: dict[str, str] | None = Spec(default=None, max_length=50)


class Heartbeat(Body):
    """What an agent reports with each heartbeat."""

    capabilities: list[str] | None = Spec(default=None, max_length=50)
    load: dict[str, float] = Spec(default_factory=dict, max_length=50)
    version: str | None = Spec(default=None, max_length=64)


def status(agent: Agent, now: datetime | None = None) -> str:
    """`registered` (never heard from), `online` or `offline`."""
    if agent.last_heartbeat_at is None:
        return "registered"
    seen = datetime.fromisoformat(agent.last_heartbeat_at.replace("Z", "+00:00"))
    now = now or datetime.now(UTC)
    return "online" if now - seen <= timedelta(seconds=ONLINE_SECONDS) else "offline"


def agent_data(agent: Agent) -> dict[str, Any]:
    """An agent as answered (never its token or the token's hash)."""
    return {
        "id": agent.id,
        "name": agent.name,
        "status": status(agent),
        "capabilities": loads(agent.capabilities),
        "labels": loads(agent.labels),
        "load": loads(agent.load),
        "version": agent.version,
        "tokenPrefix": agent.token_prefix,
        "lastHeartbeatAt": agent.last_heartbeat_at,
        "createdBy": agent.created_by,
        "createdAt": agent.created_at,
        "updatedAt": agent.updated_at,
    }


async def get_agent(session: Any, agent_id: str) -> Agent:
    """The tenant's agent; 404 `AGENT_NOT_FOUND`."""
    agent = await session.get(Agent, agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    return agent


async def authenticated_agent(api: Api, agent_id: str) -> Agent:
    """The agent whose token the request presents in `X-Agent-Token`; 401 otherwise."""
    presented = request.headers.get(TOKEN_HEADER, "")
    # Unscoped only to learn the agent's tenant; the token decides before anything else.
    async with api.unscoped() as session:
        found = (await session.exec(select(Agent).where(Agent.id == agent_id))).first()
    if found is None or not presented or not token_matches(presented, found.token_hash):
        raise ReleasesError(401, "INVALID_AGENT_TOKEN", f"agents present their {TOKEN_HEADER}")
    return found


def routes(api: Api) -> Blueprint:
    """The agent routes."""
    bp = blueprint("agents")

    @bp.post("/agents/register")
    @require(WRITE)
    @allow_without_origin
    @document_request(AgentBody)
    @answers(201, "The agent and its token, shown this once")
    async def register() -> Response:
        spec = await body(AgentBody)
        who, now, token = caller(), now_text(), new_token()
        agent = Agent(
            tenant_id=who.tenant,
            name=spec.name,
            token_hash=token_hash(token),
            token_prefix=token[:12],
            capabilities=dumps(sorted(set(spec.capabilities))),
            labels=dumps(spec.labels),
            version=spec.version,
            created_by=who.subject,
            created_at=now,
            updated_at=now,
        )
        async with api.session() as session:
            session.add(agent)
            await session.commit()
        await api.audit("agent.registered", agent.id, name=agent.name)
        return created({**agent_data(agent), "token": token})

    @bp.get("/agents")
    @require(READ)
    @listed("The agents")
    async def list_agents() -> Response:
        query = listing.parse(request.args, FIELDS, "name")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Agent), query, Agent.id)
        return ok([agent_data(r) for r in rows], pagination=pages)

    @bp.get("/agents/<agent_id>")
    @require(READ)
    @answers(200, "The agent")
    @errors((404, "AGENT_NOT_FOUND"))
    async def get_agent_route(agent_id: str) -> Response:
        async with api.session() as session:
            return ok(agent_data(await get_agent(session, agent_id)))

    @bp.put("/agents/<agent_id>")
    @require(WRITE)
    @document_request(AgentUpdate)
    @answers(200, "The agent, changed")
    @errors((404, "AGENT_NOT_FOUND"))
    async def update_agent(agent_id: str) -> Response:
        spec = await body(AgentUpdate)
        async with api.session() as session:
            agent = await get_agent(session, agent_id)
            if spec.name is not None:
                agent.name = spec.name
            if spec.capabilities is not None:
                agent.capabilities = dumps(sorted(set(spec.capabilities)))
            if spec.labels is not None:
                agent.labels = dumps(spec.labels)
            agent.updated_at = now_text()
            session.add(agent)
            await session.commit()
        await api.audit("agent.updated", agent_id, fields=sorted(spec.model_fields_set))
        return ok(agent_data(agent))

    @bp.delete("/agents/<agent_id>")
    @require(WRITE)
    @answers(204, "Deleted; its token no longer works")
    @errors((404, "AGENT_NOT_FOUND"), (409, "AGENT_IN_USE"))
    async def delete_agent(agent_id: str) -> Response:
        async with api.session() as session:
            agent = await get_agent(session, agent_id)
            assigned = await session.exec(
                select(Target.name).where(Target.agent_id == agent_id).limit(1)
            )
            if (name := assigned.first()) is not None:
                raise conflict("AGENT_IN_USE", f"target {name!r} is deployed by this agent")
            await session.delete(agent)
            await session.commit()
        await api.audit("agent.deleted", agent_id, name=agent.name)
        return no_content()

    @bp.post("/agents/<agent_id>/heartbeat")
    @allow_without_origin
    @document_request(Heartbeat)
    @answers(200, "The agent as the server now knows it")
    @errors((401, "INVALID_AGENT_TOKEN"))
    async def heartbeat(agent_id: str) -> Response:
        found = await authenticated_agent(api, agent_id)
        spec = await body(Heartbeat)
        async with api.session_for(found.tenant_id) as session:
            agent = await get_agent(session, agent_id)
            if spec.capabilities is not None:
                agent.capabilities = dumps(sorted(set(spec.capabilities)))
            if spec.version is not None:
                agent.version = spec.version
            agent.load = dumps(spec.load)
            agent.last_heartbeat_at = agent.updated_at = now_text()
            session.add(agent)
            await session.commit()
        return ok(agent_data(agent))

    return bp
