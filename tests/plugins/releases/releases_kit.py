"""Helpers of the releases plugin's tests: JWTs with tenants and roles, callers that
present them, and checks of the API's envelope."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import OctKey
from servers import JsonHandler, http_server

SECRET = "releases-tests-secret-0123456789-abcdefgh"  # HS256 needs 32 bytes or more
ALL = ["releases:read", "releases:write", "releases:approve"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


def token(user: str, tenant: str | None, roles: list[str], permissions: list[str]) -> str:
    """A JWT as Stella Ops' Authority module issues them, valid for an hour."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "user_id": user,
        "roles": roles,
        "permissions": permissions,
        "iat": now,
        "exp": now + 3600,
    }
    if tenant is not None:
        claims["tenant_id"] = tenant
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET))


@dataclass
class User:
    """A caller with a token: `get`, `post`, `put`, `delete` on the runtime's client."""

    client: httpx.AsyncClient
    name: str
    tenant: str | None
    roles: list[str]
    permissions: list[str]

    def headers(self) -> dict[str, str]:
        """The caller's bearer header."""
        bearer = token(self.name, self.tenant, self.roles, self.permissions)
        return {"Authorization": f"Bearer {bearer}"}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(), **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.headers(), **kw)

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.put(path, headers=self.headers(), **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.delete(path, headers=self.headers(), **kw)


def data(answer: httpx.Response, status: int = 200) -> Any:
    """The `data` of a success answer, checking the envelope."""
    assert answer.status_code == status, answer.text
    if status == 204:
        assert answer.content == b""
        return None
    body = answer.json()
    assert body["success"] is True
    assert body["meta"]["requestId"] == answer.headers["X-Request-Id"]
    assert TIMESTAMP.match(body["meta"]["timestamp"])
    return body["data"]


def error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The `error` of an error answer, checking the envelope, status and code."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["success"] is False, body
    assert body["error"]["code"] == code, body
    assert body["meta"]["requestId"] == answer.headers["X-Request-Id"]
    assert TIMESTAMP.match(body["meta"]["timestamp"])
    return body["error"]


async def environment(user: User, name: str, **extra: Any) -> dict[str, Any]:
    """Create an environment."""
    return data(await user.post("/api/v1/environments", json={"name": name, **extra}), 201)


def archive(marker: str = "v1", version: str = "1.0.0") -> bytes:
    """A small .tgz static app `shop` of `version`, whose content depends on `marker`."""
    import gzip
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in (
            ("app.toml", f'name = "shop"\nversion = "{version}"\n'),
            ("index.html", f"<h1>{marker}</h1>"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return gzip.compress(buffer.getvalue(), mtime=0)  # the same bytes every time


async def app_component(user: User, name: str = "shop") -> dict[str, Any]:
    """A courtyard-app component."""
    return data(
        await user.post("/api/v1/components", json={"name": name, "kind": "courtyard-app"}), 201
    )


async def upload(user: User, component_id: str, version: str, marker: str = "") -> dict[str, Any]:
    """Upload one version of an app component; answers the sync result."""
    answer = await user.post(
        f"/api/v1/components/{component_id}/sync-versions",
        data={"version": version},
        files={"file": (f"{version}.tgz", archive(marker or version, version), "application/gzip")},
    )
    return data(answer)


async def image_component(user: User, name: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """An oci-image component with `versions` recorded."""
    component = data(
        await user.post(
            "/api/v1/components",
            json={"name": name, "kind": "oci-image", "image": f"registry.test/{name}"},
        ),
        201,
    )
    data(
        await user.post(
            f"/api/v1/components/{component['id']}/sync-versions", json={"versions": versions}
        )
    )
    return component


async def finalized_release(user: User, name: str, component_id: str, version: str) -> dict:
    """A finalized release of one component version."""
    release = data(
        await user.post(
            "/api/v1/releases",
            json={"name": name, "components": [{"componentId": component_id, "version": version}]},
        ),
        201,
    )
    return data(await user.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"}))


DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


async def record_deployment(runtime: Any, tenant: str, release_id: str, env_id: str) -> None:
    """A successful deployment of a release into an environment, as the deployment
    module records it (the policy gate of the next environment looks for it)."""
    from courtyard_releases.tables import Deployment

    async with runtime.dispatcher.services.database.session(tenant=tenant) as session:
        session.add(
            Deployment(
                tenant_id=tenant,
                promotion_id="p",
                release_id=release_id,
                environment_id=env_id,
                status="succeeded",
                created_at="2026-01-01T00:00:00.000000Z",
            )
        )
        await session.commit()


async def pipeline(user: User) -> dict[str, Any]:
    """dev (no approval) then prod (two approvals, separation of duties), and a finalized,
    pinned release `r1` by `user`."""
    dev = await environment(user, "dev", order=1)
    prod = await environment(user, "prod", order=2, requiredApprovals=2, separationOfDuties=True)
    api = await image_component(user, "api", [{"version": "1.0", "digest": DIGEST_A}])
    release = await finalized_release(user, "r1", api["id"], "1.0")
    return {"dev": dev, "prod": prod, "component": api, "release": release}


async def promote(user: User, release_id: str, env_id: str, **extra: Any) -> httpx.Response:
    """Ask for a promotion."""
    body = {"releaseId": release_id, "environmentId": env_id, **extra}
    return await user.post("/api/v1/promotions", json=body)


@dataclass
class FakeServer:
    """A loopback HTTP server answering as a Courtyard server's health and apps routes;
    uploads are recorded (app `shop`, the version in `next_version`)."""

    url: str
    ready: int = 200
    apps: list[dict[str, Any]] | None = None
    seen_keys: list[str | None] | None = None
    uploads: list[bytes] | None = None
    deleted: list[str] | None = None
    upload_status: int = 200
    next_version: str = "1.0.0"


def fake_courtyard() -> Any:
    """Serve `/api/health/ready` and `/api/apps/` on 127.0.0.1 until the block ends."""

    @contextmanager
    def serve() -> Any:
        served = FakeServer(url="", apps=[], seen_keys=[], uploads=[], deleted=[])

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                served.seen_keys.append(self.headers.get("Authorization"))
                if self.path == "/api/health/ready":
                    status, body = served.ready, {"status": "ok"}
                elif self.path == "/api/apps/":
                    status, body = 200, served.apps
                elif self.path.startswith("/shop@"):
                    status, body = 200, {"page": self.path}
                else:
                    status, body = 404, {"error": {"code": "NOT_FOUND", "message": ""}}
                self.answer(status, body)

            def do_POST(self) -> None:
                served.seen_keys.append(self.headers.get("Authorization"))
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                served.uploads.append(raw)
                app = {"name": "shop", "version": served.next_version}
                self.answer(served.upload_status, {"success": True, "data": {"app": app}})

            def do_DELETE(self) -> None:
                served.deleted.append(self.path)
                self.answer(200, {"success": True})

        with http_server(Handler) as served.url:
            yield served

    return serve()


async def record_sticker(
    runtime: Any, tenant: str, target_id: str, components: list[dict[str, Any]]
) -> None:
    """A sticker on a target, as a successful deployment leaves it."""
    import json as _json

    from courtyard_releases.tables import Sticker

    async with runtime.dispatcher.services.database.session(tenant=tenant) as session:
        session.add(
            Sticker(
                tenant_id=tenant,
                target_id=target_id,
                environment_id="e",
                release_id="r",
                release_name="r1",
                deployment_id="d",
                components=_json.dumps(components),
                deployed_by="alice",
                deployed_at="2026-01-01T00:00:00.000000Z",
            )
        )
        await session.commit()


async def audit_entries(auditor: User, action: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The audit log's event entries once one with `action` is written (they are written
    moments after the request)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        answer = await auditor.get("/api/audit/", params={"kind": "event", "limit": 500})
        assert answer.status_code == 200, answer.text
        entries = answer.json()["entries"]
        if any(e["action"] == action for e in entries) or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


async def finished_job(user: User, promotion_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The deployment job of an approved promotion, once it has finished."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        jobs = data(
            await user.get(
                "/api/v1/deployment-jobs",
                params={"filter": f'{{"promotionId": "{promotion_id}", "kind": "deploy"}}'},
            )
        )
        if jobs and jobs[0]["status"] in ("succeeded", "failed"):
            return data(await user.get(f"/api/v1/deployment-jobs/{jobs[0]['id']}"))
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.05)


async def wait_job(user: User, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """A job once it has finished."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        job = data(await user.get(f"/api/v1/deployment-jobs/{job_id}"))
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
