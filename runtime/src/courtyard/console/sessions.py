"""Signing in and out of the console, and the session cookie on later requests.

`POST /console/sign-in` takes an API key or a JWT (form field `credential`), verifies it
as the request path would (throttled the same way), and answers with a session cookie:
`HttpOnly`, `SameSite=Strict`, `Secure` when the request came over TLS, signed, expiring
(services/sessions.py). From then on a request without a credential header that brings
the cookie is the key's (or token's) holder; it is still checked for its Origin.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from courtyard_sdk import ApiError
from courtyard_sdk.identity import Identity, auth_unavailable, current_identity
from courtyard_sdk.openapi import responds
from quart import Blueprint, Response, g, has_request_context, request, websocket
from quart_schema import tag

from ..core import current_generation, current_runtime
from ..outages import classify
from ..services.sessions import COOKIE
from .web import PREFIX, SESSION_ATTRIBUTE, redirect, render, safe_next

if TYPE_CHECKING:
    from ..services.auth import Auth

blueprint = Blueprint("console_session", __name__, url_prefix=PREFIX)


async def session_identity(auth: Auth) -> Identity | None:
    """The identity the current request's (or WebSocket's) session cookie stands for,
    or None (no cookie, or one no longer good: then it counts as no credential).

    :raises ApiError: 503 `AUTH_UNAVAILABLE` when the session's key cannot be read.
    """
    cookies = request.cookies if has_request_context() else websocket.cookies
    cookie = cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        found = await auth.sessions.identify(cookie)
    except Exception as exc:
        if classify(exc) is None:
            raise
        raise auth_unavailable() from exc
    if found is None:
        return None
    identity, session = found
    setattr(g, SESSION_ATTRIBUTE, session)
    return identity


@blueprint.get("/sign-in")
@tag(["console"])
@responds(200, "The sign-in page", media_type="text/html")
@responds(303, "Already signed in (or open): to the console", media_type=None)
async def sign_in_page() -> Response:
    """The sign-in form (none is needed while the runtime is open)."""
    if current_identity().kind not in ("anonymous", "unknown"):
        return redirect(safe_next(request.args.get("next")), 303)
    return render("sign_in.html", title="Sign in", next=request.args.get("next", ""))


@blueprint.post("/sign-in")
@tag(["console"])
@responds(303, "Signed in: the session cookie is set", media_type=None)
@responds(400, "No credential, or one that cannot open a session", media_type="text/html")
@responds(401, "A bad, revoked or expired credential", media_type="text/html")
@responds(429, "Too many failed attempts from this address", media_type="text/html")
async def sign_in() -> Response:
    """Exchange an API key or a JWT (form field `credential`) for a session cookie."""
    form = await request.form
    secret = (form.get("credential") or "").strip()
    target = safe_next(form.get("next"))
    try:
        identity, not_after = await _verify(secret)
    except ApiError as exc:
        return render("sign_in.html", status=exc.status, title="Sign in", next=target, error=exc)
    if identity.kind == "open":  # nothing to sign in to
        return redirect(target, 303)
    value, session = current_runtime().services.auth.sessions.issue(identity, not_after)
    answer = redirect(target, 303)
    answer.set_cookie(
        COOKIE,
        value,
        max_age=max(1, int(session.expires - time.time())),
        path="/",
        secure=request.scheme == "https",
        httponly=True,
        samesite="Strict",
    )
    return answer


async def _verify(secret: str) -> tuple[Identity, float | None]:
    """The identity of a credential offered to sign in, and when it ends.

    :raises ApiError: 400 `MISSING_CREDENTIAL` or `SESSION_NOT_ALLOWED`; the 401 and 429
        answers of the request path.
    """
    if not secret:
        raise ApiError(400, "MISSING_CREDENTIAL", "paste an API key or a JWT")
    auth = current_runtime().services.auth
    identity = await auth.identify({"X-API-Key": secret}, current_generation().credentials)
    if identity.kind == "key":
        info = await auth.keys.get(identity.subject)
        expires = info.expires_at if info is not None else None
        return identity, expires.timestamp() if expires is not None else None
    if identity.kind == "token":
        exp = identity.claims.get("exp")
        return identity, float(exp) if isinstance(exp, int | float) else None
    if identity.kind == "open":
        return identity, None
    raise ApiError(
        400,
        "SESSION_NOT_ALLOWED",
        "a plugin credential cannot open a console session: use an API key or a JWT",
    )


@blueprint.post("/sign-out")
@tag(["console"])
@responds(303, "Signed out: to the sign-in page", media_type=None)
async def sign_out() -> Response:
    """End the session: the cookie is dropped and this server refuses it from now on."""
    session = g.get(SESSION_ATTRIBUTE)
    if session is not None:
        current_runtime().services.auth.sessions.end(session)
    answer = redirect(f"{PREFIX}/sign-in", 303)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return answer
