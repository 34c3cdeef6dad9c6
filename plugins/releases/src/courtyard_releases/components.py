"""RELMAN, components: `/api/v1/components[/{id}]`, `sync-versions` and `versions`.

A `courtyard-app` component's versions are uploaded archives (multipart `file` and
`version`), stored content-addressed; an `oci-image` component's versions are references,
pinned when they carry a digest (`image@sha256:...`)."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from courtyard_sdk import Blueprint, Response, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from pydantic import Field as Spec
from pydantic import model_validator
from quart_schema import document_request
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import delete, select

from . import listing
from .blobs import BlobStore, archive_format
from .common import READ, WRITE, Api, Body, answers, blueprint, body, caller, listed
from .envelope import ReleasesError, conflict, created, invalid, no_content, not_found, now_text, ok
from .environments import NAME
from .listing import Field
from .tables import Component, ComponentVersion, Release

VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
DIGEST = r"^sha256:[0-9a-f]{64}$"
IMAGE = r"^[a-z0-9][a-z0-9._/:-]{0,510}$"
Kind = Literal["courtyard-app", "oci-image"]
FIELDS = [
    Field("name", Component.name),
    Field("kind", Component.kind),
    Field("createdAt", Component.created_at, "datetime"),
    Field("updatedAt", Component.updated_at, "datetime"),
]
VERSION_FIELDS = [
    Field("version", ComponentVersion.version),
    Field("digest", ComponentVersion.digest),
    Field("createdAt", ComponentVersion.created_at, "datetime"),
]


class ComponentBody(Body):
    """A new component: `appName` for a Courtyard app (its name by default), `image` for
    an OCI image."""

    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    kind: Kind
    app_name: str | None = Spec(default=None, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    image: str | None = Spec(default=None, pattern=IMAGE)
    description: str = Spec(default="", max_length=1000)

    @model_validator(mode="after")
    def _kind_fields(self) -> ComponentBody:
        if self.kind == "oci-image" and not self.image:
            raise ValueError("an oci-image component needs image")
        if self.kind == "courtyard-app" and self.image:
            raise ValueError("image is for oci-image components")
        return self


class ComponentUpdate(Body):
    """Changes to a component (what its versions do not depend on)."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    description: str | None = Spec(default=None, max_length=1000)


class ImageVersion(Body):
    """One version of an image: a tag, pinned when it has a digest."""

    version: str = Spec(pattern=VERSION)
    digest: str | None = Spec(default=None, pattern=DIGEST)


class ImageVersions(Body):
    """The versions to record for an image."""

    versions: list[ImageVersion] = Spec(min_length=1, max_length=100)


def component_data(component: Component) -> dict[str, Any]:
    """A component as answered."""
    return {
        "id": component.id,
        "name": component.name,
        "kind": component.kind,
        "appName": component.app_name or None,
        "image": component.image or None,
        "description": component.description,
        "createdBy": component.created_by,
        "createdAt": component.created_at,
        "updatedAt": component.updated_at,
    }


def version_data(version: ComponentVersion) -> dict[str, Any]:
    """A component version as answered."""
    return {
        "id": version.id,
        "componentId": version.component_id,
        "version": version.version,
        "digest": version.digest,
        "reference": version.reference,
        "pinned": version.digest is not None,
        "size": version.size,
        "archiveFormat": version.archive_format,
        "createdBy": version.created_by,
        "createdAt": version.created_at,
    }


async def get_component(session: Any, component_id: str) -> Component:
    """The tenant's component; 404 `COMPONENT_NOT_FOUND`."""
    component = await session.get(Component, component_id)
    if component is None:
        raise not_found("component", component_id)
    return component


def routes(api: Api, blobs: BlobStore) -> Blueprint:
    """The component routes."""
    bp = blueprint("components")

    @bp.post("/components")
    @require(WRITE)
    @document_request(ComponentBody)
    @answers(201, "The component")
    @errors((409, "COMPONENT_EXISTS"))
    async def create_component() -> Response:
        spec = await body(ComponentBody)
        who, now = caller(), now_text()
        component = Component(
            tenant_id=who.tenant,
            name=spec.name,
            kind=spec.kind,
            app_name=(spec.app_name or spec.name.lower()) if spec.kind == "courtyard-app" else "",
            image=spec.image or "",
            description=spec.description,
            created_by=who.subject,
            created_at=now,
            updated_at=now,
        )
        async with api.session() as session:
            session.add(component)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("COMPONENT_EXISTS", f"component {spec.name!r} exists") from None
        await api.audit("component.created", component.id, name=component.name)
        return created(component_data(component))

    @bp.get("/components")
    @require(READ)
    @listed("The components")
    async def list_components() -> Response:
        query = listing.parse(request.args, FIELDS, "name")
        async with api.session() as session:
            rows, pages = await listing.page(session, select(Component), query, Component.id)
        return ok([component_data(r) for r in rows], pagination=pages)

    @bp.get("/components/<component_id>")
    @require(READ)
    @answers(200, "The component")
    @errors((404, "COMPONENT_NOT_FOUND"))
    async def get_component_route(component_id: str) -> Response:
        async with api.session() as session:
            return ok(component_data(await get_component(session, component_id)))

    @bp.put("/components/<component_id>")
    @require(WRITE)
    @document_request(ComponentUpdate)
    @answers(200, "The component, changed")
    @errors((404, "COMPONENT_NOT_FOUND"), (409, "COMPONENT_EXISTS"))
    async def update_component(component_id: str) -> Response:
        spec = await body(ComponentUpdate)
        async with api.session() as session:
            component = await get_component(session, component_id)
            if spec.name is not None:
                component.name = spec.name
            if spec.description is not None:
                component.description = spec.description
            component.updated_at = now_text()
            session.add(component)
            try:
                await session.commit()
            except IntegrityError:
                raise conflict("COMPONENT_EXISTS", "a component has this name") from None
        await api.audit("component.updated", component_id, fields=sorted(spec.model_fields_set))
        return ok(component_data(component))

    @bp.delete("/components/<component_id>")
    @require(WRITE)
    @answers(204, "Deleted, with its versions")
    @errors((404, "COMPONENT_NOT_FOUND"), (409, "COMPONENT_IN_USE"))
    async def delete_component(component_id: str) -> Response:
        async with api.session() as session:
            component = await get_component(session, component_id)
            marker = f'%"componentId":"{component_id}"%'
            used = await session.exec(
                select(Release.name).where(Release.components.like(marker)).limit(1)  # type: ignore[attr-defined]
            )
            if (name := used.first()) is not None:
                raise conflict("COMPONENT_IN_USE", f"release {name!r} uses this component")
            await session.exec(
                delete(ComponentVersion).where(ComponentVersion.component_id == component_id)
            )
            await session.delete(component)
            await session.commit()
        await api.audit("component.deleted", component_id, name=component.name)
        return no_content()

    @bp.post("/components/<component_id>/sync-versions")
    @require(WRITE)
    @answers(200, "The versions added, and those already known")
    @errors(
        (404, "COMPONENT_NOT_FOUND"),
        (409, "VERSION_EXISTS"),
        (400, "INVALID_ARCHIVE"),
    )
    async def sync_versions(component_id: str) -> Response:
        async with api.session() as session:
            component = await get_component(session, component_id)
        if component.kind == "courtyard-app":
            found = [await _upload(blobs, component)]
        else:
            spec = await body(ImageVersions)
            found = [
                (v.version, v.digest, _reference(component.image, v), None, None)
                for v in spec.versions
            ]
        added, known = await _record(api, component, found)
        await api.audit(
            "component.versions_synced",
            component_id,
            added=[v["version"] for v in added],
        )
        return ok({"added": added, "unchanged": known})

    @bp.get("/components/<component_id>/versions")
    @require(READ)
    @listed("The component's versions, newest first")
    @errors((404, "COMPONENT_NOT_FOUND"))
    async def list_versions(component_id: str) -> Response:
        query = listing.parse(request.args, VERSION_FIELDS, "-createdAt")
        async with api.session() as session:
            await get_component(session, component_id)
            statement = select(ComponentVersion).where(
                ComponentVersion.component_id == component_id
            )
            rows, pages = await listing.page(session, statement, query, ComponentVersion.seq.desc())
        return ok([version_data(r) for r in rows], pagination=pages)

    return bp


def _reference(image: str, version: ImageVersion) -> str:
    return f"{image}@{version.digest}" if version.digest else f"{image}:{version.version}"


Found = tuple[str, str | None, str, int | None, str | None]


async def _upload(blobs: BlobStore, component: Component) -> Found:
    """Store the uploaded archive; (version, digest, reference, size, format)."""
    form = await request.form
    files = await request.files
    version = form.get("version", "")
    if not re.fullmatch(VERSION, version):
        raise invalid("version", "a version such as 1.2.0 is required", "INVALID_VERSION")
    upload = files.get("file")
    if upload is None:
        raise invalid("file", "the app archive (.tgz, .tar.gz or .zip) is required", "REQUIRED")
    head = upload.stream.read(4)
    upload.stream.seek(0)
    kind = archive_format(upload.filename or "", head)
    if kind is None:
        raise ReleasesError(400, "INVALID_ARCHIVE", "the file is not a .tgz, .tar.gz or .zip")
    digest, size = await asyncio.to_thread(blobs.put, upload.stream)
    return version, digest, f"{component.app_name}@{digest}", size, kind


async def _record(
    api: Api, component: Component, found: list[Found]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Add the versions not known yet; a known version with other content is a 409
    (versions are immutable)."""
    who = caller()
    added: list[dict[str, Any]] = []
    known: list[dict[str, Any]] = []
    async with api.session() as session:
        seq = await session.scalar(
            select(func.max(ComponentVersion.seq)).where(
                ComponentVersion.component_id == component.id
            )
        )
        seq = int(seq or 0)
        for version, digest, reference, size, kind in found:
            existing = (
                await session.exec(
                    select(ComponentVersion).where(
                        ComponentVersion.component_id == component.id,
                        ComponentVersion.version == version,
                    )
                )
            ).first()
            if existing is not None:
                if existing.digest != digest or existing.reference != reference:
                    raise conflict(
                        "VERSION_EXISTS",
                        f"version {version!r} exists with other content; versions are immutable",
                        version=version,
                    )
                known.append(version_data(existing))
                continue
            seq += 1
            row = ComponentVersion(
                tenant_id=who.tenant,
                component_id=component.id,
                version=version,
                digest=digest,
                reference=reference,
                size=size,
                archive_format=kind,
                seq=seq,
                created_by=who.subject,
                created_at=now_text(),
            )
            session.add(row)
            added.append(version_data(row))
        try:
            await session.commit()
        except IntegrityError:
            raise conflict("VERSION_EXISTS", "a version was recorded at the same time") from None
    return added, known
