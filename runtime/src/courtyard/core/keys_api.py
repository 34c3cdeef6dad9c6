"""`/api/keys/*`: list, create and revoke API keys (permission `keys:manage`).

A key's secret is in the answer to its creation and nowhere else, ever. A caller can give
a new key only permissions it holds itself, and a caller bound to a tenant sees, makes
and revokes only keys of that tenant (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from quart import Blueprint
from quart_schema import document_response, tag, validate_request

from ..services.auth import parse_duration
from ..services.store import KEYS
from . import current_runtime

blueprint = Blueprint("keys", __name__, url_prefix="/api/keys")


class NewKey(BaseModel):
    """What a new key holds: at least one role or permission."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A label for people: who or what uses the key")
    roles: list[str] = Field(default_factory=list, description="admin, editor, viewer or custom")
    permissions: list[str] = Field(default_factory=list, description="such as queues:write")
    tenant: str | None = Field(default=None, description="the tenant the key acts for")
    expiresIn: StrictInt | str | None = Field(
        default=None, description="seconds, or 90m, 12h, 30d, 2w; never expires if unset"
    )


class KeyView(BaseModel):
    """A key, without its secret."""

    id: str
    name: str
    roles: list[str]
    permissions: list[str]
    tenant: str | None
    status: str
    createdAt: str
    createdBy: str | None
    expiresAt: str | None
    revokedAt: str | None
    lastUsedAt: str | None


class CreatedKey(KeyView):
    """A new key and its secret, shown this once."""

    secret: str


@blueprint.get("/")
@tag(["keys"])
@document_response(list[KeyView])
@require("keys:manage")
async def list_keys() -> list[dict[str, Any]]:
    """Every API key (active, expired and revoked), oldest first, without secrets.

    A caller bound to a tenant sees that tenant's keys only.
    """
    auth = current_runtime().services.auth
    return [info.to_json() for info in await auth.list_keys(by=current_identity())]


@blueprint.post("/")
@tag(["keys"])
@document_response(CreatedKey, 201)
@errors(*((400, code) for code in ("INVALID_KEY_NAME", "UNKNOWN_ROLE", "INVALID_PERMISSION")))
@errors(*((400, code) for code in ("INVALID_TENANT", "INVALID_EXPIRY", "NO_PERMISSIONS")))
@require("keys:manage")
@validate_request(NewKey)
async def create_key(data: NewKey) -> tuple[dict[str, Any], int]:
    """Create an API key; its `secret` is in this answer only: store it now.

    Present it as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`. Errors: 400
    `INVALID_KEY_NAME`, `UNKNOWN_ROLE`, `INVALID_PERMISSION`, `INVALID_TENANT`,
    `INVALID_EXPIRY`, `NO_PERMISSIONS`; 403 `AUTHORIZATION_FAILED` for permissions (or a
    tenant) the caller does not hold itself.
    """
    runtime = current_runtime()
    info, secret = await runtime.services.auth.create_key(
        name=data.name,
        roles=tuple(data.roles),
        permissions=tuple(data.permissions),
        tenant=data.tenant,
        expires_in=None if data.expiresIn is None else parse_duration(data.expiresIn),
        by=current_identity(),
    )
    await runtime.replication.announce(KEYS)  # every instance knows it is protected now
    return {**info.to_json(), "secret": secret}, 201


@blueprint.delete("/<key_id>")
@tag(["keys"])
@document_response(KeyView)
@errors((404, "KEY_NOT_FOUND"))
@require("keys:manage")
async def revoke_key(key_id: str) -> dict[str, Any]:
    """Revoke a key: it stops working at once, on every instance. The key stays listed
    as `revoked`; revoking it again changes nothing. 404 `KEY_NOT_FOUND`."""
    runtime = current_runtime()
    revoked = await runtime.services.auth.revoke_key(key_id, by=current_identity())
    await runtime.replication.announce(KEYS)
    return revoked.to_json()
