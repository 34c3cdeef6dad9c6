"""The sidebar: the loaded plugins' menus (`GET /api/plugins/loaded`), grouped by plugin,
each entry shown only to an identity that holds the permissions of the route it opens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from courtyard_sdk.identity import PERMISSIONS_ATTRIBUTE, Identity
from quart import current_app
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from ..core import plugins_api
from .web import PREFIX

MAX_DEPTH = 3  # nested menu items drawn, at most


@dataclass
class Entry:
    """One link of the sidebar.

    :ivar path: the plugin page's path (what the console fetches into its content area).
    :ivar href: the console's address showing that page (`/console/open/<path>`).
    """

    title: str
    icon: str | None
    path: str
    href: str
    items: list[Entry] = field(default_factory=list)


@dataclass
class Group:
    """A plugin's entries."""

    plugin: str
    entries: list[Entry]


def page_path(path: str) -> str:
    """The path a menu entry opens, following the route's trailing-slash redirect
    (`/vaults` -> `/vaults/`)."""
    adapter = current_app.url_map.bind("localhost")
    try:
        adapter.match(path, method="GET")
    except RequestRedirect as moved:
        return urlsplit(moved.new_url).path
    except HTTPException:
        pass
    return path


def permissions_of(path: str) -> tuple[str, ...]:
    """The permissions the GET route at `path` declares (none: public or unknown)."""
    adapter = current_app.url_map.bind("localhost")
    try:
        endpoint, _ = adapter.match(path, method="GET")
    except HTTPException:
        return ()
    view = current_app.view_functions.get(str(endpoint))
    return tuple(getattr(view, PERMISSIONS_ATTRIBUTE, ()))


def visible(identity: Identity, path: str) -> bool:
    """Whether `identity` may open the page at `path`."""
    return all(identity.can(p) for p in permissions_of(path))


def _entries(identity: Identity, menus: list[dict[str, Any]], depth: int = 0) -> list[Entry]:
    entries = []
    for menu in menus:
        path = page_path(str(menu.get("path") or "/"))
        items = _entries(identity, menu.get("items") or [], depth + 1) if depth < MAX_DEPTH else []
        if not visible(identity, path) and not items:
            continue
        entries.append(
            Entry(
                title=str(menu.get("title") or path),
                icon=menu.get("icon"),
                path=path,
                href=f"{PREFIX}/open{path}",
                items=items,
            )
        )
    return entries


async def sidebar(identity: Identity) -> list[Group]:
    """The groups of the sidebar, in the plugins' dependency order."""
    groups = []
    for plugin in await plugins_api.loaded_plugins():
        entries = _entries(identity, plugin["menus"])
        if entries:
            groups.append(Group(plugin=plugin["name"], entries=entries))
    return groups
