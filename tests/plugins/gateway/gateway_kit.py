"""What the gateway tests share: the plugin's folder and a plugin with routes to limit."""

import json
import time
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import OctKey

GATEWAY = Path(__file__).resolve().parents[3] / "plugins" / "gateway" / "src" / "courtyard_gateway"

ROUTES = """\
from courtyard_sdk import Blueprint, hookimpl


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("svc", __name__, url_prefix="/svc")

    @bp.route("/runners/<runner>/status", methods=["GET", "POST"])
    async def status(runner):
        return {"runner": runner}

    @bp.post("/register")
    async def register():
        return {"ok": True}

    @bp.get("/open")
    async def open_():
        return {"ok": True}

    @bp.get("/items")
    async def items():
        return {"ok": True}

    return bp
"""

# Sets the request's identity from an `X-Test-Identity` header (JSON: subject, kind, roles,
# claims), as the runtime's auth does from a credential. Its name sorts before "gateway",
# so its request hook runs first (plugins free of dependencies keep discovery order).
IDENTITY_STUB = """\
import json

from courtyard_sdk import hookimpl
from courtyard_sdk.identity import G_ATTRIBUTE, Identity
from quart import g


@hookimpl
def courtyard_request(ctx, request):
    raw = request.headers.get("X-Test-Identity")
    if raw:
        data = json.loads(raw)
        setattr(g, G_ATTRIBUTE, Identity(
            subject=data["subject"],
            kind=data.get("kind", "token"),
            roles=frozenset(data.get("roles", [])),
            claims=data.get("claims", {}),
        ))
"""


def as_identity(subject: str, kind: str = "token", **fields: object) -> dict[str, str]:
    """Request headers that make the identity stub present `subject` of `kind`."""
    return {"X-Test-Identity": json.dumps({"subject": subject, "kind": kind, **fields})}


# The runtime's `jwt_secret` in tests that use real JWT bearer tokens (see `bearer`).
SECRET = "gateway-tests-hmac-secret-of-32-bytes-or-more"


def bearer(**claims: object) -> dict[str, str]:
    """An `Authorization` header with an HS256 token carrying `claims` (and `exp`)."""
    token = jwt.encode(
        {"alg": "HS256"}, {"exp": int(time.time()) + 600, **claims}, OctKey.import_key(SECRET)
    )
    return {"Authorization": f"Bearer {token}"}
