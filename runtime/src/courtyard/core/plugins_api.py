"""`/api/plugins/*` (Buntime's API): list, loaded, reload, delete."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any, NoReturn

from courtyard_sdk import ApiError, Manifest, ManifestError, Menu, is_valid_name, read_manifest
from courtyard_sdk.identity import require
from courtyard_sdk.manifest import MANIFEST_FILE
from courtyard_sdk.openapi import errors
from courtyard_sdk.status import PluginStatus
from pydantic import BaseModel
from quart import Blueprint, request
from quart_schema import DataSource, document_request, document_response, tag

from ..discovery import scan
from ..generation import BuildError, Generation, PluginRecord
from ..hooks import Outcome
from . import current_generation, current_runtime, uploads
from .openapi import ArchiveUpload, archive_errors

blueprint = Blueprint("plugins", __name__, url_prefix="/api/plugins")
log = logging.getLogger("courtyard.plugins")


class InstalledPlugin(BaseModel):
    """A plugin found on disk, and its state in the serving generation."""

    name: str
    path: str
    version: str | None = None
    source: str
    status: str
    error: str | None = None


class MenuEntry(BaseModel):
    """A menu entry (`items` nest)."""

    title: str
    icon: str | None = None
    path: str
    items: list[MenuEntry] | None = None


class LoadedPlugin(BaseModel):
    """A plugin the serving generation runs."""

    name: str
    base: str
    dependencies: list[str]
    optionalDependencies: list[str]
    menus: list[MenuEntry]


class PluginRef(BaseModel):
    """A plugin's name and base."""

    name: str
    base: str


class FailedPlugin(BaseModel):
    """A plugin a reload could not load, and why."""

    name: str
    error: str


class ReloadResult(BaseModel):
    """The outcome of a reload."""

    ok: bool
    plugins: list[PluginRef]
    failed: list[FailedPlugin]


class Success(BaseModel):
    """A plain success answer."""

    success: bool


@blueprint.get("/")
@tag(["plugins"])
@document_response(list[InstalledPlugin])
@require("plugins:read")
async def list_plugins() -> list[dict[str, Any]]:
    """Plugins found in the plugin directories and installed distributions.

    A filesystem scan that imports nothing. `status` is the plugin's state in the serving
    generation: `loaded`, `failed`, `disabled`, or `unloaded` (found since the last reload).
    """
    generation = current_generation()
    fates = {rec.candidate.root: rec for rec in generation.records}
    out = []
    for cand in scan(generation.settings):
        rec = fates.get(cand.root)
        if rec is not None:
            status, error = rec.status, rec.error
        elif cand.manifest is None:
            status, error = PluginStatus.FAILED, cand.error
        elif cand.shadowed_by is not None:
            status, error = PluginStatus.DISABLED, cand.shadow_note
        else:
            status, error = PluginStatus.UNLOADED, None
        out.append(
            {
                "name": cand.name,
                "path": str(cand.root),
                "version": cand.manifest.version if cand.manifest else None,
                "source": cand.source,
                "status": status,
                "error": error,
            }
        )
    return out


@blueprint.get("/loaded")
@tag(["plugins"])
@document_response(list[LoadedPlugin])
async def loaded_plugins() -> list[dict[str, Any]]:
    """Plugins the serving generation runs, in dependency order, with their menus."""
    generation = current_generation()
    plugins = [rec for rec in generation.loaded if rec.candidate.manifest is not None]
    return [
        {
            "name": outcome.plugin.name,
            "base": manifest.base,
            "dependencies": list(manifest.dependencies),
            "optionalDependencies": list(manifest.optional_dependencies),
            "menus": [m.to_json() for m in [*manifest.menus, *_menus(outcome)]],
        }
        async for outcome in generation.hooks.each_async(
            plugins, "courtyard_menus", (Menu, dict), request=request
        )
        if (manifest := outcome.plugin.candidate.manifest) is not None
    ]


def _menus(outcome: Outcome[PluginRecord]) -> list[Menu]:
    """The menus a plugin's `courtyard_menus` hook added, up to the first that is not a
    valid menu; the failure is logged."""
    error = outcome.failure.error if outcome.failure is not None else None
    menus: list[Menu] = []
    for entry in outcome.items:
        try:
            menus.append(entry if isinstance(entry, Menu) else Menu.model_validate(entry))
        except Exception as exc:
            error = exc
            break
    if error is not None:
        log.error("%s | courtyard_menus failed: %s", outcome.plugin.name, error)
    return menus


def _reload_result(generation: Generation) -> dict[str, Any]:
    return {
        "ok": True,
        "plugins": [
            {"name": r.name, "base": r.candidate.manifest.base}
            for r in generation.loaded
            if r.candidate.manifest is not None
        ],
        "failed": [{"name": r.name, "error": r.error} for r in generation.failed],
    }


@blueprint.post("/reload")
@tag(["plugins"])
@document_response(ReloadResult)
@errors((422, "RELOAD_FAILED"))
@require("plugins:reload")
async def reload_plugins() -> dict[str, Any]:
    """Re-scan the plugin directories and swap in a new generation.

    In-flight requests finish on the old generation. A plugin that fails is excluded and
    listed under `failed`; if the new generation cannot be built at all (strict mode), the
    old one keeps serving and the answer is 422 `RELOAD_FAILED`.
    """
    try:
        generation = await current_runtime().reload()
    except BuildError as exc:
        raise ApiError(422, "RELOAD_FAILED", str(exc)) from None
    return _reload_result(generation)


class UploadedPlugin(BaseModel):
    """Where an uploaded plugin went."""

    name: str
    version: str
    installedAt: str


class UploadResult(BaseModel):
    """The answer to a plugin upload."""

    success: bool
    data: dict[str, UploadedPlugin]


def _uploaded_manifest(content: Path) -> Manifest:
    """The manifest in an uploaded plugin, its name checked first (PATH_TRAVERSAL)."""
    try:
        raw = tomllib.loads((content / MANIFEST_FILE).read_text("utf-8"))
    except FileNotFoundError:
        raise ApiError(400, "INVALID_MANIFEST", f"the archive holds no {MANIFEST_FILE}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ApiError(400, "INVALID_MANIFEST", f"{MANIFEST_FILE}: {exc}") from None
    name = raw.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise ApiError(400, "PATH_TRAVERSAL", f"Invalid package name: {name!r}")
    try:
        return read_manifest(content)
    except ManifestError as exc:  # without the staging folder's path
        message = str(exc).replace(f"{content}/", "")
        raise ApiError(400, "INVALID_MANIFEST", message) from None


@blueprint.post("/upload")
@tag(["plugins"])
@document_response(UploadResult)
@document_request(ArchiveUpload, source=DataSource.FORM_MULTIPART)
@archive_errors
@errors((400, "NO_PLUGIN_DIRS"), (422, "PLUGIN_LOAD_FAILED"))
@require("plugins:install")
async def upload_plugin() -> dict[str, Any]:
    """Install a plugin from a .tgz, .tar.gz or .zip (form field `file`), then reload.

    The archive holds `plugin.toml` at its top (or in one top folder, as `npm pack` makes).
    It goes to the first plugin directory as `[@scope/]name/`. If the new generation cannot
    load it, the previous files (if any) come back, the previous plugin set keeps serving,
    and the answer is 422 `PLUGIN_LOAD_FAILED` with the cause.
    """
    settings = current_generation().settings
    if not settings.plugin_folders:
        raise ApiError(400, "NO_PLUGIN_DIRS", "No pluginDirs configured")
    plugin_dir = settings.plugin_folders[0]
    async with uploads.received_archive(plugin_dir, settings) as received:
        manifest = _uploaded_manifest(received.content)
        destination = plugin_dir / manifest.name

        try:
            # The new generation serves only if the plugin loads in it.
            await current_runtime().install_plugin(
                manifest.name, received.content, plugin_dir, received.archive
            )
        except BuildError as exc:
            raise ApiError(422, "PLUGIN_LOAD_FAILED", str(exc)) from None
    log.info("installed plugin %s %s at %s", manifest.name, manifest.version, destination)
    return {
        "success": True,
        "data": {
            "plugin": {
                "name": manifest.name,
                "version": manifest.version,
                "installedAt": str(destination),
            }
        },
    }


@blueprint.delete("/")
@tag(["plugins"])
@errors((400, "MISSING_NAME"), only=True)
@require("plugins:remove")
async def delete_without_name() -> NoReturn:
    """Answer `400 MISSING_NAME`: the plugin's name belongs in the path."""
    raise ApiError(400, "MISSING_NAME", "Plugin name is required")


@blueprint.delete("/<path:name>")
@tag(["plugins"])
@document_response(Success)
@errors((400, "MISSING_NAME"), (400, "PATH_TRAVERSAL"), (404, "PLUGIN_NOT_FOUND"))
@errors((422, "RELOAD_FAILED"))
@require("plugins:remove")
async def delete_plugin(name: str) -> dict[str, bool]:
    """Remove a directory plugin's files, then reload without it.

    `name` is URL-encoded when scoped: `%40acme%2Fhello`.
    """
    name = name.strip()
    if not name:
        raise ApiError(400, "MISSING_NAME", "Plugin name is required")
    if not is_valid_name(name):
        raise ApiError(400, "PATH_TRAVERSAL", f"Invalid plugin name: {name!r}")
    settings = current_generation().settings
    found = [c for c in scan(settings) if c.name == name]
    folders = [c for c in found if c.source == "directory" and c.shadowed_by is None]
    if not folders:
        detail = " (it is an installed distribution: uninstall it instead)" if found else ""
        raise ApiError(404, "PLUGIN_NOT_FOUND", f"Plugin {name} not found{detail}")
    root = folders[0].root
    if not any(d.resolve() in root.resolve().parents for d in settings.plugin_folders):
        raise ApiError(400, "PATH_TRAVERSAL", f"{root} is outside the plugin directories")
    try:
        await current_runtime().remove_plugin(root)
    except BuildError as exc:
        raise ApiError(422, "RELOAD_FAILED", f"removed {name}, but: {exc}") from None
    log.info("removed plugin %s from %s", name, root)
    return {"success": True}
