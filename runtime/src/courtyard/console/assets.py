"""The console's static files (`/console/static/<name>`: its style sheet, its script, and
the vendored htmx) and its icons (the vendored lucide SVGs, drawn inline)."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from courtyard_sdk.openapi import responds
from markupsafe import Markup
from quart import Blueprint, Response, abort, request
from quart_schema import tag

HERE = Path(__file__).parent
VENDOR = HERE.parent / "vendor"
FALLBACK_ICON = "puzzle"
_ICON_NAME = re.compile(r"[a-z0-9-]{1,64}")

FILES = {
    "console.css": (HERE / "static" / "console.css", "text/css; charset=utf-8"),
    "console.js": (HERE / "static" / "console.js", "text/javascript; charset=utf-8"),
    "htmx.min.js": (VENDOR / "htmx" / "htmx.min.js", "text/javascript; charset=utf-8"),
}

blueprint = Blueprint("console_assets", __name__, url_prefix="/console/static")


@functools.cache
def _file(name: str) -> tuple[bytes, str]:
    data = FILES[name][0].read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@blueprint.get("/<name>")
@tag(["console"])
@responds(200, "The console's style sheet or script", media_type="text/plain")
@responds(304, "Not modified (If-None-Match)", media_type=None)
@responds(404, "No such file", media_type=None)
async def static_file(name: str) -> Response:
    """A static file of the console (public: the sign-in page needs them)."""
    if name not in FILES:
        abort(404)
    data, etag = _file(name)
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == etag:
        return Response(b"", 304, headers=headers)
    return Response(data, headers=headers, content_type=FILES[name][1])


@functools.cache
def _svg(name: str) -> str | None:
    path = VENDOR / "lucide" / f"{name}.svg"
    if not _ICON_NAME.fullmatch(name) or not path.is_file():
        return None
    svg = path.read_text("utf-8")
    svg = svg[svg.index("<svg") :]  # without the license comment (in vendor/lucide)
    svg = re.sub(r'\s*class="[^"]*"', "", svg)
    svg = re.sub(r'width="24"\s*height="24"', 'width="18" height="18"', svg)
    svg = svg.replace("<svg", '<svg class="icon" aria-hidden="true" focusable="false"', 1)
    return re.sub(r">\s+<", "><", svg).strip()


def icon(name: str | None) -> Markup:
    """The inline SVG of a menu's icon (`lucide:<name>`, or a bare name); the fallback
    icon for any icon not vendored."""
    bare = (name or "").removeprefix("lucide:")
    return Markup(_svg(bare) or _svg(FALLBACK_ICON) or "")
