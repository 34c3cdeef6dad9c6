"""The plugin's page at its base (`/vaults/`): every vault and its entries, masked.

Server-rendered, every piece of text escaped, no script; a secret value is never shown
other than masked. It needs `vaults:read`, like the API.
"""

from __future__ import annotations

from html import escape

from courtyard_sdk import Blueprint, Response
from courtyard_sdk.identity import require
from courtyard_sdk.openapi import responds

from .errors import VaultNotFound
from .service import VaultDetail, Vaults, timestamp

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #d0d7de; }
code { font: 13px ui-monospace, monospace; }
.muted { color: #656d76; } .error { color: #b42318; }
"""
# No script, no outside resource: only the inline style above may apply.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _document(body: str, status: int = 200) -> Response:
    html = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Vaults</title><style>{_STYLE}</style></head>"
        f"<body><h1>Vaults</h1>{body}</body></html>\n"
    )
    return Response(html, status=status, headers=_HEADERS, content_type="text/html; charset=utf-8")


def _vault_section(detail: VaultDetail) -> str:
    parts = [f"<section><h2>{escape(detail.name)}</h2>"]
    if detail.description:
        parts.append(f"<p>{escape(detail.description)}</p>")
    if not detail.entries:
        parts.append('<p class="muted">No entries.</p></section>')
        return "".join(parts)
    parts.append("<table><thead><tr><th>Key</th><th>Value</th><th>Secret</th>")
    parts.append("<th>Updated</th></tr></thead><tbody>")
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
    parts.append("</tbody></table></section>")
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
            return _document(f'<p class="error">{reason}</p>', status=503)
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
        return _document("".join(sections))

    return bp
