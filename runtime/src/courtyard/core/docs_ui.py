"""`GET /api/docs` (the Scalar page), `GET /api/docs/scalar.js` (its script, served from
this server) and `GET /api/openapi.json`.

By default the page loads the Scalar build vendored with the runtime (`vendor/scalar/`),
so the docs work without internet access. The `docs_script` setting names another local
file (served the same way) or a URL; a URL needs `docs_script_integrity`, which the page's
script tag carries (`integrity=`, `crossorigin`), so that a changed or compromised copy on
a CDN never runs in a page of this origin. See docs/configuration.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from courtyard_sdk.openapi import responds
from quart import Quart, Response, current_app, request, send_file

from .openapi import openapi_document

VENDORED = Path(__file__).resolve().parents[1] / "vendor" / "scalar"
DOCS_PATH = "/api/docs"
SCRIPT_PATH = "/api/docs/scalar.js"
OPENAPI_PATH = "/api/openapi.json"
_INTEGRITY = re.compile(r"^(?:sha256|sha384|sha512)-[A-Za-z0-9+/]+={0,2}$")
_CONFIG_KEY = "COURTYARD_DOCS_SCRIPT"
# A year: the page names the script with its hash (`?v=`), so a new script is a new URL.
_IMMUTABLE = 365 * 24 * 3600


class DocsScriptError(ValueError):
    """`docs_script` or `docs_script_integrity` cannot be used; the server does not start."""


@dataclass(frozen=True)
class DocsScript:
    """The script the docs page loads.

    :ivar src: what the script tag's `src` says.
    :ivar integrity: its subresource-integrity value.
    :ivar file: the local file served at `SCRIPT_PATH`, or None for a URL.
    :ivar version: the tag the local file's URL carries (`?v=`).
    """

    src: str
    integrity: str
    file: Path | None = None
    version: str | None = None


def vendored() -> dict[str, Any]:
    """`vendor/scalar/scalar.json`: the vendored build's version, licence and integrity."""
    info: dict[str, Any] = json.loads((VENDORED / "scalar.json").read_text(encoding="utf-8"))
    return info


def file_integrity(path: Path) -> str:
    """The SHA-384 subresource-integrity value of a file (cached while it is unchanged)."""
    stat = path.stat()
    return _integrity(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _integrity(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha384(path.read_bytes()).digest()
    return "sha384-" + base64.b64encode(digest).decode()


def resolve(docs_script: str | None, integrity: str | None) -> DocsScript:
    """What the page loads, from the two settings.

    :raises DocsScriptError: a URL without a valid integrity value, a missing file, or a
        file that does not match the integrity value given for it.
    """
    if integrity is not None:
        integrity = " ".join(integrity.split())
        if not integrity or not all(_INTEGRITY.match(part) for part in integrity.split()):
            raise DocsScriptError(
                f"docs_script_integrity {integrity!r} is not a subresource-integrity value "
                "such as sha384-<base64 digest>"
            )
    if docs_script and docs_script.startswith(("http://", "https://")):
        if integrity is None:
            raise DocsScriptError(
                f"docs_script {docs_script} is a URL: set docs_script_integrity to its "
                "sha384-... value too, or leave docs_script unset to serve the bundled copy"
            )
        return DocsScript(src=docs_script, integrity=integrity)
    path = Path(docs_script).absolute() if docs_script else VENDORED / vendored()["file"]
    if not path.is_file():
        raise DocsScriptError(f"docs_script {path} does not exist")
    actual = file_integrity(path)
    if integrity is not None and actual not in integrity.split():
        raise DocsScriptError(f"docs_script {path} does not match docs_script_integrity")
    version = actual.partition("-")[2][:16].replace("+", "-").replace("/", "_")
    return DocsScript(
        src=f"{SCRIPT_PATH}?v={version}", integrity=actual, file=path, version=version
    )


def configure_docs_script(app: Quart, docs_script: str | None) -> None:
    """Add `/api/openapi.json`, `/api/docs` and (for a local script) `/api/docs/scalar.js`.

    `docs_script_integrity` comes from the generation's settings.

    :raises DocsScriptError: see `resolve`.
    """
    generation = app.extensions.get("courtyard.generation")
    integrity = getattr(getattr(generation, "settings", None), "docs_script_integrity", None)
    script = resolve(docs_script, integrity)
    app.config[_CONFIG_KEY] = script
    app.add_url_rule(OPENAPI_PATH, "openapi", openapi_document)
    app.add_url_rule(DOCS_PATH, "docs", docs_page)
    if script.file is not None:
        app.add_url_rule(SCRIPT_PATH, "docs_script", docs_script_file)


def page(script: DocsScript) -> str:
    """The docs page's HTML."""
    configuration = json.dumps({"url": OPENAPI_PATH, "withDefaultFonts": False})
    crossorigin = "" if script.file is not None else ' crossorigin="anonymous"'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Courtyard API</title><style>body{margin:0}</style></head><body>"
        f'<script id="api-reference" data-url="{OPENAPI_PATH}" '
        f'data-configuration="{escape(configuration, quote=True)}"></script>'
        f'<script src="{escape(script.src, quote=True)}" '
        f'integrity="{escape(script.integrity, quote=True)}"{crossorigin}></script>'
        "</body></html>\n"
    )


@responds(200, "The page", media_type="text/html")
async def docs_page() -> Response:
    """The API reference (Scalar) over `/api/openapi.json`."""
    return Response(
        page(current_app.config[_CONFIG_KEY]),
        content_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@responds(
    200,
    "The script; cached for a year when asked for with the page's `?v=`",
    media_type="text/javascript",
    headers={"ETag": "The file's version", "Cache-Control": "How long to keep it"},
)
@responds(304, "Not modified since the ETag sent in `If-None-Match`", media_type=None)
async def docs_script_file() -> Response:
    """The docs page's script, from this server (the bundled Scalar build by default)."""
    script: DocsScript = current_app.config[_CONFIG_KEY]
    assert script.file is not None  # the route exists only for a local file
    response = await send_file(script.file, mimetype="text/javascript", conditional=True)
    if request.args.get("v") == script.version:
        response.cache_control.max_age = _IMMUTABLE
        response.cache_control.immutable = True
    else:  # an old or no version tag: keep it only while it revalidates
        response.cache_control.max_age = None
        response.cache_control.no_cache = True
    response.expires = None
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
