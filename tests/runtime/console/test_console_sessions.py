"""Console sessions: signing in with a key or a JWT, the cookie's flags, expiry,
revocation, signing out, and the Origin check a cookie never skips."""

from __future__ import annotations

import os
import stat
import time

import pytest
from console_kit import JWT_SECRET, client, hs256, signed_in
from courtyard.services import sessions as sessions_module
from courtyard.services.sessions import COOKIE, SECRET_FILE


async def test_open_mode_needs_no_sign_in(courtyard):
    rt = await courtyard()
    page = await rt.client.get("/")
    assert page.status_code == 200
    assert "open mode" in page.text and "Sign out" not in page.text
    answer = await rt.client.get("/console/sign-in?next=/console/apps")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/apps"


async def test_signing_in_sets_a_signed_strict_httponly_cookie(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["admin"], name="ops")
    browser = client(rt)
    away = await browser.get("/console/plugins")
    assert away.status_code == 303
    assert away.headers["location"] == "/console/sign-in?next=/console/plugins"
    form = await browser.get("/console/sign-in")
    assert form.status_code == 200 and 'name="credential"' in form.text
    answer = await browser.post(
        "/console/sign-in", data={"credential": secret, "next": "/console/plugins"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/plugins"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=v1.")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="):
        assert flag in cookie
    assert "Secure" not in cookie  # plain HTTP here: see the next test
    assert secret not in cookie and secret.split("_")[2] not in cookie
    lifetime = int(cookie.split("Max-Age=")[1].split(";")[0])
    assert 8 * 3600 - 5 <= lifetime <= 8 * 3600
    page = await browser.get("/console/plugins")
    assert page.status_code == 200 and "Sign out" in page.text
    assert (await browser.get("/api/keys/")).status_code == 200  # the cookie authenticates
    folder = rt.dispatcher.settings.data_dir
    assert stat.S_IMODE(os.stat(folder / SECRET_FILE).st_mode) == 0o600


async def test_the_cookie_is_secure_behind_tls(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["viewer"])
    browser = client(rt, "https://localhost")
    answer = await browser.post("/console/sign-in", data={"credential": secret})
    assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


@pytest.mark.parametrize(
    ("credential", "status", "code"),
    [
        ("", 400, "MISSING_CREDENTIAL"),
        ("cyk_0123456789abcdef_nope", 401, "INVALID_API_KEY"),
        ("not a credential", 401, "INVALID_API_KEY"),
        ("revoked", 401, "API_KEY_REVOKED"),
    ],
)
async def test_a_bad_credential_opens_no_session(courtyard, credential, status, code):
    rt = await courtyard()
    await rt.create_key(roles=["admin"])
    if credential == "revoked":
        credential = await rt.create_key(roles=["viewer"])
        info = (await rt.dispatcher.services.auth.list_keys())[-1]
        await rt.dispatcher.services.auth.revoke_key(info.id)
    browser = client(rt)
    answer = await browser.post("/console/sign-in", data={"credential": credential})
    assert answer.status_code == status
    assert code in answer.text and 'role="alert"' in answer.text
    assert "set-cookie" not in answer.headers and not browser.cookies


async def test_signing_in_is_throttled_like_any_credential(courtyard):
    rt = await courtyard(auth_failures_per_minute=2)
    secret = await rt.create_key(roles=["admin"])
    browser = client(rt)
    for _ in range(2):
        await browser.post("/console/sign-in", data={"credential": "cyk_0123456789abcdef_x"})
    answer = await browser.post("/console/sign-in", data={"credential": secret})
    assert answer.status_code == 429 and "RATE_LIMIT_EXCEEDED" in answer.text


async def test_a_tampered_or_foreign_cookie_is_no_credential(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["admin"])
    browser = await signed_in(rt, secret)
    good = browser.cookies[COOKIE]
    version, payload, signature = good.split(".")
    for bad in (
        f"{version}.{payload}.{signature[:-2]}AA",
        f"{version}.{payload[:-4]}AAAA.{signature}",
        "v2." + payload + "." + signature,
        "garbage",
    ):
        browser.cookies.clear()
        browser.cookies.set(COOKIE, bad)
        assert (await browser.get("/api/keys/")).status_code == 401
        assert (await browser.get("/console/keys")).status_code == 303


async def test_revoking_the_key_ends_its_sessions_at_once(courtyard):
    rt = await courtyard()
    await rt.create_key(roles=["admin"], name="keeper")
    secret = await rt.create_key(roles=["admin"], name="leaving")
    browser = await signed_in(rt, secret)
    assert (await browser.get("/api/keys/")).status_code == 200
    key_id = secret.split("_")[1]
    await rt.dispatcher.services.auth.revoke_key(key_id)
    answer = await browser.get("/api/keys/")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    assert (await browser.get("/")).status_code == 303  # to the sign-in page


async def test_a_session_ends_with_its_lifetime_and_its_key(courtyard, monkeypatch):
    rt = await courtyard(session_lifetime=120)
    await rt.create_key(roles=["admin"])
    secret = await rt.create_key(roles=["viewer"])
    browser = await signed_in(rt, secret)
    assert (await browser.get("/api/plugins/")).status_code == 200
    later = time.time() + 121
    monkeypatch.setattr(sessions_module.time, "time", lambda: later)
    assert (await browser.get("/api/plugins/")).status_code == 401

    # A key that ends before the session's lifetime ends its session with it.
    monkeypatch.undo()
    auth = rt.dispatcher.services.auth
    from datetime import timedelta

    _, short = await auth.create_key(
        name="short", roles=("viewer",), expires_in=timedelta(seconds=30)
    )
    answer = await client(rt).post("/console/sign-in", data={"credential": short})
    assert int(answer.headers["set-cookie"].split("Max-Age=")[1].split(";")[0]) <= 30


async def test_signing_out_ends_the_session(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["admin"])
    browser = await signed_in(rt, secret)
    cookie = browser.cookies[COOKIE]
    answer = await browser.post("/console/sign-out")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    assert (
        f'{COOKIE}=""' in answer.headers["set-cookie"]
        or "Max-Age=0" in answer.headers["set-cookie"]
    )
    browser.cookies.clear()
    browser.cookies.set(COOKIE, cookie)  # a copy kept by someone
    assert (await browser.get("/api/keys/")).status_code == 401


async def test_a_cookie_never_skips_the_origin_check(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["admin"])
    browser = await signed_in(rt, secret)
    bare = client(rt)
    bare.cookies.set(COOKIE, browser.cookies[COOKIE])
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": ""}):
        answer = await bare.post("/api/plugins/reload", headers=headers)
        assert answer.status_code == 403, headers
        assert answer.json()["error"]["code"] == "CSRF_FAILED"
    # Without Origin at all: a program's request, which a cookie does not vouch for.
    program = client(rt)
    program.headers.pop("Origin")
    program.cookies.set(COOKIE, browser.cookies[COOKIE])
    answer = await program.post("/api/plugins/reload")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "CSRF_FAILED"
    # The same cookie from the server's own page: accepted.
    assert (await browser.post("/api/plugins/reload")).status_code == 200
    # A credential header still needs no Origin (unchanged).
    keyed = await bare.post(
        "/api/plugins/reload", headers={"Origin": "http://evil.example", "X-API-Key": secret}
    )
    assert keyed.status_code == 200
    # Signing out is a state change too.
    answer = await bare.post("/console/sign-out", headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert (await browser.get("/api/keys/")).status_code == 200


async def test_a_jwt_opens_a_session_with_its_roles_until_it_expires(courtyard, monkeypatch):
    rt = await courtyard(jwt_secret=JWT_SECRET)
    token = hs256("alice", ["viewer"], lifetime=300)
    browser = await signed_in(rt, token)
    stored = next(c for c in browser.cookies.jar if c.name == COOKIE)
    assert stored.expires is not None and stored.expires - time.time() <= 300
    page = await browser.get("/console/plugins")
    assert page.status_code == 200 and "token alice" in page.text
    assert (await browser.get("/api/plugins/")).status_code == 200
    assert (await browser.post("/api/plugins/reload")).status_code == 403  # a viewer
    later = time.time() + 301
    monkeypatch.setattr(sessions_module.time, "time", lambda: later)
    assert (await browser.get("/api/plugins/")).status_code == 401


async def test_a_plugin_credential_opens_no_session(courtyard, plugin_dir, monkeypatch):
    from courtyard.testing import write_plugin

    monkeypatch.setenv("CONSOLE_TEST_SECRET", "a-plugin-credential-0123456789")
    write_plugin(
        plugin_dir,
        "svc",
        '[[credentials]]\nname = "svc"\nenv = "CONSOLE_TEST_SECRET"\nroles = ["viewer"]\n',
    )
    rt = await courtyard()
    answer = await client(rt).post(
        "/console/sign-in", data={"credential": "a-plugin-credential-0123456789"}
    )
    assert answer.status_code == 400 and "SESSION_NOT_ALLOWED" in answer.text


async def test_sign_in_sends_only_to_this_server(courtyard):
    rt = await courtyard()
    secret = await rt.create_key(roles=["admin"])
    for target, expected in [
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/console/audit", "/console/audit"),
    ]:
        answer = await client(rt).post(
            "/console/sign-in", data={"credential": secret, "next": target}
        )
        assert answer.headers["location"] == expected, target


WS_PLUGIN = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.identity import current_identity, require
from quart import websocket


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("live", __name__)

    @bp.websocket("/ws")
    @require("plugins:read")
    async def ws():
        await websocket.send(current_identity().subject)

    return bp
"""


async def test_a_websocket_handshake_with_the_cookie_needs_the_own_origin(courtyard, plugin_dir):
    from courtyard.testing import write_plugin
    from quart.testing import WebsocketResponseError

    write_plugin(plugin_dir, "live", 'base = "/live"\n', WS_PLUGIN)
    rt = await courtyard()
    secret = await rt.create_key(roles=["viewer"])
    browser = await signed_in(rt, secret)
    cookie = f"{COOKIE}={browser.cookies[COOKIE]}"
    app = rt.dispatcher.current.app
    for origin in ("http://evil.example", None):
        headers = {"Cookie": cookie, **({"Origin": origin} if origin else {})}
        with pytest.raises(WebsocketResponseError) as refused:
            async with app.test_client().websocket("/live/ws", headers=headers) as ws:
                await ws.receive()
        assert refused.value.response.status_code == 403
    own = {"Cookie": cookie, "Origin": "http://localhost"}
    async with app.test_client().websocket("/live/ws", headers=own) as ws:
        assert await ws.receive() == secret.split("_")[1]
