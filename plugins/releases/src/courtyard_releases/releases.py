"""RELMAN, releases: `/api/v1/releases[/{id}]`, `state`, `deprecate`, `compare/{otherId}`
and `from-latest`.

A release is `draft` until it is finalized (`PUT` with `"status": "finalized"`); from then
on it is immutable: any change, and its deletion, is a 409. `deprecate` ends its life.
Every change to a draft is a conditional update on its status, so a change racing a
finalize either lands before it or is refused."""

from __future__ import annotations

from typing import Any, Literal

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from quart_schema import document_request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from . import listing
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, dumps, listed, loads
from .components import get_component
from .envelope import ReleasesError, conflict, created, invalid, no_content, not_found, now_text, ok
from .environments import NAME
from .listing import Field
from .tables import Component, ComponentVersion, Deployment, Promotion, Release

FIELDS = [
    Field("name", Release.name),
    Field("status", Release.status),
    Field("createdBy", Release.created_by),
    Field("createdAt", Release.created_at, "datetime"),
    Field("updatedAt", Release.updated_at, "datetime"),
    Field("finalizedAt", Release.finalized_at, "datetime"),
]
TRANSITIONS = {"draft": ["finalized"], "finalized": ["deprecated"], "deprecated": []}


class ComponentRef(Body):
    """A component version in a release: by `versionId`, or by `version` name."""

    component_id: str = Spec(min_length=1, max_length=32)
    version_id: str | None = Spec(default=None, max_length=32)
    version: str | None = Spec(default=None, max_length=128)


class ReleaseBody(Body):
    """A new draft release."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    description: str = Spec(default="", max_length=1000)
    components: list[ComponentRef] = Spec(default_factory=list, max_length=100)


class ReleaseUpdate(Body):
    """Changes to a draft; `"status": "finalized"` finalizes it."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    description: str | None = Spec(default=None, max_length=1000)
    components: list[ComponentRef] | None = Spec(default=None, max_length=100)
    status: Literal["finalized"] | None = None


class FromLatest(Body):
    """A draft from each component's newest version (every component with a version,
    or those listed)."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    description: str = Spec(default="", max_length=1000)
    component_ids: list[str] | None = Spec(default=None, max_length=100)


def release_data(release: Release) -> dict[str, Any]:
    """A release as answered."""
    return {
        "id": release.id,
        "name": release.name,
        "description": release.description,
        "status": release.status,
        "components": loads(release.components),
        "createdBy": release.created_by,
        "createdAt": release.created_at,
        "updatedAt": release.updated_at,
        "finalizedAt": release.finalized_at,
        "finalizedBy": release.finalized_by,
        "deprecatedAt": release.deprecated_at,
    }


def snapshot(component: Component, version: ComponentVersion) -> dict[str, Any]:
    """What a release records of one component version."""
    return {
        "componentId": component.id,
        "name": component.name,
        "kind": component.kind,
        "appName": component.app_name or None,
        "versionId": version.id,
        "version": version.version,
        "digest": version.digest,
        "reference": version.reference,
        "archiveFormat": version.archive_format,
    }


async def get_release(session: Any, release_id: str) -> Release:
    """The tenant's release; 404 `RELEASE_NOT_FOUND`."""
    release = await session.get(Release, release_id)
    if release is None:
        raise not_found("release", release_id)
    return release


def immutable(release: Release) -> ReleasesError:
    """The 409 for a change to a release that is no longer a draft."""
    return conflict(
        "RELEASE_IMMUTABLE",
        f"release {release.name!r} is {release.status}: it can no longer change",
        status=release.status,
    )


async def resolve(session: Any, refs: list[ComponentRef]) -> list[dict[str, Any]]:
    """The snapshots of `refs`; 400 naming the entry that does not resolve."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, ref in enumerate(refs):
        where = f"components.{index}"
        if ref.component_id in seen:
            raise invalid(f"{where}.componentId", "appears twice", "DUPLICATE_COMPONENT")
        seen.add(ref.component_id)
        component = await session.get(Component, ref.component_id)
        if component is None:
            raise invalid(f"{where}.componentId", "no such component", "UNKNOWN_COMPONENT")
        statement = select(ComponentVersion).where(ComponentVersion.component_id == component.id)
        if ref.version_id is not None:
            statement = statement.where(ComponentVersion.id == ref.version_id)
        elif ref.version is not None:
            statement = statement.where(ComponentVersion.version == ref.version)
        else:
            raise invalid(where, "needs versionId or version", "VERSION_REQUIRED")
        version = (await session.exec(statement)).first()
        if version is None:
            raise invalid(where, "no such version of the component", "UNKNOWN_VERSION")
        out.append(snapshot(component, version))
    return out


def compare(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Components added, removed, changed (with digests) and unchanged, from `theirs`
    (the other release) to `mine`."""
    a = {c["componentId"]: c for c in theirs}
    b = {c["componentId"]: c for c in mine}
    changed = [
        {"componentId": key, "name": b[key]["name"], "from": a[key], "to": b[key]}
        for key in sorted(a.keys() & b.keys())
        if (a[key]["version"], a[key]["digest"]) != (b[key]["version"], b[key]["digest"])
    ]
    same = [
        b[k] for k in sorted(a.keys() & b.keys()) if k not in {c["componentId"] for c in changed}
    ]
    return {
        "added": [b[k] for k in sorted(b.keys() - a.keys())],
        "removed": [a[k] for k in sorted(a.keys() - b.keys())],
        "changed": changed,
        "unchanged": same,
    }


def routes(api: Api) -> Blueprint:
    """The release routes."""
    bp = blueprint("releases")

    async def add(name: str, description: str, components: list[dict[str, Any]]) -> Release:
        who, now = caller(), now_text()
        release = Release(
            tenant_id=who.tenant,
            name=name,
            description=description,
            components=dumps(components),
            created_by=who.subject,
            created_at=now,
            updated_at=now,
        )
        async with api.session() as session:
            session.add(release)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("RELEASE_EXISTS", f"release {name!r} exists") from None
        await api.audit("release.created", release.id, name=name)
        return release

    @bp.post("/releases")
    @require(WRITE)
    @document_request(ReleaseBody)
    @answers(201, "The draft release")
    @errors((409, "RELEASE_EXISTS"))
    async def create_release() -> Response:
        spec = await body(ReleaseBody)
        async with api.session() as session:
            components = await resolve(session, spec.components)
        return created(release_data(await add(spec.name, spec.description, components)))

    @bp.post("/releases/from-latest")
    @require(WRITE)
    @document_request(FromLatest)
    @answers(201, "A draft of each component's newest version")
    @errors((409, "RELEASE_EXISTS"), (422, "NO_VERSIONS"))
    async def from_latest() -> Response:
        spec = await body(FromLatest)
        components: list[dict[str, Any]] = []
        async with api.session() as session:
            if spec.component_ids is None:
                chosen = list(
                    (await session.exec(select(Component).order_by(Component.name))).all()
                )
            else:
                chosen = [
                    await get_component(session, cid) for cid in dict.fromkeys(spec.component_ids)
                ]
            for component in chosen:
                newest = (
                    await session.exec(
                        select(ComponentVersion)
                        .where(ComponentVersion.component_id == component.id)
                        .order_by(ComponentVersion.seq.desc(), ComponentVersion.created_at.desc())
                        .limit(1)
                    )
                ).first()
                if newest is not None:
                    components.append(snapshot(component, newest))
                elif spec.component_ids is not None:
                    raise ReleasesError(
                        422, "NO_VERSIONS", f"component {component.name!r} has no version"
                    )
        if not components:
            raise ReleasesError(422, "NO_VERSIONS", "no component has a version yet")
        return created(release_data(await add(spec.name, spec.description, components)))

    @bp.get("/releases")
    @require(READ)
    @listed("The releases")
    async def list_releases() -> Response:
        query = listing.parse(request.args, FIELDS, "-createdAt")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Release), query, Release.id)
        return ok([release_data(r) for r in rows], pagination=pages)

    @bp.get("/releases/<release_id>")
    @require(READ)
    @answers(200, "The release")
    @errors((404, "RELEASE_NOT_FOUND"))
    async def get_release_route(release_id: str) -> Response:
        async with api.session() as session:
            return ok(release_data(await get_release(session, release_id)))

    @bp.put("/releases/<release_id>")
    @require(WRITE)
    @document_request(ReleaseUpdate)
    @answers(200, "The release, changed")
    @errors(
        (404, "RELEASE_NOT_FOUND"),
        (409, "RELEASE_IMMUTABLE"),
        (409, "RELEASE_EXISTS"),
        (422, "RELEASE_EMPTY"),
    )
    async def update_release(release_id: str) -> Response:
        spec = await body(ReleaseUpdate)
        who, now = caller(), now_text()
        async with api.session() as session:
            release = await get_release(session, release_id)
            if release.status != "draft":
                raise immutable(release)
            values: dict[str, Any] = {"updated_at": now}
            if spec.name is not None:
                values["name"] = spec.name
            if spec.description is not None:
                values["description"] = spec.description
            components = loads(release.components)
            if spec.components is not None:
                components = await resolve(session, spec.components)
                values["components"] = dumps(components)
            if spec.status == "finalized":
                if not components:
                    raise ReleasesError(422, "RELEASE_EMPTY", "a release needs a component")
                values.update(status="finalized", finalized_at=now, finalized_by=who.subject)
            statement = (
                update(Release)
                .where(Release.id == release_id, Release.status == "draft")  # type: ignore[arg-type]
                .values(**values)
            )
            try:
                changed = await session.exec(statement)  # type: ignore[call-overload]
                if changed.rowcount != 1:
                    await session.rollback()
                    raise immutable(await _fresh(api, release_id))
                await session.commit()
            except IntegrityError:
                raise conflict("RELEASE_EXISTS", "a release has this name") from None
        async with api.session() as session:
            release = await get_release(session, release_id)
        action = "release.finalized" if spec.status == "finalized" else "release.updated"
        await api.audit(action, release_id, fields=sorted(spec.model_fields_set))
        return ok(release_data(release))

    @bp.delete("/releases/<release_id>")
    @require(WRITE)
    @answers(204, "Deleted (drafts only)")
    @errors((404, "RELEASE_NOT_FOUND"), (409, "RELEASE_IMMUTABLE"))
    async def delete_release(release_id: str) -> Response:
        async with api.session() as session:
            release = await get_release(session, release_id)
            if release.status != "draft":
                raise immutable(release)
            await session.delete(release)
            await session.commit()
        await api.audit("release.deleted", release_id, name=release.name)
        return no_content()

    @bp.get("/releases/<release_id>/state")
    @require(READ)
    @answers(200, "The release's state, its transitions, promotions and deployments")
    @errors((404, "RELEASE_NOT_FOUND"))
    async def state(release_id: str) -> Response:
        async with api.session() as session:
            release = await get_release(session, release_id)
            promotions = (
                await session.exec(
                    select(Promotion)
                    .where(Promotion.release_id == release_id)
                    .order_by(Promotion.created_at)
                )
            ).all()
            deployments = (
                await session.exec(
                    select(Deployment)
                    .where(Deployment.release_id == release_id)
                    .order_by(Deployment.created_at)
                )
            ).all()
        return ok(
            {
                "id": release.id,
                "status": release.status,
                "allowedTransitions": TRANSITIONS[release.status],
                "finalizedAt": release.finalized_at,
                "finalizedBy": release.finalized_by,
                "deprecatedAt": release.deprecated_at,
                "promotions": [
                    {"id": p.id, "environmentId": p.environment_id, "status": p.status}
                    for p in promotions
                ],
                "deployments": [
                    {"id": d.id, "environmentId": d.environment_id, "status": d.status}
                    for d in deployments
                ],
            }
        )

    @bp.post("/releases/<release_id>/deprecate")
    @require(WRITE)
    @answers(200, "The release, deprecated")
    @errors((404, "RELEASE_NOT_FOUND"), (409, "INVALID_STATE_TRANSITION"))
    async def deprecate(release_id: str) -> Response:
        now = now_text()
        async with api.session() as session:
            release = await get_release(session, release_id)
            statement = (
                update(Release)
                .where(Release.id == release_id, Release.status == "finalized")  # type: ignore[arg-type]
                .values(status="deprecated", deprecated_at=now, updated_at=now)
            )
            changed = await session.exec(statement)  # type: ignore[call-overload]
            if changed.rowcount != 1:
                raise conflict(
                    "INVALID_STATE_TRANSITION",
                    f"a {release.status} release cannot be deprecated",
                    status=release.status,
                )
            await session.commit()
        async with api.session() as session:
            release = await get_release(session, release_id)
        await api.audit("release.deprecated", release_id)
        return ok(release_data(release))

    @bp.get("/releases/<release_id>/compare/<other_id>")
    @require(READ)
    @answers(200, "Components added, removed and changed from the other release to this one")
    @errors((404, "RELEASE_NOT_FOUND"))
    async def compare_route(release_id: str, other_id: str) -> Response:
        async with api.session() as session:
            mine = await get_release(session, release_id)
            other = await get_release(session, other_id)
        diff = compare(loads(mine.components), loads(other.components))
        return ok({"releaseId": release_id, "otherId": other_id, **diff})

    return bp


async def _fresh(api: Api, release_id: str) -> Release:
    async with api.session() as session:
        return await get_release(session, release_id)
