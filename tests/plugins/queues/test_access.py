"""Who may call what: runqy's `RUNQY_API_KEY`, the runtime's keys and roles, and the
public task status; the worker registration's vaults; the pages and the OpenAPI document."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from courtyard.testing import ORIGIN
from openapi_spec_validator import validate
from queues_kit import FAST, enqueue, new_worker, write_config

KEY = "runqy-test-key-0123456789"  # the runtime refuses keys under 16 characters


@pytest.fixture
def sqlite_queues(courtyard, tmp_path):
    """A runtime with the queues plugin on SQLite (the access rules do not depend on the
    backend)."""
    config = write_config(tmp_path / "config")

    async def start(only=("queues",), **settings):
        plugin = {"config_files": [str(config)], **FAST, **settings}
        return await courtyard(only_plugins=list(only), plugins={"queues": plugin})

    return start


def _client(rt, key: str | None) -> httpx.AsyncClient:
    headers = {"Origin": ORIGIN}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher), base_url=ORIGIN, headers=headers
    )


async def test_the_runqy_api_key_guards_every_endpoint(sqlite_queues, monkeypatch):
    monkeypatch.setenv("RUNQY_API_KEY", KEY)
    rt = await sqlite_queues()
    async with (
        _client(rt, None) as anonymous,
        _client(rt, KEY) as keyed,
        _client(rt, "wrong") as wrong,
    ):
        for method, path, body in (
            ("POST", "/queue/add", {"queue": "simple", "data": {}}),
            ("POST", "/queue/add-batch", {"queue": "simple", "jobs": [{}]}),
            ("POST", "/worker/register", {"worker_id": "w", "queue": "simple"}),
            ("POST", "/worker/dequeue", {"worker_id": "w", "queue": "simple"}),
            ("GET", "/api/cli/queues", None),
            ("GET", "/api/cli/workers", None),
            ("GET", "/api/cli/configs", None),
            ("POST", "/api/cli/configs/reload", None),
            ("GET", "/queues/", None),
        ):
            refused = await anonymous.request(method, path, json=body)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
            assert (await wrong.request(method, path, json=body)).status_code == 401, path
            allowed = await keyed.request(method, path, json=body)
            assert allowed.status_code in (200, 204), (path, allowed.text)
        task_id = await enqueue(keyed, "simple")
        # As in runqy, a task's status is public: its random id is the capability.
        status = await anonymous.get(f"/queue/{task_id}")
        assert status.status_code == 200 and status.json()["info"]["id"] == task_id


async def test_roles_and_a_private_task_status(sqlite_queues):
    rt = await sqlite_queues(public_task_status=False)
    viewer = await rt.client_as(roles=["viewer"])
    editor = await rt.client_as(roles=["editor"])
    worker = await rt.client_as(permissions=["queues:work"])
    task_id = await enqueue(editor, "simple")
    assert (await rt.client.get(f"/queue/{task_id}")).status_code == 401
    assert (await viewer.get(f"/queue/{task_id}")).status_code == 200
    assert (await viewer.get("/api/cli/queues")).status_code == 200
    denied = await viewer.post("/queue/add", json={"queue": "simple", "data": {}})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    # Configurations say what code workers run: not for editors.
    assert (await editor.post("/api/cli/configs/reload")).status_code == 403
    assert (await editor.post("/api/cli/queues/simple/pause")).status_code == 200
    # The worker protocol needs queues:work, which no built-in role but admin holds.
    body = {"worker_id": "w1", "queue": "simple"}
    assert (await editor.post("/worker/dequeue", json=body)).status_code == 403
    assert (await worker.post("/worker/register", json=body)).status_code == 200
    assert (await worker.get("/api/cli/queues")).status_code == 403


async def test_registration_hands_over_the_deployments_vaults(courtyard, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.delenv("COURTYARD_VAULT_MASTER_KEY", raising=False)
    config = write_config(
        tmp_path / "config",
        "queues:\n  secretive:\n    priority: 2\n    deployment:\n      git_url: g\n"
        "      startup_cmd: c\n      vaults: [api-keys, more]\n",
    )
    rt = await courtyard(
        only_plugins=["queues", "vaults"],
        plugins={"queues": {"config_files": [str(config)], **FAST}},
    )
    for name, key, value in (("api-keys", "OPENAI_API_KEY", "sk-1"), ("more", "HF_TOKEN", "hf-2")):
        assert (await rt.client.post("/api/vaults", json={"name": name})).status_code in (200, 201)
        entry = await rt.client.post(
            f"/api/vaults/{name}/entries", json={"key": key, "value": value}
        )
        assert entry.status_code in (200, 201), entry.text
    registered = await rt.client.post(
        "/worker/register", json={"worker_id": "w", "queue": "secretive"}
    )
    assert registered.status_code == 200, registered.text
    body = registered.json()
    assert list(body) == ["redis", "queue", "deployment", "vaults", "courtyard"]
    assert body["vaults"] == {"OPENAI_API_KEY": "sk-1", "HF_TOKEN": "hf-2"}
    assert body["deployment"]["vaults"] == ["api-keys", "more"]
    assert body["queue"] == {"name": "secretive", "priority": 2, "mode": "long_running"}
    await rt.client.delete("/api/vaults/more")
    failed = await rt.client.post("/worker/register", json={"worker_id": "w", "queue": "secretive"})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "VAULTS_UNAVAILABLE"
    assert "more" in failed.json()["error"]["message"]


async def test_registration_errors(sqlite_queues, tmp_path):
    config = write_config(
        tmp_path / "vaulted",
        "queues:\n  v:\n    priority: 1\n    deployment: {git_url: g, startup_cmd: c, "
        "vaults: [x]}\n",
    )
    rt = await sqlite_queues(config_files=[str(config)])
    missing = await rt.client.post("/worker/register", json={"worker_id": "w", "queue": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "QUEUE_NOT_FOUND"
    bad = await rt.client.post("/worker/register", json={"queue": "v"})
    assert bad.status_code == 400
    no_vaults = await rt.client.post("/worker/register", json={"worker_id": "w", "queue": "v"})
    assert no_vaults.status_code == 500
    assert "vaults plugin is not loaded" in no_vaults.json()["error"]["message"]
    assert (
        await rt.client.post("/worker/dequeue", json={"worker_id": "w", "queue": "v", "wait": 31})
    ).status_code == 400


async def test_pages_and_the_openapi_document(sqlite_queues):
    rt = await sqlite_queues()
    worker = new_worker(rt.client, "simple")
    worker.worker_id = "<script>alert(1)</script>"
    await worker.register()
    await enqueue(rt.client, "simple")
    await rt.client.post("/api/cli/queues/simple/pause")
    page = await rt.client.get("/queues/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "simple.default" in page.text and "inference.high" in page.text
    assert "paused" in page.text
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    loaded = (await rt.client.get("/api/plugins/loaded")).json()
    menus = next(p["menus"] for p in loaded if p["name"] == "queues")
    assert menus[0]["path"] == "/queues" and menus[0]["title"] == "Queues"

    swagger = await rt.client.get("/swagger/index.html")
    assert swagger.status_code == 200 and "swagger-ui" in swagger.text
    assert "url: '/api/openapi.json'" in swagger.text
    assert (await rt.client.get("/swagger/")).headers["location"].endswith("/swagger/index.html")

    spec = (await rt.client.get("/api/openapi.json")).json()
    validate(spec)
    for path in (
        "/queue/add",
        "/queue/add-batch",
        "/queue/{task_id}",
        "/worker/register",
        "/api/cli/queues/{queue}/tasks",
        "/api/cli/configs/{name}",
    ):
        assert path in spec["paths"], path
    assert spec["paths"]["/queue/add"]["post"]["tags"] == ["queues"]


async def test_the_swagger_files_can_be_urls_or_local_files(sqlite_queues, tmp_path):
    rt = await sqlite_queues(swagger_script="/static/swagger.js", swagger_css="/static/s.css")
    page = (await rt.client.get("/swagger/index.html")).text
    assert 'src="/static/swagger.js"' in page and 'href="/static/s.css"' in page
    assert (await rt.client.get("/swagger/swagger-ui.css")).status_code == 404

    script = tmp_path / "bundle.js"
    script.write_text("window.SwaggerUIBundle = function () {};")
    rt = await sqlite_queues(swagger_script=str(script))
    page = (await rt.client.get("/swagger/index.html")).text
    assert 'src="/swagger/swagger-ui-bundle.js"' in page and "swagger-ui-dist@" in page
    served = await rt.client.get("/swagger/swagger-ui-bundle.js")
    assert served.status_code == 200 and "SwaggerUIBundle" in served.text
    assert "javascript" in served.headers["content-type"]


async def test_another_plugin_enqueues_through_the_service(courtyard, plugin_dir, tmp_path):
    from courtyard.testing import write_plugin

    write_plugin(
        plugin_dir,
        "reports",
        'optional_dependencies = ["queues"]\n',
        code=(
            "from courtyard_sdk import Blueprint, hookimpl\n"
            "@hookimpl\n"
            "def courtyard_routes(ctx):\n"
            "    bp = Blueprint('reports', __name__)\n"
            "    @bp.post('/')\n"
            "    async def make():\n"
            "        task = await ctx.get_plugin('queues').enqueue('simple', {'r': 1}, timeout=5)\n"
            "        return {'id': task.id, 'state': task.state}\n"
            "    return bp\n"
        ),
    )
    config = write_config(tmp_path / "config")
    rt = await courtyard(
        only_plugins=["queues", "reports"],
        plugins={"queues": {"config_files": [str(config)], **FAST}},
    )
    made = (await rt.client.post("/reports/")).json()
    assert made["state"] == "pending"
    assert (await rt.client.get(f"/queue/{made['id']}")).json()["info"]["timeout"] == 5


async def test_finished_tasks_are_published_on_the_event_bus(sqlite_queues):
    rt = await sqlite_queues()
    bus = rt.dispatcher.services.events
    async with bus.subscribe("queues.task.*") as events:
        done = await enqueue(rt.client, "simple")
        failed = await enqueue(rt.client, "simple", max_retry=0)
        worker = new_worker(rt.client, "simple")
        await worker.dequeue()
        await worker.call(done, "complete", result=1)
        await worker.dequeue()
        await worker.call(failed, "fail", error="x")
        received = [await anext(events) for _ in range(2)]
    assert [(e.topic, e.data["task_id"]) for e in received] == [
        ("queues.task.completed", done),
        ("queues.task.archived", failed),
    ]
    assert received[0].data == {"task_id": done, "queue": "simple.default", "state": "completed"}


async def test_a_plugin_that_cannot_start_says_why(courtyard, tmp_path):
    from courtyard.testing import free_port

    broken = write_config(tmp_path / "broken", "queues:\n  q:\n    priority: 1\n")
    for settings, expected in (
        ({"config_files": [str(broken)]}, "queues.q.deployment: required"),
        ({"backend": "redis"}, 'backend = "redis" needs redis_url'),
        (
            {"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"},
            "cannot reach Redis at 127.0.0.1",
        ),
    ):
        rt = await courtyard(only_plugins=["queues"], plugins={"queues": settings})
        listed = (await rt.client.get("/api/plugins/")).json()
        queues = next(p for p in listed if p["name"] == "queues")
        assert queues["status"] == "failed" and expected in queues["error"], queues
        await rt.dispatcher.close()
