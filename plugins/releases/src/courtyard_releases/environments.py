"""ENVMGR, environments and their freeze windows:
`/api/v1/environments[/{id}]` and `/api/v1/environments/{envId}/freeze-windows[/{id}]`."""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlalchemy.exc import IntegrityError
from sqlmodel import delete, select

from . import listing
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, dumps, listed, loads
from .envelope import conflict, created, invalid, no_content, not_found, now_text, ok
from .listing import Field, timestamp
from .tables import Environment, FreezeWindow, Promotion, Target

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ENV_FIELDS = [
    Field("name", Environment.name),
    Field("order", Environment.order_index, "integer"),
    Field("requiredApprovals", Environment.required_approvals, "integer"),
    Field("separationOfDuties", Environment.separation_of_duties, "boolean"),
    Field("createdAt", Environment.created_at, "datetime"),
    Field("updatedAt", Environment.updated_at, "datetime"),
]
WINDOW_FIELDS = [
    Field("startsAt", FreezeWindow.starts_at, "datetime"),
    Field("endsAt", FreezeWindow.ends_at, "datetime"),
    Field("createdAt", FreezeWindow.created_at, "datetime"),
]


class EnvironmentBody(Body):
    """A new environment."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    description: str = Spec(default="", max_length=1000)
    order: int = Spec(default=0, ge=0, le=10_000)
    required_approvals: int = Spec(default=0, ge=0, le=20)
    separation_of_duties: bool = False


class EnvironmentUpdate(Body):
    """Changes to an environment (only the fields given)."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    description: str | None = Spec(default=None, max_length=1000)
    order: int | None = Spec(default=None, ge=0, le=10_000)
    required_approvals: int | None = Spec(default=None, ge=0, le=20)
    separation_of_duties: bool | None = None


class Exceptions(Body):
    """Who may still promote inside a freeze window."""

    users: list[str] = Spec(default_factory=list, max_length=100)
    roles: list[str] = Spec(default_factory=list, max_length=100)


class FreezeWindowBody(Body):
    """A new freeze window."""

    starts_at: str = Spec(max_length=64)
    ends_at: str = Spec(max_length=64)
    reason: str = Spec(default="", max_length=1000)
    exceptions: Exceptions = Spec(default_factory=Exceptions)


def environment_data(env: Environment) -> dict[str, Any]:
    """An environment as answered."""
    return {
        "id": env.id,
        "name": env.name,
        "description": env.description,
        "order": env.order_index,
        "requiredApprovals": env.required_approvals,
        "separationOfDuties": env.separation_of_duties,
        "createdBy": env.created_by,
        "createdAt": env.created_at,
        "updatedAt": env.updated_at,
    }


def window_data(window: FreezeWindow) -> dict[str, Any]:
    """A freeze window as answered."""
    return {
        "id": window.id,
        "environmentId": window.environment_id,
        "startsAt": window.starts_at,
        "endsAt": window.ends_at,
        "reason": window.reason,
        "exceptions": {
            "users": loads(window.exception_users),
            "roles": loads(window.exception_roles),
        },
        "createdBy": window.created_by,
        "createdAt": window.created_at,
    }


async def get_environment(session: Any, env_id: str) -> Environment:
    """The tenant's environment; 404 `ENVIRONMENT_NOT_FOUND`."""
    env = await session.get(Environment, env_id)
    if env is None:
        raise not_found("environment", env_id)
    return env


def routes(api: Api) -> Blueprint:
    """The environment routes."""
    bp = blueprint("envs")

    @bp.post("/environments")
    @require(WRITE)
    @document_request(EnvironmentBody)
    @answers(201, "The environment")
    @errors((409, "ENVIRONMENT_EXISTS"))
    async def create_environment() -> Response:
        spec = await body(EnvironmentBody)
        who, now = caller(), now_text()
        env = Environment(
            tenant_id=who.tenant,
            name=spec.name,
            description=spec.description,
            order_index=spec.order,
            required_approvals=spec.required_approvals,
            separation_of_duties=spec.separation_of_duties,
            created_by=who.subject,
            created_at=now,
            updated_at=now,
        )
        async with api.session() as session:
            session.add(env)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("ENVIRONMENT_EXISTS", f"environment {spec.name!r} exists") from None
        await api.audit("environment.created", env.id, name=env.name)
        return created(environment_data(env))

    @bp.get("/environments")
    @require(READ)
    @listed("The environments, in order")
    async def list_environments() -> Response:
        query = listing.parse(request.args, ENV_FIELDS, "order")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Environment), query, Environment.id)
        return ok([environment_data(r) for r in rows], pagination=pages)

    @bp.get("/environments/<env_id>")
    @require(READ)
    @answers(200, "The environment")
    @errors((404, "ENVIRONMENT_NOT_FOUND"))
    async def get_environment_route(env_id: str) -> Response:
        async with api.session() as session:
            return ok(environment_data(await get_environment(session, env_id)))

    @bp.put("/environments/<env_id>")
    @require(WRITE)
    @document_request(EnvironmentUpdate)
    @answers(200, "The environment, changed")
    @errors((404, "ENVIRONMENT_NOT_FOUND"), (409, "ENVIRONMENT_EXISTS"))
    async def update_environment(env_id: str) -> Response:
        spec = await body(EnvironmentUpdate)
        async with api.session() as session:
            env = await get_environment(session, env_id)
            changes = spec.model_dump(exclude_unset=True)
            for key, value in changes.items():
                if value is None:
                    raise invalid(key, "may not be null")
                setattr(env, "order_index" if key == "order" else key, value)
            env.updated_at = now_text()
            session.add(env)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("ENVIRONMENT_EXISTS", "an environment has this name") from None
        await api.audit("environment.updated", env.id, fields=sorted(changes))
        return ok(environment_data(env))

    @bp.delete("/environments/<env_id>")
    @require(WRITE)
    @answers(204, "Deleted")
    @errors((404, "ENVIRONMENT_NOT_FOUND"), (409, "ENVIRONMENT_IN_USE"))
    async def delete_environment(env_id: str) -> Response:
        async with api.session() as session:
            env = await get_environment(session, env_id)
            for table, column in (
                (Target, Target.environment_id),
                (Promotion, Promotion.environment_id),
            ):
                used = (
                    await session.exec(select(table.id).where(column == env_id).limit(1))
                ).first()
                if used is not None:
                    raise conflict(
                        "ENVIRONMENT_IN_USE",
                        f"environment {env.name!r} still has {table.__name__.lower()}s",
                    )
            await session.exec(delete(FreezeWindow).where(FreezeWindow.environment_id == env_id))
            await session.delete(env)
            await session.commit()
        await api.audit("environment.deleted", env_id, name=env.name)
        return no_content()

    @bp.post("/environments/<env_id>/freeze-windows")
    @require(WRITE)
    @document_request(FreezeWindowBody)
    @answers(201, "The freeze window")
    @errors((404, "ENVIRONMENT_NOT_FOUND"))
    async def create_window(env_id: str) -> Response:
        spec = await body(FreezeWindowBody)
        starts = timestamp(spec.starts_at, "startsAt")
        ends = timestamp(spec.ends_at, "endsAt")
        if ends <= starts:
            raise invalid("endsAt", "must be after startsAt", "INVALID_RANGE")
        who = caller()
        async with api.session() as session:
            await get_environment(session, env_id)
            window = FreezeWindow(
                tenant_id=who.tenant,
                environment_id=env_id,
                starts_at=starts,
                ends_at=ends,
                reason=spec.reason,
                exception_users=dumps(sorted(set(spec.exceptions.users))),
                exception_roles=dumps(sorted(set(spec.exceptions.roles))),
                created_by=who.subject,
                created_at=now_text(),
            )
            session.add(window)
            await session.commit()
        await api.audit("freeze_window.created", window.id, environmentId=env_id)
        return created(window_data(window))

    @bp.get("/environments/<env_id>/freeze-windows")
    @require(READ)
    @listed("The environment's freeze windows")
    @errors((404, "ENVIRONMENT_NOT_FOUND"))
    async def list_windows(env_id: str) -> Response:
        query = listing.parse(request.args, WINDOW_FIELDS, "startsAt")
        async with api.session() as session:
            await get_environment(session, env_id)
            statement = select(FreezeWindow).where(FreezeWindow.environment_id == env_id)
            rows, pages = await listing.page(session, statement, query, FreezeWindow.id)
        return ok([window_data(r) for r in rows], pagination=pages)

    @bp.delete("/environments/<env_id>/freeze-windows/<window_id>")
    @require(WRITE)
    @answers(204, "Deleted")
    @errors((404, "FREEZE_WINDOW_NOT_FOUND"))
    async def delete_window(env_id: str, window_id: str) -> Response:
        async with api.session() as session:
            window = await session.get(FreezeWindow, window_id)
            if window is None or window.environment_id != env_id:
                raise not_found("freeze_window", window_id)
            await session.delete(window)
            await session.commit()
        await api.audit("freeze_window.deleted", window_id, environmentId=env_id)
        return no_content()

    return bp
