"""Shared pieces of the auth tests: a plugin that reports the caller, JWT and JWKS helpers,
and a JWKS served over HTTP on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from courtyard.testing import write_plugin
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

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

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(time.monotonic())
            body = json.dumps(served.document).encode()
            self.send_response(served.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
