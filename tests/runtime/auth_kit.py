"""Shared pieces of the auth tests: a plugin that reports the caller, JWT and JWKS helpers,
and a JWKS served over HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from courtyard.testing import write_plugin
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from servers import JsonHandler, http_server

SECRET = "s3cret-for-tests-only-0123456789-abcdef"  # 38 bytes: long enough for HS256

WHO_CODE = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.identity import current_identity, require, require_tenant
from quart import websocket


def describe(identity):
    return {
        "subject": identity.subject,
        "kind": identity.kind,
        "tenant": identity.tenant_id,
        "roles": sorted(identity.roles),
        "permissions": sorted(identity.permissions),
        "claims": dict(identity.claims),
    }


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("who", __name__)

    @bp.get("/me")
    async def me():
        return describe(current_identity())

    @bp.post("/notes")
    @require("notes:write")
    async def write_note():
        return {"tenant": require_tenant(), "by": current_identity().subject}

    @bp.get("/secret")
    @require("notes:admin")
    async def secret():
        return {"ok": True}

    @bp.websocket("/ws")
    @require("notes:read")
    async def ws():
        await websocket.accept()
        await websocket.send_json(describe(current_identity()))

    return bp
"""


def add_who(plugin_dir: Any, manifest: str = "") -> None:
    """The plugin `who`: /who/me (anyone), /who/notes (notes:write, a tenant),
    /who/secret (notes:admin), websocket /who/ws (notes:read)."""
    write_plugin(plugin_dir, "who", manifest, WHO_CODE)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def claims(**extra: Any) -> dict[str, Any]:
    """Valid claims for an hour, overridden by `extra` (None removes a claim)."""
    now = int(time.time())
    values = {"sub": "user-1", "iat": now, "exp": now + 3600, **extra}
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"alg": "HS256"}, payload, OctKey.import_key(secret))


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid})


def sign(key: RSAKey | ECKey, payload: dict[str, Any], alg: str, kid: str | None = None) -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, payload, key)


def jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    """The public JWKS of `keys`."""
    return {"keys": [key.as_dict(private=False) for key in keys]}


@dataclass
class JwksServer:
    """A JWKS document served at `url` by a loopback HTTP server; `document` may change."""

    url: str
    document: dict[str, Any]
    requests: list[float] = field(default_factory=list)
    status: int = 200


@contextmanager
def jwks_server(document: dict[str, Any]) -> Iterator[JwksServer]:
    """Serve `document` on 127.0.0.1 (a free port) until the block ends."""
    served = JwksServer(url="", document=document)

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            served.requests.append(time.monotonic())
            self.answer(served.status, served.document)

    with http_server(Handler) as base:
        served.url = f"{base}/.well-known/jwks.json"
        yield served
