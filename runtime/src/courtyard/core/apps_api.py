"""`/api/apps/*` (Buntime's API): list, upload, remove an app or one version."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

from courtyard_sdk import ApiError, is_valid_name
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from packaging.version import InvalidVersion
from pydantic import BaseModel
from quart import Blueprint, request
from quart_schema import DataSource, document_querystring, document_request, document_response, tag

from ..apps.registry import App, AppManifestError, InvalidAppName, read_app_manifest
from ..installs import accept_tree, install_tree, remove_tree, replaced, restore_tree
from ..services.store import APP, AlreadyInstalled
from . import current_generation, current_runtime, uploads
from .openapi import AppUploadQuery, ArchiveUpload, archive_errors

blueprint = Blueprint("apps", __name__, url_prefix="/api/apps")
log = logging.getLogger("courtyard.apps")


class InstalledApp(BaseModel):
    """An app and its installed versions, lowest first."""

    name: str
    path: str
    versions: list[str]


class UploadedApp(BaseModel):
    """Where an uploaded app version went."""

    name: str
    version: str
    installedAt: str


class AppUploadResult(BaseModel):
    """The answer to an app upload."""

    success: bool
    data: dict[str, UploadedApp]


class Success(BaseModel):
    """A plain success answer."""

    success: bool


@blueprint.get("/")
@tag(["apps"])
@document_response(list[InstalledApp])
@require("apps:read")
async def list_apps() -> list[dict[str, Any]]:
    """Apps installed in the app directories (`workerDirs`), with their versions."""
    registry = current_runtime().apps.registry
    registry.invalidate()
    return [
        {"name": app.name, "path": str(app.path), "versions": app.sorted_versions()}
        for app in registry.apps().values()
    ]


@blueprint.post("/upload")
@tag(["apps"])
@document_response(AppUploadResult)
@document_request(ArchiveUpload, source=DataSource.FORM_MULTIPART)
@document_querystring(AppUploadQuery)
@archive_errors
@errors((400, "NO_WORKER_DIRS"), (409, "VERSION_EXISTS"))
@require("apps:install")
async def upload_app() -> dict[str, Any]:
    """Install an app version from a .tgz, .tar.gz or .zip (form field `file`).

    The archive holds a `package.json` with `name` and `version` (settings under a
    `courtyard` key) or an `app.toml`. It goes to `<first app dir>/[@scope/]name/<version>`.
    Versions are immutable: uploading one that exists is 409 `VERSION_EXISTS` unless the
    query has `overwrite=true`.
    """
    host = current_runtime()
    settings = current_generation().settings
    if not settings.app_folders:
        raise ApiError(400, "NO_WORKER_DIRS", "No workerDirs configured")
    overwrite = request.args.get("overwrite", "").lower() in ("1", "true", "yes")
    app_dir = settings.app_folders[0]
    async with uploads.received_archive(app_dir, settings) as received:
        try:
            name, version, _ = read_app_manifest(received.content)
        except InvalidAppName as exc:
            raise ApiError(400, "PATH_TRAVERSAL", f"Invalid package name: {exc}") from None
        except AppManifestError as exc:
            raise ApiError(400, "INVALID_MANIFEST", str(exc)) from None
        async with host.apps.changes, host.replication.lock(APP):
            host.apps.registry.invalidate()
            installed = host.apps.registry.get(name)
            # 1.0 is 1.0.0: an equal version, however spelt, is the same version.
            same = installed.equal_version(version) if installed else None
            version = same or version  # an overwrite keeps the installed spelling
            destination = app_dir / name / version
            if (same or destination.exists()) and not overwrite:
                raise _version_exists(name, version)
            journal = install_tree(received.content, destination)
            path = f"{name}/{version}"
            try:
                # Exclusive: another instance may have installed this version meanwhile.
                revision = await host.services.store.install(
                    APP, path, received.archive, exclusive=not overwrite
                )
            except BaseException as exc:
                restore_tree(journal, destination)
                if isinstance(exc, AlreadyInstalled):
                    raise _version_exists(name, version) from None
                raise
            host.replication.marked(APP, path, received.archive.sha256)
            host.apps.registry.invalidate()
            if replaced(journal):
                await host.apps.stop_keys([f"{name}@{version}"])  # fresh workers, new code
            await asyncio.to_thread(accept_tree, journal)  # an archive checked beforehand
        await host.replication.settle(revision)
    log.info("installed app %s %s at %s", name, version, destination)
    return {
        "success": True,
        "data": {"app": {"name": name, "version": version, "installedAt": str(destination)}},
    }


def _version_exists(name: str, version: str) -> ApiError:
    return ApiError(
        409,
        "VERSION_EXISTS",
        f"{name} {version} is installed; versions are immutable (add ?overwrite=true to "
        "replace it)",
    )


def _installed_app(scope: str, name: str, missing: ApiError) -> tuple[str, App]:
    """The app `DELETE /api/apps/:scope/:name[/:version]` means.

    :param missing: the route's documented answer for an app that is not installed (a
        scope without `@` or an invalid name can name none).
    :raises ApiError: `missing`; 400 `PATH_TRAVERSAL` for an app folder that resolves
        outside the app directories (a link).
    """
    full = name if scope == "_" else f"{scope}/{name}"
    app = None
    if (scope == "_" or scope.startswith("@")) and is_valid_name(full):
        app = current_runtime().apps.registry.get(full)
    if app is None:
        raise missing
    settings = current_generation().settings
    if not any(d.resolve() in app.path.resolve().parents for d in settings.app_folders):
        raise ApiError(400, "PATH_TRAVERSAL", f"{app.path} is outside the app directories")
    return full, app


@blueprint.delete("/<scope>/<name>")
@tag(["apps"])
@document_response(Success)
@errors((400, "PATH_TRAVERSAL"), (404, "APP_NOT_FOUND"))
@require("apps:remove")
async def delete_app(scope: str, name: str) -> dict[str, bool]:
    """Remove an app and all its versions (`_` as scope for an unscoped app)."""
    host = current_runtime()
    async with host.apps.changes, host.replication.lock(APP):
        host.apps.registry.invalidate()
        missing = ApiError(404, "APP_NOT_FOUND", f"App {scope}/{name} not found")
        full, app = _installed_app(scope, name, missing)
        keys = [v.key for v in app.versions.values()]
        folders = current_generation().settings.app_folders
        revision = await host.replication.record_removal(APP, app.path, folders)
        await asyncio.to_thread(remove_tree, app.path)
        host.apps.registry.invalidate()
        await host.apps.stop_keys(keys)
    await host.replication.settle(revision)
    log.info("removed app %s", full)
    return {"success": True}


@blueprint.delete("/<scope>/<name>/<version>")
@tag(["apps"])
@document_response(Success)
@errors((400, "PATH_TRAVERSAL"), (404, "APP_NOT_FOUND"), (404, "VERSION_NOT_FOUND"))
@require("apps:remove")
async def delete_version(scope: str, name: str, version: str) -> dict[str, bool]:
    """Remove one version of an app; its workers stop once their requests are done."""
    host = current_runtime()
    async with host.apps.changes, host.replication.lock(APP):
        host.apps.registry.invalidate()
        missing = ApiError(
            404, "VERSION_NOT_FOUND", f"App {scope}/{name} has no version {version[:100]!r}"
        )
        full, app = _installed_app(scope, name, missing)
        try:
            version = app.equal_version(version) or version
        except InvalidVersion:
            raise missing from None
        if version not in app.versions:
            raise missing
        folders = current_generation().settings.app_folders
        root = app.versions[version].root
        revision = await host.replication.record_removal(APP, root, folders)
        await asyncio.to_thread(remove_tree, root)
        if not any(p for p in app.path.iterdir() if not p.name.startswith(".")):
            await asyncio.to_thread(remove_tree, app.path)
        host.apps.registry.invalidate()
        await host.apps.stop_keys([f"{full}@{version}"])
    await host.replication.settle(revision)
    log.info("removed app %s %s", full, version)
    return {"success": True}


@blueprint.delete("/")
@blueprint.delete("/<path:rest>")
@tag(["apps"])
@errors((400, "MISSING_PARAMS"), only=True)  # the answer to a malformed path
@require("apps:remove")
async def delete_without_params(rest: str = "") -> NoReturn:
    """Answer `400 MISSING_PARAMS`: scope and name (and version) belong in the path."""
    raise ApiError(400, "MISSING_PARAMS", "Scope and name are required: /api/apps/:scope/:name")
