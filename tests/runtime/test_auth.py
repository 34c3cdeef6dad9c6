"""Identity for plugins: `require` and `current_identity()` on plugin routes and WebSockets,
plugin `[[credentials]]`, the harness's `client_as`, and the OpenAPI security schemes."""

from __future__ import annotations

import pytest
from auth_kit import add_who, bearer
from courtyard.testing import write_plugin
from courtyard_sdk import ApiError

QUEUE_CREDENTIAL = """
[config.api_key]
type = "string"
default = "a-default-anyone-can-read-in-the-manifest"

[[credentials]]
name = "runqy"
env = "RUNQY_API_KEY"
setting = "api_key"
roles = ["editor"]
permissions = ["queues:admin"]
tenant = "workers"
"""


async def test_plugin_routes_see_the_identity_and_enforce_require(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False)
    writer = await rt.client_as(permissions=["notes:write"], tenant="t1", name="writer")
    reader = await rt.client_as(roles=["viewer"], tenant="t1")
    untenanted = await rt.client_as(roles=["editor"])
    me = (await writer.get("/who/me")).json()
    assert me["kind"] == "key" and me["tenant"] == "t1" and me["permissions"] == ["notes:write"]
    keys = await rt.dispatcher.services.auth.keys.list_keys()
    assert me["subject"] == next(k.id for k in keys if k.name == "writer")
    assert (await writer.post("/who/notes")).json() == {"tenant": "t1", "by": me["subject"]}
    refused = await reader.post("/who/notes")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    # Plugin routes outside /api need no Origin: the credential is what counts.
    anonymous = await rt.client.post("/who/notes")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="courtyard"'
    assert anonymous.json()["error"] == {
        "code": "AUTHENTICATION_REQUIRED",
        "message": "Authentication token required",
    }
    no_tenant = await untenanted.post("/who/notes")
    assert no_tenant.status_code == 403 and no_tenant.json()["error"]["code"] == "TENANT_REQUIRED"
    # A route nobody declared a permission for stays open to anonymous callers.
    assert (await rt.client.get("/who/me")).json()["kind"] == "anonymous"


async def test_websockets_get_the_identity_too(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False)
    secret = await rt.create_key(roles=["viewer"], tenant="t3")
    app = rt.dispatcher.current.app
    client = app.test_client()
    async with client.websocket("/who/ws", headers=bearer(secret)) as ws:
        seen = await ws.receive_json()
    assert seen["kind"] == "key" and seen["tenant"] == "t3"
    from quart.testing import WebsocketResponseError

    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/who/ws") as ws:
            await ws.receive_json()
    assert refused.value.response.status_code == 401
    with pytest.raises(WebsocketResponseError) as bad:
        async with client.websocket("/who/ws", headers=bearer("cyk_0123456789abcdef_x")) as ws:
            await ws.receive_json()
    assert bad.value.response.status_code == 401


async def test_a_plugin_credential_from_the_environment(courtyard, plugin_dir, monkeypatch):
    add_who(plugin_dir)
    write_plugin(plugin_dir, "queues", QUEUE_CREDENTIAL)
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    rt = await courtyard(entry_points=False)
    # The credential turns auth on: anonymous callers are refused.
    assert (await rt.client.post("/api/plugins/reload")).status_code == 401
    for headers in (
        bearer("runqy-secret-from-the-environment"),
        {"X-API-Key": "runqy-secret-from-the-environment"},
    ):
        me = (await rt.client.get("/who/me", headers=headers)).json()
        assert me["kind"] == "credential" and me["subject"] == "queues:runqy"
        assert me["tenant"] == "workers" and me["roles"] == ["editor"]
        assert "queues:admin" in me["permissions"]
        assert (await rt.client.post("/api/plugins/reload", headers=headers)).status_code == 200
    wrong = await rt.client.get("/who/me", headers=bearer("runqy-secret-from-the-environmenT"))
    assert wrong.status_code == 401
    # The manifest's default is no secret: it is readable by anyone who has the plugin.
    default = await rt.client.get(
        "/who/me", headers=bearer("a-default-anyone-can-read-in-the-manifest")
    )
    assert default.status_code == 401


async def test_plugins_sharing_one_secret_grant_the_union(courtyard, plugin_dir, monkeypatch):
    # The seed's RUNQY_API_KEY serves both the queues and the vaults plugins.
    add_who(plugin_dir)
    write_plugin(plugin_dir, "queues", QUEUE_CREDENTIAL)
    vaults = '[[credentials]]\nname = "runqy"\nenv = "RUNQY_API_KEY"\n'
    write_plugin(plugin_dir, "vaults", vaults + 'permissions = ["vaults:*"]\ntenant = "workers"\n')
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    secret = bearer("runqy-secret-from-the-environment")
    rt = await courtyard(entry_points=False)
    me = (await rt.client.get("/who/me", headers=secret)).json()
    assert me["subject"] == "queues:runqy + vaults:runqy" and me["tenant"] == "workers"
    assert {"queues:admin", "vaults:*"} <= set(me["permissions"])
    # A third plugin naming another tenant makes the secret ambiguous: refused.
    other = '[[credentials]]\nname = "x"\nenv = "RUNQY_API_KEY"\ntenant = "elsewhere"\n'
    write_plugin(plugin_dir, "other", other + 'permissions = ["other:*"]\n')
    assert (await rt.client.post("/api/plugins/reload", headers=secret)).status_code == 200
    assert (await rt.client.get("/who/me", headers=secret)).status_code == 401


async def test_a_plugin_credential_from_the_operators_setting(courtyard, plugin_dir, monkeypatch):
    add_who(plugin_dir)
    write_plugin(plugin_dir, "queues", QUEUE_CREDENTIAL)
    monkeypatch.delenv("RUNQY_API_KEY", raising=False)
    rt = await courtyard(
        entry_points=False, plugins={"queues": {"api_key": "set-by-the-operator-0123"}}
    )
    me = (await rt.client.get("/who/me", headers=bearer("set-by-the-operator-0123"))).json()
    assert me["kind"] == "credential"
    assert rt.dispatcher.current.credentials and len(rt.dispatcher.current.credentials) == 1


async def test_an_unset_credential_is_off(courtyard, plugin_dir, monkeypatch):
    write_plugin(plugin_dir, "queues", QUEUE_CREDENTIAL)
    monkeypatch.setenv("RUNQY_API_KEY", "")
    rt = await courtyard(entry_points=False)
    assert not rt.dispatcher.current.credentials
    assert (await rt.client.post("/api/plugins/reload")).status_code == 200  # still open


async def test_credentials_of_a_plugin_that_failed_do_not_count(courtyard, plugin_dir, monkeypatch):
    write_plugin(
        plugin_dir,
        "queues",
        QUEUE_CREDENTIAL,
        "from courtyard_sdk import hookimpl\n"
        "@hookimpl\ndef courtyard_startup(ctx):\n    raise RuntimeError('no broker')\n",
    )
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    rt = await courtyard(entry_points=False)
    assert not rt.dispatcher.current.credentials
    answer = await rt.client.get(
        "/api/health/", headers=bearer("runqy-secret-from-the-environment")
    )
    assert answer.status_code == 200  # open: the credential is ignored


async def test_a_credential_with_an_unknown_role_fails_its_plugin(
    courtyard, plugin_dir, monkeypatch
):
    write_plugin(
        plugin_dir,
        "queues",
        '[[credentials]]\nname = "runqy"\nenv = "RUNQY_API_KEY"\nroles = ["operator"]\n',
    )
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-secret-from-the-environment")
    rt = await courtyard(entry_points=False)
    listed = {p["name"]: p for p in (await rt.client.get("/api/plugins/")).json()}
    assert listed["queues"]["status"] == "failed"
    assert "unknown role 'operator'" in listed["queues"]["error"]
    # With the role configured, it loads.
    rt2 = await courtyard(entry_points=False, roles={"operator": ["queues:*"]})
    assert rt2.dispatcher.current.record("queues") is not None


async def test_client_as_refuses_what_create_key_refuses(courtyard):
    rt = await courtyard(entry_points=False)
    with pytest.raises(ApiError, match="unknown role"):
        await rt.client_as(roles=["wizard"])


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_server_client_as(courtyard_server, plugin_dir):
    add_who(plugin_dir)
    server = courtyard_server(entry_points=False)
    viewer = server.client_as(roles=["viewer"], tenant="t5")
    assert viewer.get("/who/me").json()["tenant"] == "t5"
    assert viewer.get("/api/plugins/").status_code == 200
    assert viewer.post("/api/plugins/reload").status_code == 403
    admin = server.client_as(roles=["admin"])
    assert admin.post("/api/plugins/reload").status_code == 200


async def test_openapi_documents_the_credentials(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False)
    spec = (await rt.client.get("/api/openapi.json")).json()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "API key or JWT"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    reload_op = spec["paths"]["/api/plugins/reload"]["post"]
    assert reload_op["security"] == [{"bearer": []}, {"apiKey": []}]
    assert reload_op["x-permissions"] == ["plugins:reload"]
    assert {"200", "401", "403"} <= reload_op["responses"].keys()
    notes = spec["paths"]["/who/notes"]["post"]
    assert notes["x-permissions"] == ["notes:write"] and notes["tags"] == ["who"]
    for public in ("/api/plugins/loaded", "/api/health/", "/who/me"):
        assert "security" not in spec["paths"][public]["get"], public
    assert spec["paths"]["/api/keys/"]["post"]["x-permissions"] == ["keys:manage"]
