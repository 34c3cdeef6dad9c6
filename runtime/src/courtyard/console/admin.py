"""The console's keys page (create with the secret shown once, revoke) and audit page
(the audit log with its filters and pagination)."""

from __future__ import annotations

from urllib.parse import urlencode

from courtyard_sdk.openapi import responds
from quart import Blueprint, Response, request
from quart_schema import tag

from ..core import audit_api, current_runtime, keys_api
from .pages import shell
from .web import PREFIX, attempt, redirect, signed_in

blueprint = Blueprint("console_admin", __name__, url_prefix=PREFIX)

FILTERS = ("identity", "kind", "method", "status", "path", "plugin", "since", "until")


@blueprint.get("/keys")
@tag(["console"])
@responds(200, "The keys page", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def keys_page() -> Response:
    """Every API key (never a secret); create and revoke them."""
    identity = signed_in()
    keys, refused = await attempt(keys_api.list_keys)
    roles = sorted(current_runtime().services.auth.roles.names)
    return await shell(
        identity, "keys.html", title="API keys", keys=keys, refused=refused, roles=roles
    )


@blueprint.get("/audit")
@tag(["console"])
@responds(200, "The audit page", media_type="text/html")
@responds(303, "To the sign-in page", media_type=None)
async def audit_page() -> Response:
    """The audit log, newest first, with the API's filters (`GET /api/audit/`'s query
    parameters) and a link to the next page."""
    identity = signed_in()
    if any(not v.strip() for v in request.args.values()):  # a filter form's empty fields
        kept = urlencode([(k, v) for k, v in request.args.items(multi=True) if v.strip()])
        return redirect(f"{PREFIX}/audit" + (f"?{kept}" if kept else ""), 303)
    page, refused = await attempt(audit_api.list_entries)
    filters = {name: request.args.get(name, "") for name in FILTERS}
    following = None
    if page is not None and page["next_cursor"]:
        query = {k: v for k, v in request.args.items() if k != "cursor" and v}
        following = {**query, "cursor": page["next_cursor"]}
    return await shell(
        identity,
        "audit.html",
        title="Audit log",
        entries=(page or {}).get("entries", []),
        refused=refused,
        filters=filters,
        following=following,
    )
