"""Who owns each route of a generation's app, and which plugins' routes collide.

Plugin blueprints are mounted under private names (`p<index>_<plugin>__<blueprint>`), so
that two plugins' blueprints of one name stay apart; the app keeps the name -> plugin map
in its extensions, where `owner_of` reads it (the OpenAPI document, the audit log).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from courtyard_sdk.names import slug
from courtyard_sdk.paths import is_reserved
from courtyard_sdk.plugins import OWNERS
from quart import Blueprint, Quart
from werkzeug.routing import Rule

CORE = "courtyard (core)"
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?[a-zA-Z_][a-zA-Z0-9_]*>"
)

PluginRoutes = tuple[str, str | None, Sequence[Blueprint]]
"""A plugin's name, its base path (None: `/`) and its blueprints."""


def mount_plugins(app: Quart, plugins: Iterable[PluginRoutes]) -> None:
    """Register each plugin's blueprints on `app` (at the blueprint's own `url_prefix`,
    else at the plugin's base) and record who owns them."""
    owners: dict[str, str] = app.extensions.setdefault(OWNERS, {})
    for index, (plugin, base, blueprints) in enumerate(plugins):
        for bp in blueprints:
            name = f"p{index}_{slug(plugin)}__{bp.name}"
            prefix = bp.url_prefix if bp.url_prefix is not None else (base or "/").rstrip("/")
            app.register_blueprint(bp, name=name, url_prefix=prefix)
            owners[name] = plugin


def owner_of(app: Quart, rule: Rule) -> str:
    """The plugin owning `rule`, or CORE."""
    owners: dict[str, str] = app.extensions.get(OWNERS, {})
    return owners.get(rule.endpoint.split(".", 1)[0], CORE)


def collisions(plugins: Iterable[PluginRoutes]) -> list[tuple[str, str]]:
    """Plugins whose routes claim a reserved path or an earlier plugin's route.

    :return: (plugin, reason) pairs, the later claimant of each clash named first.
    """
    app = Quart("courtyard-routes", static_folder=None)
    mount_plugins(app, plugins)
    claimed: dict[tuple[str, str], str] = {}
    found: list[tuple[str, str]] = []
    for rule in app.url_map.iter_rules():
        owner = owner_of(app, rule)
        if owner == CORE:
            continue
        if is_reserved(rule.rule):
            found.append((owner, f"route {rule.rule} is reserved by the runtime"))
            continue
        # /x/<id> and /x/<name> match the same URLs: compare rules with variables unnamed.
        shape = _VARIABLE.sub(lambda m: f"<{m['converter'] or 'default'}>", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            first = claimed.setdefault((shape, method), owner)
            if first != owner:
                found.append((owner, f"route {method} {rule.rule} is already claimed by {first}"))
    return found
