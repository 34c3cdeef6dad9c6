"""The plugin's page at its base (`/vaults/`): every vault and its entries, masked.

Server-rendered with `courtyard_sdk.pages` (native in the operator console), every piece
of text escaped, no script; a secret value is never shown other than masked. It needs
`vaults:read`, like the API.
"""

from __future__ import annotations

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds
from courtyard_sdk.pages import escape, page

from .errors import VaultNotFound
from .service import VaultDetail, Vaults, timestamp


def _vault_section(detail: VaultDetail) -> str:
    parts = [f"<section><h2>{escape(detail.name)}</h2>"]
    if detail.description:
        parts.append(f"<p>{escape(detail.description)}</p>")
    if not detail.entries:
        parts.append('<p class="muted">No entries.</p></section>')
        return "".join(parts)
    parts.append('<div class="scroll"><table><thead><tr><th scope="col">Key</th>')
    parts.append('<th scope="col">Value</th><th scope="col">Secret</th>')
    parts.append('<th scope="col">Updated</th></tr></thead><tbody>')
    for entry in detail.entries:
        value = (
            f"<code>{escape(entry.value)}</code>"
            if entry.value is not None
            else f'<span class="error">{escape(entry.error or "unreadable")}</span>'
        )
        parts.append(
            f"<tr><td><code>{escape(entry.key)}</code></td>"
            f"<td>{value}</td>"
            f"<td>{'yes' if entry.is_secret else 'no'}</td>"
            f"<td>{escape(timestamp(entry.updated_at))}</td></tr>"
        )
    parts.append("</tbody></table></div></section>")
    return "".join(parts)


def blueprint(vaults: Vaults) -> Blueprint:
    """The page, mounted at the plugin's base."""
    bp = Blueprint("vaults_page", __name__)

    @bp.get("/")
    @responds(200, "The page", media_type="text/html")
    @responds(503, "Vaults are disabled: the page says why", media_type="text/html")
    @require("vaults:read")
    async def index() -> Response:
        """Every vault with its entries, secret values masked."""
        if not vaults.enabled:
            reason = escape(vaults.disabled_reason or "disabled")
            return page("Vaults", f'<p class="error">{reason}</p>', status=503)
        sections = []
        for summary in await vaults.list_vaults():
            try:
                sections.append(_vault_section(await vaults.vault(summary.name)))
            except VaultNotFound:
                continue  # deleted since the list was read
        if not sections:
            sections.append(
                '<p class="muted">No vaults yet. Create one with <code>POST /api/vaults</code>.</p>'
            )
        return page("Vaults", "".join(sections))

    return bp
