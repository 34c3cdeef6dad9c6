"""The console's shell and its pages: overview, plugins, apps, and a plugin's page opened
inside the shell. Each page reads through the core API's own views, so a visitor sees
what its permissions allow, and the controls of an action only when it may take it."""

from __future__ import annotations

from typing import Any

from courtyard_sdk.identity import Identity
from courtyard_sdk.openapi import responds
from quart import Blueprint, Response, current_app, request
from quart_schema import tag

from ..core import apps_api, audit_api, current_generation, current_runtime, health, plugins_api
from . import menus
from .web import HOME_ATTRIBUTE, PREFIX, attempt, redirect, render, signed_in

blueprint = Blueprint("console", __name__)
RECENT = 8  # audit entries on the overview


async def shell(identity: Identity, template: str, **context: Any) -> Response:
    """A full console page: the shell (its sidebar for `identity`) around `template`."""
    return render(template, sidebar=await menus.sidebar(identity), **context)


@blueprint.get("/")
@tag(["console"])
@responds(200, "The console's overview (unless root_app is set)", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
@responds(307, "To the app root_app names", media_type=None)
async def root() -> Response:
    """The console's overview, or the app `root_app` names."""
    app_name = current_generation().settings.root_app
    if app_name:
        return redirect(f"/{app_name}/", 307)
    return await overview()


@blueprint.get(f"{PREFIX}/")
@tag(["console"])
@responds(200, "The console's overview (when root_app is set)", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
@responds(308, "To / (where the console lives)", media_type=None)
async def console_home() -> Response:
    """The console's overview when `/` is an app's; else a redirect to `/`."""
    if current_app.extensions.get(HOME_ATTRIBUTE) == "/":
        return redirect("/", 308)
    return await overview()


async def overview() -> Response:
    """Health, readiness, the generation, plugins, apps, recent audit entries."""
    identity = signed_in()
    generation = current_generation()
    readiness, _ = await health.ready()
    apps, apps_refused = await attempt(apps_api.list_apps)
    audit, audit_refused = await attempt(audit_api.list_entries)
    return await shell(
        identity,
        "overview.html",
        title="Overview",
        state=current_runtime().state,
        readiness=readiness,
        generation=generation,
        show_errors=identity.can("plugins:read"),
        apps=apps,
        apps_refused=apps_refused,
        audit=(audit or {}).get("entries", [])[:RECENT],
        audit_refused=audit_refused,
        can_stream=identity.can("events:read"),
    )


@blueprint.get(f"{PREFIX}/plugins")
@tag(["console"])
@responds(200, "The plugins page", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def plugins_page() -> Response:
    """The plugins found on disk and the loaded ones; upload, reload, remove."""
    identity = signed_in()
    found, refused = await attempt(plugins_api.list_plugins)
    return await shell(
        identity,
        "plugins.html",
        title="Plugins",
        found=found,
        refused=refused,
        loaded=await plugins_api.loaded_plugins(),
        generation=current_generation(),
    )


@blueprint.get(f"{PREFIX}/apps")
@tag(["console"])
@responds(200, "The apps page", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def apps_page() -> Response:
    """Apps, their versions and workers; upload, open, delete."""
    identity = signed_in()
    apps, refused = await attempt(apps_api.list_apps)
    workers: dict[str, list[dict[str, Any]]] = {}
    if apps is not None:
        for worker in await current_runtime().apps.workers():
            workers.setdefault(worker["key"], []).append(worker)
    return await shell(
        identity, "apps.html", title="Apps", apps=apps, refused=refused, workers=workers
    )


@blueprint.get(f"{PREFIX}/open/<path:path>")
@tag(["console"])
@responds(200, "The shell, loading a plugin's page into its content area", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def open_page(path: str) -> Response:
    """A plugin's page (a menu entry's path) inside the shell."""
    identity = signed_in()
    target = "/" + path.lstrip("/")
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    title = next(
        (
            e.title
            for g in await menus.sidebar(identity)
            for e in _walk(g.entries)
            if e.path == target
        ),
        target,
    )
    return await shell(identity, "open.html", title=title, target=target)


def _walk(entries: list[menus.Entry]) -> list[menus.Entry]:
    return [x for e in entries for x in (e, *_walk(e.items))]


@blueprint.get(f"{PREFIX}/fragments/sidebar")
@tag(["console"])
@responds(200, "The sidebar alone (htmx swaps it in after a reload)", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def sidebar_fragment() -> Response:
    """The sidebar, drawn again (the console asks after each plugin change)."""
    identity = signed_in()
    return render("sidebar.html", sidebar=await menus.sidebar(identity))
