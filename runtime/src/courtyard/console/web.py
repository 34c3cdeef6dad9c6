"""Rendering the console's pages: the Jinja2 environment, the answers' security headers,
who is signed in, and the shell's context (the sidebar, the navigation)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from courtyard_sdk import ApiError
from courtyard_sdk.identity import Identity, current_identity
from jinja2 import Environment, PackageLoader, select_autoescape
from quart import Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from ..settings import Settings
from .assets import icon

HOME_ATTRIBUTE = "courtyard.console.home"
PREFIX = "/console"
SESSION_ATTRIBUTE = "courtyard_console_session"  # g: the session a cookie opened

# No inline script or style: htmx runs with eval off, and plugin fragments with it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Cookie, HX-Request",
}

templates = Environment(
    loader=PackageLoader("courtyard.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals["icon"] = icon
templates.globals["prefix"] = PREFIX


def home_of(settings: Settings) -> str:
    """Where the console's overview lives: `/`, or `/console/` when `/` is an app's."""
    return f"{PREFIX}/" if settings.root_app else "/"


def home() -> str:
    """The overview's path in the serving generation."""
    return str(current_app.extensions.get(HOME_ATTRIBUTE, "/"))


def redirect(location: str, status: int = 303) -> Response:
    """A redirect to a path of this server (303 after a form, 307 and 308 keep the
    method)."""
    return Response("", status=status, headers={"Location": location, "Cache-Control": "no-store"})


def render(template: str, status: int = 200, **context: Any) -> Response:
    """A console page (or fragment) with the console's security headers."""
    html = templates.get_template(template).render(
        home=home(), identity=current_identity(), session=g.get(SESSION_ATTRIBUTE), **context
    )
    return Response(html, status=status, headers=HEADERS, content_type="text/html; charset=utf-8")


def safe_next(target: str | None) -> str:
    """A path on this server to go to after signing in (anything else: the overview)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return home()


def signed_in() -> Identity:
    """The identity a console page is shown to.

    :raises HTTPException: a redirect to the sign-in page for a visitor without a
        credential (htmx is told with `HX-Redirect`).
    :raises ApiError: 503 `AUTH_UNAVAILABLE` while the keys cannot be read.
    """
    identity = current_identity()
    if identity.kind == "unknown":
        raise ApiError(503, "AUTH_UNAVAILABLE", "the API keys cannot be read now; try again")
    if identity.kind != "anonymous":
        return identity
    target = f"{PREFIX}/sign-in?next={request.full_path.rstrip('?')}"
    answer = redirect(target)
    if request.headers.get("HX-Request") == "true":
        answer = Response("", 204, headers={"HX-Redirect": target})
    raise HTTPException(response=answer)


async def attempt(call: Callable[[], Awaitable[Any]]) -> tuple[Any, ApiError | None]:
    """Call a core API view with the visitor's identity: its result, or the refusal (a
    missing permission, a bad filter) to show in its place."""
    try:
        return await call(), None
    except ApiError as exc:
        return None, exc
