"""ENVMGR, targets: `/api/v1/targets[/{id}]`, `health-check`, `sticker` and `drift`."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from . import listing, probe
from .agents import get_agent
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, listed, loads
from .common import validate as check
from .connection import MODELS, TargetType, masked, opened, seal
from .envelope import ReleasesError, conflict, created, no_content, not_found, now_text, ok
from .environments import NAME, get_environment
from .listing import Field
from .tables import Sticker, Target

FIELDS = [
    Field("name", Target.name),
    Field("type", Target.type),
    Field("environmentId", Target.environment_id),
    Field("agentId", Target.agent_id),
    Field("healthStatus", Target.health_status),
    Field("createdAt", Target.created_at, "datetime"),
    Field("updatedAt", Target.updated_at, "datetime"),
]


class TargetBody(Body):
    """A new target."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    type: TargetType
    environment_id: str = Spec(min_length=1, max_length=32)
    connection: dict[str, Any]
    agent_id: str | None = Spec(default=None, min_length=1, max_length=32)


class TargetUpdate(Body):
    """Changes to a target; `connection` replaces the previous one (a secret given as
    `********` keeps its value)."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    environment_id: str | None = Spec(default=None, min_length=1, max_length=32)
    connection: dict[str, Any] | None = None
    agent_id: str | None = Spec(default=None, max_length=32)


def target_data(target: Target) -> dict[str, Any]:
    """A target as answered, its secrets masked."""
    return {
        "id": target.id,
        "name": target.name,
        "type": target.type,
        "environmentId": target.environment_id,
        "agentId": target.agent_id,
        "connection": masked(target.connection),
        "health": {
            "status": target.health_status,
            "detail": target.health_detail,
            "checkedAt": target.health_checked_at,
        },
        "createdBy": target.created_by,
        "createdAt": target.created_at,
        "updatedAt": target.updated_at,
    }


def sticker_data(sticker: Sticker) -> dict[str, Any]:
    """A version sticker as answered."""
    return {
        "id": sticker.id,
        "targetId": sticker.target_id,
        "environmentId": sticker.environment_id,
        "releaseId": sticker.release_id,
        "releaseName": sticker.release_name,
        "deploymentId": sticker.deployment_id,
        "components": loads(sticker.components),
        "deployedBy": sticker.deployed_by,
        "deployedAt": sticker.deployed_at,
    }


def _connection(kind: str, raw: dict[str, Any]) -> Body:
    try:
        return check(MODELS[kind], raw)
    except ReleasesError as exc:
        for problem in exc.validation_errors or []:
            problem["field"] = f"connection.{problem['field']}"
        raise


async def get_target(session: Any, target_id: str) -> Target:
    """The tenant's target; 404 `TARGET_NOT_FOUND`."""
    target = await session.get(Target, target_id)
    if target is None:
        raise not_found("target", target_id)
    return target


async def current_sticker(session: Any, target_id: str) -> Sticker | None:
    """The newest sticker of a target."""
    statement = (
        select(Sticker)
        .where(Sticker.target_id == target_id)
        .order_by(Sticker.deployed_at.desc(), Sticker.id.desc())
    )
    return (await session.exec(statement.limit(1))).first()


def routes(api: Api) -> Blueprint:
    """The target routes."""
    bp = blueprint("targets")

    @bp.post("/targets")
    @require(WRITE)
    @document_request(TargetBody)
    @answers(201, "The target, secrets masked")
    @errors((404, "ENVIRONMENT_NOT_FOUND"), (404, "AGENT_NOT_FOUND"), (409, "TARGET_EXISTS"))
    async def create_target() -> Response:
        spec = await body(TargetBody)
        connection = _connection(spec.type, spec.connection)
        who, now = caller(), now_text()
        async with api.session() as session:
            await get_environment(session, spec.environment_id)
            if spec.agent_id is not None:
                await get_agent(session, spec.agent_id)
            target = Target(
                tenant_id=who.tenant,
                name=spec.name,
                type=spec.type,
                environment_id=spec.environment_id,
                agent_id=spec.agent_id,
                connection=seal(spec.type, connection, api.sealer, None),
                created_by=who.subject,
                created_at=now,
                updated_at=now,
            )
            session.add(target)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("TARGET_EXISTS", f"target {spec.name!r} exists") from None
        await api.audit("target.created", target.id, name=target.name, type=target.type)
        return created(target_data(target))

    @bp.get("/targets")
    @require(READ)
    @listed("The targets")
    async def list_targets() -> Response:
        query = listing.parse(request.args, FIELDS, "name")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Target), query, Target.id)
        return ok([target_data(r) for r in rows], pagination=pages)

    @bp.get("/targets/<target_id>")
    @require(READ)
    @answers(200, "The target, secrets masked")
    @errors((404, "TARGET_NOT_FOUND"))
    async def get_target_route(target_id: str) -> Response:
        async with api.session() as session:
            return ok(target_data(await get_target(session, target_id)))

    @bp.put("/targets/<target_id>")
    @require(WRITE)
    @document_request(TargetUpdate)
    @answers(200, "The target, changed")
    @errors((404, "TARGET_NOT_FOUND"), (409, "TARGET_EXISTS"))
    async def update_target(target_id: str) -> Response:
        spec = await body(TargetUpdate)
        async with api.session() as session:
            target = await get_target(session, target_id)
            if spec.name is not None:
                target.name = spec.name
            if spec.environment_id is not None:
                await get_environment(session, spec.environment_id)
                target.environment_id = spec.environment_id
            if "agent_id" in spec.model_fields_set:  # null: this server deploys again
                if spec.agent_id:
                    await get_agent(session, spec.agent_id)
                target.agent_id = spec.agent_id or None
            if spec.connection is not None:
                connection = _connection(target.type, spec.connection)
                previous = loads(target.connection)
                target.connection = seal(target.type, connection, api.sealer, previous)
            target.updated_at = now_text()
            session.add(target)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("TARGET_EXISTS", "a target has this name") from None
        changed = sorted(spec.model_dump(exclude_unset=True, by_alias=True))
        await api.audit("target.updated", target.id, fields=changed)
        return ok(target_data(target))

    @bp.delete("/targets/<target_id>")
    @require(WRITE)
    @answers(204, "Deleted")
    @errors((404, "TARGET_NOT_FOUND"))
    async def delete_target(target_id: str) -> Response:
        async with api.session() as session:
            target = await get_target(session, target_id)
            await session.delete(target)
            await session.commit()
        await api.audit("target.deleted", target_id, name=target.name)
        return no_content()

    @bp.post("/targets/<target_id>/health-check")
    @require(WRITE)
    @answers(200, "The result of probing the target now")
    @errors((404, "TARGET_NOT_FOUND"), (422, "TARGET_SECRETS_UNREADABLE"))
    async def health_check(target_id: str) -> Response:
        async with api.session() as session:
            target = await get_target(session, target_id)
        connection = _opened(target, api)
        if target.type == "courtyard":
            health = await probe.courtyard_health(connection)
        else:
            health = probe.script_health(connection)
        checked = now_text()
        async with api.session() as session:
            fresh = await get_target(session, target_id)
            fresh.health_status = "healthy" if health.healthy else "unhealthy"
            fresh.health_detail = health.detail[:2000]
            fresh.health_checked_at = checked
            session.add(fresh)
            await session.commit()
        await api.audit("target.health_checked", target_id, healthy=health.healthy)
        return ok(
            {
                "targetId": target_id,
                "status": "healthy" if health.healthy else "unhealthy",
                "detail": health.detail,
                "latencyMs": health.latency_ms,
                "checkedAt": checked,
            }
        )

    @bp.get("/targets/<target_id>/sticker")
    @require(READ)
    @answers(200, "What the target runs: release, component versions, digests, when, who")
    @errors((404, "TARGET_NOT_FOUND"), (404, "STICKER_NOT_FOUND"))
    async def sticker(target_id: str) -> Response:
        async with api.session() as session:
            await get_target(session, target_id)
            found = await current_sticker(session, target_id)
        if found is None:
            raise ReleasesError(404, "STICKER_NOT_FOUND", "nothing was deployed on this target")
        return ok(sticker_data(found))

    @bp.get("/targets/<target_id>/drift")
    @require(READ)
    @answers(200, "The sticker against what the target reports now")
    @errors(
        (404, "TARGET_NOT_FOUND"),
        (404, "STICKER_NOT_FOUND"),
        (422, "TARGET_UNREACHABLE"),
        (422, "DRIFT_UNSUPPORTED"),
        (422, "TARGET_SECRETS_UNREADABLE"),
    )
    async def drift(target_id: str) -> Response:
        async with api.session() as session:
            target = await get_target(session, target_id)
            found = await current_sticker(session, target_id)
        if found is None:
            raise ReleasesError(404, "STICKER_NOT_FOUND", "nothing was deployed on this target")
        connection = _opened(target, api)
        expected = loads(found.components)
        try:
            items = await _compare(target.type, connection, expected)
        except probe.ProbeError as exc:
            raise ReleasesError(
                422, "TARGET_UNREACHABLE", f"the target cannot tell what it runs: {exc}"
            ) from None
        return ok(
            {
                "targetId": target_id,
                "sticker": sticker_data(found),
                "drifted": any(item["status"] != "in_sync" for item in items),
                "items": items,
                "checkedAt": now_text(),
            }
        )

    return bp


def _opened(target: Target, api: Api) -> dict[str, Any]:
    """The target's connection in clear; 422 when its secrets were sealed with another
    key (the plugin's `secret_key` changed)."""
    try:
        return opened(target.connection, api.sealer)
    except ValueError:
        raise ReleasesError(
            422,
            "TARGET_SECRETS_UNREADABLE",
            "the target's secrets were sealed with another secret_key: set them again",
        ) from None


async def _compare(
    kind: str, connection: dict[str, Any], expected: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each stickered component's state on the target now."""
    items: list[dict[str, Any]] = []
    if kind == "courtyard":
        apps = await probe.courtyard_apps(connection)
        for component in expected:
            app = component.get("appName") or component["name"]
            versions = apps.get(app)
            want = component.get("appVersion") or component["version"]
            status = (
                "missing"
                if versions is None
                else ("in_sync" if want in versions else "version_missing")
            )
            items.append(
                {
                    "component": component["name"],
                    "expected": component,
                    "actual": {"app": app, "versions": versions},
                    "status": status,
                }
            )
        return items
    if not connection.get("statusScript"):
        raise ReleasesError(422, "DRIFT_UNSUPPORTED", "the target has no statusScript")
    reported = {c["name"]: c for c in await probe.script_components(connection)}
    for component in expected:
        actual = reported.pop(component["name"], None)
        if actual is None:
            status = "missing"
        elif actual["version"] != component["version"] or (
            component.get("digest") and actual.get("digest") != component["digest"]
        ):
            status = "changed"
        else:
            status = "in_sync"
        items.append(
            {
                "component": component["name"],
                "expected": component,
                "actual": actual,
                "status": status,
            }
        )
    for name, actual in sorted(reported.items()):
        items.append(
            {"component": name, "expected": None, "actual": actual, "status": "unexpected"}
        )
    return items
