"""The operator console: a web shell served by the runtime (docs/console.md).

Server-rendered with Jinja2 and htmx (vendored: no Node build, no CDN). It lives at `/`,
or at `/console/` when `root_app` gives `/` to an app; its other pages, its sign-in and
its static files always live under `/console/`. Every page shows what the signed-in
identity may see, by calling the core API's own views (so the same permission checks
apply); every action is a request to the core API from the browser, with the session
cookie and the Origin check.

Modules: `web` (templates, answers, who is signed in), `sessions` (sign-in, sign-out, the
cookie), `menus` (the sidebar), `pages` (overview, plugins, apps, plugin pages), `admin`
(keys, audit), `assets` (static files and icons).
"""

from __future__ import annotations

from quart import Quart

from ..settings import Settings
from . import admin, assets, pages, sessions
from .sessions import session_identity
from .web import HOME_ATTRIBUTE, home_of

__all__ = ["mount", "session_identity"]


def mount(app: Quart, settings: Settings) -> None:
    """Register the console's routes on a generation's app."""
    app.extensions[HOME_ATTRIBUTE] = home_of(settings)
    for blueprint in (pages.blueprint, admin.blueprint, sessions.blueprint, assets.blueprint):
        app.register_blueprint(blueprint)
