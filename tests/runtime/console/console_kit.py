"""Shared pieces of the console tests: signing in over an in-process client, a plugin
with menus behind different permissions, archives to upload, a JWT."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import httpx
from courtyard.services.sessions import COOKIE
from courtyard.testing import ORIGIN, Runtime, write_plugin
from joserfc import jwt
from joserfc.jwk import OctKey

JWT_SECRET = "s3cret-for-console-tests-0123456789-abcdef"

NOTES = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.identity import require
from courtyard_sdk.pages import escape, page


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.get("/")
    @require("notes:read")
    async def index():
        return page("Notes", "<p>" + escape("<all the notes>") + "</p>")

    @bp.get("/admin")
    @require("notes:admin")
    async def admin():
        return page("Notes admin", "<p>settings</p>")

    @bp.get("/help")
    async def help():
        return page("Help", "<p>public help</p>")

    return bp
"""

NOTES_MANIFEST = """base = "/notes"
[[menus]]
title = "Notes"
icon = "lucide:list-checks"
path = "/notes"
[[menus]]
title = "Notes admin"
icon = "lucide:not-vendored"
path = "/notes/admin"
[[menus]]
title = "Help"
path = "/notes/help"
"""


def add_notes(plugin_dir: Any) -> None:
    """The plugin `notes`: /notes/ (notes:read), /notes/admin (notes:admin), /notes/help
    (public), each a menu entry."""
    write_plugin(plugin_dir, "notes", NOTES_MANIFEST, NOTES)


def client(rt: Runtime, base_url: str = ORIGIN, **headers: str) -> httpx.AsyncClient:
    """A browser-like client on the runtime (Origin of `base_url`, a cookie jar)."""
    made = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher),
        base_url=base_url,
        headers={"Origin": base_url, **headers},
    )
    rt.clients.append(made)
    return made


async def signed_in(rt: Runtime, secret: str, base_url: str = ORIGIN) -> httpx.AsyncClient:
    """A client holding a session cookie for `secret`."""
    browser = client(rt, base_url)
    answer = await browser.post("/console/sign-in", data={"credential": secret})
    assert answer.status_code == 303, answer.text
    assert browser.cookies.get(COOKIE)
    return browser


def hs256(subject: str, roles: list[str], lifetime: int, **claims: Any) -> str:
    """A signed JWT for `subject` with `roles`, ending in `lifetime` seconds."""
    import time

    now = int(time.time())
    payload = {"sub": subject, "roles": roles, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode({"alg": "HS256"}, payload, OctKey.import_key(JWT_SECRET))


def plugin_archive(name: str, title: str, icon: str = "lucide:rocket") -> bytes:
    """A .tgz plugin with one page and one menu entry."""
    manifest = (
        f'name = "{name}"\nversion = "1.0.0"\nmodule = "plugin"\nbase = "/{name}"\n'
        f'[[menus]]\ntitle = "{title}"\nicon = "{icon}"\npath = "/{name}"\n'
    )
    code = (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "from courtyard_sdk.pages import page\n\n\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        f'    bp = Blueprint("{name}", __name__)\n\n'
        '    @bp.get("/")\n'
        "    async def index():\n"
        f'        return page("{title}", "<p>uploaded page</p>")\n\n'
        "    return bp\n"
    )
    return _tgz({"plugin.toml": manifest, "plugin.py": code})


def app_archive(name: str, version: str, size: int = 0) -> bytes:
    """A .tgz static app: `index.html` saying its name and version, and `size` bytes of
    padding (to make an upload last)."""
    files = {
        "package.json": json.dumps({"name": name, "version": version}),
        "index.html": f"<!doctype html><title>{name}</title><h1>{name} {version}</h1>",
    }
    if size:
        files["padding.bin"] = __import__("os").urandom(size).hex()[:size]
    return _tgz(files)


def _tgz(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()
