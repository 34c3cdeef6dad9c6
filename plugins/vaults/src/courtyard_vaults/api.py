"""The vault endpoints of seed 001, at their documented paths under `/api/vaults`.

Every route needs `vaults:read` or `vaults:write` (see `courtyard_sdk.identity.require`),
then answers 503 `VAULTS_DISABLED` while no valid master key is set. Errors use the
core's envelope, `{"error": {"code", "message"}}` (codes in `errors.py`).
"""

from __future__ import annotations

from typing import Any

from courtyard_sdk import Blueprint, request
from courtyard_sdk.identity import require

from . import validation
from .service import Vaults

READ, WRITE = "vaults:read", "vaults:write"


async def _body() -> dict[str, Any]:
    # force: clients need not send Content-Type; silent: bad JSON is our 400, not Quart's.
    return validation.body(await request.get_json(force=True, silent=True))


def blueprint(vaults: Vaults) -> Blueprint:
    """The `/api/vaults` routes, served by `vaults`."""
    bp = Blueprint("vaults_api", __name__, url_prefix="/api")

    @bp.get("/vaults")
    @require(READ)
    async def list_vaults() -> Any:
        """List all vaults with entry counts."""
        summaries = await vaults.list_vaults()
        return {"vaults": [s.to_json() for s in summaries], "count": len(summaries)}

    @bp.post("/vaults")
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
    @require(READ)
    async def get_vault(name: str) -> Any:
        """Get vault details with entries (secret values masked)."""
        return (await vaults.vault(name)).to_json()

    @bp.delete("/vaults/<name>")
    @require(WRITE)
    async def delete_vault(name: str) -> Any:
        """Delete a vault and all its entries."""
        await vaults.delete_vault(name)
        return {"message": "vault deleted successfully"}

    @bp.post("/vaults/<name>/entries")
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
    @require(READ)
    async def list_entries(name: str) -> Any:
        """List all entries in a vault (secret values masked)."""
        entries = await vaults.entries(name)
        return {"entries": [e.to_json() for e in entries], "count": len(entries)}

    @bp.delete("/vaults/<name>/entries/<key>")
    @require(WRITE)
    async def delete_entry(name: str, key: str) -> Any:
        """Delete a vault entry."""
        await vaults.delete_entry(name, key)
        return {"message": "entry deleted successfully"}

    return bp
