"""API keys: open mode, the core API's permissions, storage, revocation, the keys API and
`courtyard keys` (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from auth_kit import add_who, bearer
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.services.auth import Auth
from courtyard.services.database import Database
from courtyard.settings import Settings
from courtyard_sdk import ApiError
from sqlalchemy.ext.asyncio import create_async_engine

ORIGIN = "http://localhost"
# (method, path, permission): every guarded core route.
GUARDED = [
    ("GET", "/api/plugins/", "plugins:read"),
    ("POST", "/api/plugins/reload", "plugins:reload"),
    ("POST", "/api/plugins/upload", "plugins:install"),
    ("DELETE", "/api/plugins/", "plugins:remove"),
    ("DELETE", "/api/plugins/ghost", "plugins:remove"),
    ("GET", "/api/apps/", "apps:read"),
    ("POST", "/api/apps/upload", "apps:install"),
    ("DELETE", "/api/apps/_/ghost", "apps:remove"),
    ("DELETE", "/api/apps/_/ghost/1.0.0", "apps:remove"),
    ("DELETE", "/api/apps/_", "apps:remove"),
    ("GET", "/api/keys/", "keys:manage"),
    ("POST", "/api/keys/", "keys:manage"),
    ("DELETE", "/api/keys/0123456789abcdef", "keys:manage"),
]
PUBLIC = [
    "/api/health/",
    "/api/health/ready",
    "/api/health/live",
    "/api/plugins/loaded",
    "/api/openapi.json",
    "/api/docs",
    "/.well-known/courtyard",
]


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


async def rows(database_url: str, query: str) -> list[dict]:
    url = database_url
    if url.startswith("sqlite:"):
        url = url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    elif url.startswith("postgresql:"):
        url = url.replace("postgresql:", "postgresql+asyncpg:", 1)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return [dict(r._mapping) for r in (await connection.execute(sa.text(query))).all()]
    finally:
        await engine.dispose()


async def test_open_mode_lets_everything_through(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False)
    assert (await rt.client.post("/api/plugins/reload")).status_code == 200
    assert (await rt.client.get("/api/plugins/")).status_code == 200
    assert (await rt.client.get("/api/keys/")).json() == []
    me = (await rt.client.get("/who/me")).json()
    assert me["kind"] == "open" and me["permissions"] == ["*"]
    # A route that needs a permission and a tenant: open mode holds every permission.
    answer = await rt.client.post("/who/notes")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "TENANT_REQUIRED"


async def test_a_credential_is_ignored_while_the_runtime_is_open(courtyard):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post("/api/plugins/reload", headers=bearer("cyk_nonsense"))
    assert answer.status_code == 200


async def test_a_key_made_elsewhere_protects_an_open_server_within_a_second(courtyard, tmp_path):
    """Another process (the CLI, another instance) makes the first key: the first request
    after at most a second is refused, never one more served openly."""
    rt = await courtyard(entry_points=False)
    assert (await rt.client.post("/api/plugins/reload")).status_code == 200  # open
    elsewhere = Auth(Settings(data_dir=tmp_path), rt.dispatcher.services.database)
    await elsewhere.keys.create(
        name="cli", roles=("admin",), permissions=(), tenant=None, expires_at=None,
        created_by=None,
    )  # fmt: skip
    time.sleep(1.1)  # past the server's one-second answer
    refused = await rt.client.post("/api/plugins/reload")
    assert refused.status_code == 401, refused.text


@pytest.mark.parametrize(("method", "path", "permission"), GUARDED)
async def test_guarded_core_routes_need_their_permission(
    courtyard, database_url, method, path, permission
):
    rt = await courtyard(entry_points=False, database_url=database_url)
    await rt.create_key(roles=["admin"], name="first admin")
    anonymous = await rt.client.request(method, path)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    unrelated = await rt.client_as(permissions=["queues:write"])
    refused = await unrelated.request(method, path)
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "AUTHORIZATION_FAILED",
        "message": f"Insufficient permissions: needs {permission}",
    }
    allowed = await rt.client_as(permissions=[permission])
    answer = await allowed.request(method, path)
    assert answer.status_code not in (401, 403), answer.text


async def test_roles_on_core_routes(courtyard):
    rt = await courtyard(entry_points=False)
    viewer = await rt.client_as(roles=["viewer"])
    editor = await rt.client_as(roles=["editor"])
    admin = await rt.client_as(roles=["admin"])
    assert (await viewer.get("/api/plugins/")).status_code == 200
    assert (await viewer.get("/api/apps/")).status_code == 200
    assert (await viewer.post("/api/plugins/reload")).status_code == 403
    assert (await viewer.get("/api/keys/")).status_code == 403
    assert (await editor.post("/api/plugins/reload")).status_code == 200
    assert (await editor.post("/api/apps/upload")).json()["error"]["code"] == "NO_FILE_PROVIDED"
    assert (await editor.post("/api/plugins/upload")).status_code == 403
    assert (await editor.delete("/api/plugins/ghost")).status_code == 403
    assert (await editor.get("/api/keys/")).status_code == 403
    assert (await admin.post("/api/plugins/reload")).status_code == 200
    assert (await admin.delete("/api/plugins/ghost")).status_code == 404
    assert (await admin.get("/api/keys/")).status_code == 200


async def test_public_routes_stay_public(courtyard):
    rt = await courtyard(entry_points=False)
    await rt.create_key(roles=["admin"])
    for path in PUBLIC:
        answer = await rt.client.get(path)
        assert answer.status_code == 200, (path, answer.text)


async def test_bearer_and_x_api_key_both_work(courtyard):
    rt = await courtyard(entry_points=False)
    key = await rt.create_key(roles=["admin"])
    assert (await rt.client.post("/api/plugins/reload", headers=bearer(key))).status_code == 200
    answer = await rt.client.post("/api/plugins/reload", headers={"X-API-Key": key})
    assert answer.status_code == 200
    both = await rt.client.post("/api/plugins/reload", headers={**bearer(key), "X-API-Key": key})
    assert both.status_code == 200  # the CLI sends both
    lowercase = await rt.client.post(
        "/api/plugins/reload", headers={"authorization": f"bearer {key}"}
    )
    assert lowercase.status_code == 200


async def test_two_different_credentials_are_refused(courtyard):
    rt = await courtyard(entry_points=False)
    key = await rt.create_key(roles=["admin"])
    other = await rt.create_key(roles=["admin"])
    answer = await rt.client.get("/api/health/", headers={**bearer(key), "X-API-Key": other})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "INVALID_CREDENTIALS"


async def test_bad_keys_are_refused_with_the_seed_message(courtyard):
    rt = await courtyard(entry_points=False)
    key = await rt.create_key(roles=["admin"])
    key_id = key.split("_")[1]
    for wrong in ("nonsense", key[:-1] + ("A" if key[-1] != "A" else "B"), f"cyk_{key_id}_x"):
        answer = await rt.client.get("/api/health/", headers=bearer(wrong))
        assert answer.status_code == 401, wrong
        assert answer.json()["error"] == {
            "code": "INVALID_API_KEY",
            "message": "Invalid or missing API key",
        }
    # Other Authorization schemes are not Courtyard's: no credential was presented.
    basic = await rt.client.post("/api/plugins/reload", headers={"Authorization": "Basic eDp5"})
    assert basic.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"


async def test_a_valid_credential_skips_the_csrf_check(courtyard):
    rt = await courtyard(entry_points=False)
    key = await rt.create_key(roles=["admin"])
    foreign = {"Origin": "http://evil.test"}
    answer = await rt.client.post("/api/plugins/reload", headers={**foreign, **bearer(key)})
    assert answer.status_code == 200
    anonymous = await rt.client.post("/api/health/", headers=foreign)
    assert anonymous.json()["error"]["code"] == "CSRF_FAILED"


async def test_key_is_shown_once_and_stored_as_a_hash(courtyard, database_url):
    rt = await courtyard(entry_points=False, database_url=database_url)
    made = await rt.client.post(
        "/api/keys/", json={"name": "ci", "roles": ["editor"], "tenant": "t1"}
    )
    assert made.status_code == 201
    body = made.json()
    secret = body.pop("secret")
    assert secret.startswith(f"cyk_{body['id']}_") and len(secret) >= 60
    assert body["name"] == "ci" and body["roles"] == ["editor"] and body["tenant"] == "t1"
    assert body["status"] == "active" and body["createdBy"] == "local"
    listed = (await rt.client_as(roles=["admin"])).get("/api/keys/")
    text = (await listed).text
    assert secret not in text and "secret" not in text
    (row,) = await rows(database_url, "SELECT * FROM courtyard_api_keys WHERE name = 'ci'")
    assert secret not in json.dumps(row, default=str)
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    secret_part = secret.split("_", 2)[2]
    assert all(secret_part not in str(value) for value in row.values())


async def test_a_revoked_key_stops_working_at_once(courtyard, database_url):
    rt = await courtyard(entry_points=False, database_url=database_url)
    admin = await rt.client_as(roles=["admin"])
    made = (await admin.post("/api/keys/", json={"name": "doomed", "roles": ["admin"]})).json()
    doomed = bearer(made["secret"])
    assert (await rt.client.post("/api/plugins/reload", headers=doomed)).status_code == 200
    revoked = await admin.delete(f"/api/keys/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    answer = await rt.client.post("/api/plugins/reload", headers=doomed)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "API_KEY_REVOKED"
    again = await admin.delete(f"/api/keys/{made['id']}")  # idempotent, first date kept
    assert again.status_code == 200 and again.json()["revokedAt"] == revoked.json()["revokedAt"]
    missing = await admin.delete("/api/keys/ffffffffffffffff")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "KEY_NOT_FOUND"
    assert (await admin.delete("/api/keys/not-an-id")).status_code == 404


async def test_a_key_revoked_out_of_band_stops_working_at_once(courtyard, database_url, tmp_path):
    rt = await courtyard(entry_points=False, database_url=database_url)
    await rt.create_key(roles=["viewer"])  # keeps auth on once the other key is revoked
    key = await rt.create_key(roles=["admin"])
    assert (await rt.client.post("/api/plugins/reload", headers=bearer(key))).status_code == 200
    env = {"COURTYARD_DATABASE_URL": database_url}
    result = await asyncio.to_thread(
        cli, "keys", "revoke", key, "--data-dir", str(tmp_path), env=env
    )
    assert result.exit_code == 0, result.output
    answer = await rt.client.post("/api/plugins/reload", headers=bearer(key))
    assert answer.json()["error"]["code"] == "API_KEY_REVOKED"


async def test_an_expired_key_is_refused(courtyard, database_url):
    rt = await courtyard(entry_points=False, database_url=database_url)
    keep = await rt.create_key(roles=["viewer"])
    key = await rt.create_key(roles=["admin"])
    database = rt.dispatcher.services.database

    async def expire(secret: str) -> None:
        past = datetime.now(UTC) - timedelta(minutes=1)
        async with database.engine.begin() as connection:
            await connection.execute(
                sa.text("UPDATE courtyard_api_keys SET expires_at = :at WHERE id = :id"),
                {"at": past, "id": secret.split("_")[1]},
            )

    await expire(key)
    answer = await rt.client.get("/api/health/", headers=bearer(key))
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "API_KEY_EXPIRED"
    # Expired keys do not keep auth on: with no active key left the runtime is open again.
    await expire(keep)
    rt.dispatcher.services.auth.keys_changed()
    assert (await rt.client.post("/api/plugins/reload")).status_code == 200


async def test_keys_made_out_of_band_turn_auth_on_within_a_second(courtyard, tmp_path):
    rt = await courtyard(entry_points=False)
    assert (await rt.client.post("/api/plugins/reload")).status_code == 200
    data_dir = str(tmp_path / "data")
    result = await asyncio.to_thread(
        cli, "keys", "create", "--name", "ops", "--role", "admin", "--data-dir", data_dir
    )
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 3
    while (await rt.client.post("/api/plugins/reload")).status_code == 200:
        assert time.monotonic() < deadline, "auth never turned on"
        await asyncio.sleep(0.1)
    answer = await rt.client.post("/api/plugins/reload")
    assert answer.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    secret = result.stdout.strip().splitlines()[-1]
    assert (await rt.client.post("/api/plugins/reload", headers=bearer(secret))).status_code == 200


async def test_last_use_is_recorded(courtyard):
    rt = await courtyard(entry_points=False)
    admin = await rt.client_as(roles=["admin"], name="watched")
    assert (await admin.get("/api/keys/")).status_code == 200
    await rt.dispatcher.services.auth.keys.close()  # the write happens in the background
    (listed,) = [k for k in (await admin.get("/api/keys/")).json() if k["name"] == "watched"]
    assert listed["lastUsedAt"] is not None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "x", "roles": ["wizard"]}, "UNKNOWN_ROLE"),
        ({"name": "x", "permissions": ["Not A Permission"]}, "INVALID_PERMISSION"),
        ({"name": "x"}, "NO_PERMISSIONS"),
        ({"name": " ", "roles": ["viewer"]}, "INVALID_KEY_NAME"),
        ({"name": "x", "roles": ["viewer"], "expiresIn": "soon"}, "INVALID_EXPIRY"),
        ({"name": "x", "roles": ["viewer"], "expiresIn": 0}, "INVALID_EXPIRY"),
        ({"name": "x", "roles": ["viewer"], "tenant": "a b"}, "INVALID_TENANT"),
        ({"name": "x", "roles": ["viewer"], "color": "red"}, "VALIDATION_ERROR"),
        ({"roles": ["viewer"]}, "VALIDATION_ERROR"),
    ],
)
async def test_bad_key_requests_are_refused(courtyard, body, code):
    rt = await courtyard(entry_points=False)
    answer = await rt.client.post("/api/keys/", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == code


async def test_expiry_is_set_from_expires_in(courtyard):
    rt = await courtyard(entry_points=False)
    made = await rt.client.post(
        "/api/keys/", json={"name": "short", "roles": ["viewer"], "expiresIn": "2h"}
    )
    expires = datetime.fromisoformat(made.json()["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=119) < expires - datetime.now(UTC) <= timedelta(hours=2)


async def test_a_key_manager_cannot_grant_more_than_it_holds(courtyard):
    rt = await courtyard(entry_points=False, roles={"keymaster": ["keys:manage", "notes:*"]})
    admin_key = await rt.create_key(roles=["admin"])
    keymaster = await rt.client_as(roles=["keymaster"])
    for body in (
        {"name": "x", "roles": ["admin"]},
        {"name": "x", "roles": ["viewer"]},
        {"name": "x", "permissions": ["plugins:install"]},
    ):
        answer = await keymaster.post("/api/keys/", json=body)
        assert answer.status_code == 403, body
        assert answer.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    made = await keymaster.post("/api/keys/", json={"name": "x", "permissions": ["notes:write"]})
    assert made.status_code == 201
    admin_id = admin_key.split("_")[1]
    refused = await keymaster.delete(f"/api/keys/{admin_id}")
    assert refused.status_code == 403  # revoking the admin's key would lock the admin out
    assert (await keymaster.delete(f"/api/keys/{made.json()['id']}")).status_code == 200


async def test_a_tenant_bound_manager_sees_and_makes_its_tenants_keys_only(courtyard):
    rt = await courtyard(entry_points=False)
    other = await rt.client_as(roles=["viewer"], tenant="t2", name="other tenant")
    manager = await rt.client_as(roles=["admin"], tenant="t1", name="t1 admin")
    names = {k["name"] for k in (await manager.get("/api/keys/")).json()}
    assert names == {"t1 admin"}
    made = await manager.post("/api/keys/", json={"name": "t1 viewer", "roles": ["viewer"]})
    assert made.json()["tenant"] == "t1"  # the manager's tenant by default
    foreign = await manager.post(
        "/api/keys/", json={"name": "x", "roles": ["viewer"], "tenant": "t2"}
    )
    assert foreign.status_code == 403
    other_id = next(
        k.id for k in await rt.dispatcher.services.auth.keys.list_keys() if k.tenant == "t2"
    )
    assert (await manager.delete(f"/api/keys/{other_id}")).status_code == 404
    assert (await other.get("/api/plugins/")).status_code == 200


async def test_auth_answers_503_while_the_keys_cannot_be_read(tmp_path):
    """Neither open (everything granted) nor 401 (a key demanded of an open server)."""
    from courtyard.testing import free_port

    settings = Settings(data_dir=tmp_path)
    database = Database(f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    auth = Auth(settings, database)
    try:
        with pytest.raises(ApiError) as refused:
            await auth.enabled()
        assert (refused.value.status, refused.value.code) == (503, "AUTH_UNAVAILABLE")
        assert refused.value.headers == {"Retry-After": "5"}
        with pytest.raises(ApiError) as refused:
            await auth.verify("cyk_" + "0" * 16 + "_" + "s" * 40)
        assert refused.value.code == "AUTH_UNAVAILABLE"
    finally:
        await database.close()


# -- courtyard keys ---------------------------------------------------------------------


def test_cli_create_list_revoke(tmp_path):
    data = ["--data-dir", str(tmp_path)]
    made = cli(
        "keys",
        "create",
        "--name",
        "deploy",
        "--role",
        "editor",
        "--tenant",
        "t1",
        "--expires-in",
        "30d",
        *data,
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("cyk_") and "\n" not in secret  # alone on stdout
    assert "shown once" in made.stderr
    listed = cli("keys", "list", "--json", *data)
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "deploy" and row["tenant"] == "t1" and row["status"] == "active"
    assert secret not in listed.output
    table = cli("keys", "list", *data)
    assert "deploy" in table.stdout and row["id"] in table.stdout
    revoked = cli("keys", "revoke", row["id"], *data)
    assert revoked.exit_code == 0 and f"revoked key {row['id']}" in revoked.stdout
    (row,) = json.loads(cli("keys", "list", "--json", *data).stdout)
    assert row["status"] == "revoked"


def test_cli_create_json_and_errors(tmp_path):
    data = ["--data-dir", str(tmp_path)]
    made = cli("keys", "create", "--name", "x", "--permission", "queues:write", "--json", *data)
    body = json.loads(made.stdout)
    assert body["permissions"] == ["queues:write"] and body["secret"].startswith("cyk_")
    wrong = cli("keys", "create", "--name", "x", "--role", "wizard", *data)
    assert wrong.exit_code == 1 and "error: UNKNOWN_ROLE" in wrong.stderr
    nothing = cli("keys", "create", "--name", "x", *data)
    assert nothing.exit_code == 1 and "NO_PERMISSIONS" in nothing.stderr
    later = cli("keys", "create", "--name", "x", "--role", "viewer", "--expires-in", "1y", *data)
    assert later.exit_code == 1 and "INVALID_EXPIRY" in later.stderr
    missing = cli("keys", "revoke", "ffffffffffffffff", "--json", *data)
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "KEY_NOT_FOUND"
    assert cli("keys", "list", *data).stdout.count("queues:write") == 1


def test_cli_knows_custom_roles_from_the_config(tmp_path):
    config = tmp_path / "courtyard.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[roles]\nreleaser = ["releases:write"]\n')
    made = cli("keys", "create", "--name", "r", "--role", "releaser", "--config", str(config))
    assert made.exit_code == 0, made.output


def test_cli_reports_an_unreachable_database(tmp_path):
    from courtyard.testing import free_port

    env = {"COURTYARD_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x"}
    result = cli("keys", "list", "--data-dir", str(tmp_path), env=env)
    assert result.exit_code == 1 and "cannot connect to the database" in result.output
