"""The vault endpoints of runqy's API, at their documented paths under `/api/vaults`.

Every route needs `vaults:read` or `vaults:write` (see `courtyard_sdk.identity.require`),
then answers 503 `VAULTS_DISABLED` while no valid master key is set. Errors use the
core's envelope, `{"error": {"code", "message"}}` (codes in `errors.py`).
"""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, request
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import errors
from quart_schema import document_request, document_response

from . import bodies, validation
from .service import Vaults

READ, WRITE = "vaults:read", "vaults:write"


async def _body() -> dict[str, Any]:
    # Not Quart's get_json: it lets UnicodeDecodeError and RecursionError through (500s).
    return validation.parse_body(await request.get_data(as_text=False), request.mimetype)


def blueprint(vaults: Vaults) -> Blueprint:
    """The `/api/vaults` routes, served by `vaults`."""
    bp = Blueprint("vaults_api", __name__, url_prefix="/api")

    @bp.get("/vaults")
    @document_response(bodies.VaultList)
    @errors((503, "VAULTS_DISABLED"))
    @require(READ)
    async def list_vaults() -> Any:
        """List all vaults with entry counts."""
        summaries = await vaults.list_vaults()
        return {"vaults": [s.to_json() for s in summaries], "count": len(summaries)}

    @bp.post("/vaults")
    @document_request(bodies.NewVault)
    @document_response(bodies.Created, 201)
    @errors((400, "VALIDATION_ERROR"), (409, "VAULT_EXISTS"))
    @errors((503, "VAULTS_DISABLED"))
    @require(WRITE)
    async def create_vault() -> Any:
        """Create a new vault."""
        vaults.ensure_enabled()  # 503 before looking at the body
        data = await _body()
        name = validation.vault_name(data.get("name"))
        description = validation.description(data.get("description"))
        await vaults.create_vault(name, description)
        return {
            "message": "vault created successfully",
            "vault": {"name": name, "description": description},
        }, 201

    @bp.get("/vaults/<name>")
    @document_response(bodies.VaultOut)
    @errors((404, "VAULT_NOT_FOUND"))
    @errors((503, "VAULTS_DISABLED"))
    @require(READ)
    async def get_vault(name: str) -> Any:
        """Get vault details with entries (secret values masked)."""
        return (await vaults.vault(name)).to_json()

    @bp.delete("/vaults/<name>")
    @document_response(bodies.Message)
    @errors((404, "VAULT_NOT_FOUND"))
    @errors((503, "VAULTS_DISABLED"))
    @require(WRITE)
    async def delete_vault(name: str) -> Any:
        """Delete a vault and all its entries."""
        await vaults.delete_vault(name)
        return {"message": "vault deleted successfully"}

    @bp.post("/vaults/<name>/entries")
    @document_request(bodies.NewEntry)
    @document_response(bodies.Message)
    @errors((400, "VALIDATION_ERROR"), (404, "VAULT_NOT_FOUND"))
    @errors((503, "VAULTS_DISABLED"))
    @require(WRITE)
    async def set_entry(name: str) -> Any:
        """Set or update a vault entry."""
        vaults.ensure_enabled()
        validation.vault_name(name)
        data = await _body()
        key = validation.entry_key(data.get("key"))
        value = validation.value(data.get("value"))
        is_secret = validation.is_secret(data.get("is_secret"))
        await vaults.set_entry(name, key, value, is_secret)
        return {"message": "entry set successfully"}

    @bp.get("/vaults/<name>/entries")
    @document_response(bodies.EntryList)
    @errors((404, "VAULT_NOT_FOUND"))
    @errors((503, "VAULTS_DISABLED"))
    @require(READ)
    async def list_entries(name: str) -> Any:
        """List all entries in a vault (secret values masked)."""
        entries = await vaults.entries(name)
        return {"entries": [e.to_json() for e in entries], "count": len(entries)}

    @bp.delete("/vaults/<name>/entries/<key>")
    @document_response(bodies.Message)
    @errors((404, "VAULT_NOT_FOUND"), (404, "ENTRY_NOT_FOUND"))
    @errors((503, "VAULTS_DISABLED"))
    @require(WRITE)
    async def delete_entry(name: str, key: str) -> Any:
        """Delete a vault entry."""
        await vaults.delete_entry(name, key)
        return {"message": "entry deleted successfully"}

    return bp
