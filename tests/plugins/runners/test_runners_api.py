"""RustCI's runner management API: register, list, get, update, delete, errors."""

from __future__ import annotations

from typing import Any

from runners_kit import RUNNER, TIMESTAMP, error_of, register


async def test_register_answers_as_documented_and_stores_the_token_hashed(runners: Any) -> None:
    rt = await runners()
    answer = await rt.client.post("/api/runners/register", json=RUNNER)
    assert answer.status_code == 201
    body = answer.json()
    assert body["success"] is True
    assert body["runner_id"].startswith("runner_") and len(body["runner_id"]) == 43
    assert body["message"] == "Runner registered successfully"
    token = body["registration_token"]
    assert len(token) > 40
    details = (await rt.client.get(f"/api/runners/{body['runner_id']}")).text
    listing = (await rt.client.get("/api/runners")).text
    assert token not in details and token not in listing
    from sqlalchemy import text

    engine = rt.dispatcher.services.database.engine
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT token_hash FROM runners_runner"))).scalar()
    assert stored != token and len(stored) == 64


async def test_list_filters_and_paginates(runners: Any) -> None:
    rt = await runners()
    ids = []
    for i in range(5):
        kind = "docker" if i % 2 else "native"
        tags = ["production", "docker"] if i == 1 else ["staging"]
        runner_id, _ = await register(rt.client, name=f"r{i}", type=kind, tags=tags)
        ids.append(runner_id)
    everything = (await rt.client.get("/api/runners")).json()
    assert everything["total_count"] == 5 and everything["has_more"] is False
    assert [r["id"] for r in everything["runners"]] == ids
    first = everything["runners"][0]
    assert first["status"] == "inactive"
    assert set(first) >= {
        "id",
        "name",
        "type",
        "status",
        "host",
        "port",
        "capabilities",
        "metadata",
        "resources",
        "current_load",
    }
    assert first["current_load"] == {
        "active_jobs": 0,
        "cpu_usage": 0.0,
        "memory_usage": 0.0,
        "disk_usage": 0.0,
    }
    page = (await rt.client.get("/api/runners?limit=2&offset=1")).json()
    assert [r["id"] for r in page["runners"]] == ids[1:3]
    assert page["total_count"] == 5 and page["has_more"] is True
    docker = (await rt.client.get("/api/runners?type=docker")).json()
    assert docker["total_count"] == 2
    tagged = (await rt.client.get("/api/runners?tags=production,docker")).json()
    assert [r["id"] for r in tagged["runners"]] == [ids[1]]
    assert (await rt.client.get("/api/runners?status=active")).json()["total_count"] == 0
    assert (await rt.client.get("/api/runners?status=inactive")).json()["total_count"] == 5


BAD_QUERIES = ["status=sleeping", "type=vm", "limit=0", "limit=abc", "limit=1001", "offset=-1"]


async def test_bad_list_queries_are_invalid_requests(runners: Any) -> None:
    rt = await runners()
    for query in BAD_QUERIES:
        answer = await rt.client.get(f"/api/runners?{query}")
        assert answer.status_code == 400, query
        error = error_of(answer)
        assert error["code"] == "INVALID_REQUEST" and error["details"]["parameter"], query


async def test_details_have_statistics(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client, **{**RUNNER, "resources": {"cpu_cores": 4}})
    body = (await rt.client.get(f"/api/runners/{runner_id}")).json()
    assert body["id"] == runner_id and body["type"] == "docker"
    assert body["resources"] == {"cpu_cores": 4.0}
    assert TIMESTAMP.match(body["metadata"]["registered_at"])
    assert body["metadata"]["last_seen"] is None
    assert body["metadata"]["os"] == "linux"
    assert body["statistics"] == {
        "total_jobs_executed": 0,
        "successful_jobs": 0,
        "failed_jobs": 0,
        "cancelled_jobs": 0,
        "average_execution_time": 0.0,
        "uptime_percentage": 0.0,
    }


async def test_unknown_runner_is_runner_not_found(runners: Any) -> None:
    rt = await runners()
    for method, path in [
        ("GET", "/api/runners/runner_123"),
        ("PUT", "/api/runners/runner_123"),
        ("DELETE", "/api/runners/runner_123"),
        ("GET", "/api/runners/runner_123/status"),
        ("GET", "/api/runners/runner_123/health"),
        ("GET", "/api/runners/runner_123/metrics"),
        ("GET", "/api/runners/runner_123/jobs"),
        ("POST", "/api/runners/runner_123/jobs"),
        ("GET", "/api/runners/runner_123/logs"),
        ("GET", "/api/runners/runner_123/config"),
        ("PUT", "/api/runners/runner_123/config"),
        ("POST", "/api/runners/runner_123/stop"),
    ]:
        body = {"name": "x"} if method == "PUT" else None
        if path.endswith("/jobs") and method == "POST":
            body = {"name": "j", "steps": [{"name": "s", "run": "true"}]}
        if path.endswith("/config") and method == "PUT":
            body = {"job_timeout": 10}
        answer = await rt.client.request(method, path, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        error = error_of(answer)
        assert error == {
            "code": "RUNNER_NOT_FOUND",
            "message": "Runner with ID 'runner_123' not found",
            "details": {"runner_id": "runner_123", "timestamp": error["details"]["timestamp"]},
        }


async def test_update_changes_fields_and_merges_metadata(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client, **RUNNER)
    answer = await rt.client.put(
        f"/api/runners/{runner_id}",
        json={
            "name": "updated-docker-runner",
            "capabilities": ["docker", "isolation", "deployment"],
            "metadata": {"max_concurrent_jobs": 10, "updated_at": "2024-01-15T11:00:00Z"},
            "tags": ["production", "high-capacity"],
        },
    )
    assert answer.json() == {"success": True, "message": "Runner updated successfully"}
    body = (await rt.client.get(f"/api/runners/{runner_id}")).json()
    assert body["name"] == "updated-docker-runner"
    assert body["capabilities"] == ["docker", "isolation", "deployment"]
    assert body["tags"] == ["production", "high-capacity"]
    assert body["metadata"]["os"] == "linux" and body["metadata"]["max_concurrent_jobs"] == 10


BAD_REGISTRATIONS: list[Any] = [
    {"type": "native"},
    {"name": "", "type": "native"},
    {"name": "x", "type": "vm"},
    {"name": "x", "type": "native", "port": 70000},
    {"name": "x", "type": "native", "capabilities": "docker"},
    {"name": "x", "type": "native", "bogus": 1},
    {"name": "x\u0000", "type": "native"},
    {"name": "x", "type": "native", "metadata": {"big": "x" * 70000}},
    [1, 2],
]


async def test_bad_registrations_are_invalid_requests(runners: Any) -> None:
    rt = await runners(rate_limits=False)
    for body in BAD_REGISTRATIONS:
        answer = await rt.client.post("/api/runners/register", json=body)
        assert answer.status_code == 400, answer.text
        assert error_of(answer)["code"] == "INVALID_REQUEST"
    assert (await rt.client.get("/api/runners")).json()["total_count"] == 0


async def test_bad_jobs_are_invalid_requests(runners: Any) -> None:
    rt = await runners(rate_limits=False)
    runner_id, _ = await register(rt.client)
    step = {"name": "s", "run": "true"}
    for body in [
        {"steps": [step]},
        {"name": "j", "steps": []},
        {"name": "j", "steps": [{"name": "s"}]},
        {"name": "j", "steps": [step], "timeout": 0},
        {"name": "j", "steps": [step], "timeout": "soon"},
        {"name": "j", "steps": [step], "retry_count": 11},
        {"name": "j", "steps": [step], "environment": {"1BAD": "x"}},
        {"name": "j", "steps": [step], "environment": {"A": {"nested": 1}}},
        {"name": "j", "steps": [step] * 101},
    ]:
        answer = await rt.client.post(f"/api/runners/{runner_id}/jobs", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert error_of(answer)["code"] == "INVALID_REQUEST"
    for query in ("status=done", "limit=0", "offset=x"):
        answer = await rt.client.get(f"/api/runners/{runner_id}/jobs?{query}")
        assert answer.status_code == 400 and error_of(answer)["code"] == "INVALID_REQUEST"


async def test_not_json_is_an_invalid_request(runners: Any) -> None:
    rt = await runners()
    for content, kind in [
        (b"{", "application/json"),
        (b"\xff", "application/json"),
        (b'{"name": "x"}', "text/plain"),
        (b'{"a": NaN}', "application/json"),
    ]:
        answer = await rt.client.post(
            "/api/runners/register", content=content, headers={"Content-Type": kind}
        )
        assert answer.status_code == 400
        assert error_of(answer)["code"] == "INVALID_REQUEST"


async def test_delete_unregisters(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client)
    answer = await rt.client.delete(f"/api/runners/{runner_id}")
    assert answer.json()["success"] is True
    assert answer.json()["message"] == "Runner deleted successfully"
    assert (await rt.client.get(f"/api/runners/{runner_id}")).status_code == 404


async def test_delete_with_active_jobs_needs_force(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client)
    job = {"name": "j", "steps": [{"name": "s", "run": "true"}]}
    assert (await rt.client.post(f"/api/runners/{runner_id}/jobs", json=job)).status_code == 201
    refused = await rt.client.delete(f"/api/runners/{runner_id}")
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "RUNNER_BUSY"
    forced = await rt.client.delete(f"/api/runners/{runner_id}?force=true")
    assert forced.status_code == 200 and forced.json()["cancelled_jobs"] == 1
    assert (await rt.client.get(f"/api/runners/{runner_id}")).status_code == 404
