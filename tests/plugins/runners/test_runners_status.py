"""Status, health, metrics, configuration, bulk operations, the WebSocket and the
sweeper, with an in-process agent (or the agent protocol spoken by the test)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from runners_kit import TIMESTAMP, error_of, register


async def test_status_health_metrics_and_config(agent_env: Any) -> None:
    env = await agent_env(max_concurrent_jobs=2)
    status = (await env.client.get(f"{env.base}/status")).json()
    assert status["status"] == "active" and status["health"] in ("healthy", "degraded")
    assert TIMESTAMP.match(status["last_heartbeat"])
    assert set(status["current_load"]) == {
        "active_jobs",
        "queued_jobs",
        "cpu_usage",
        "memory_usage",
        "disk_usage",
    }
    health = await env.until(lambda: _health_with_rtt(env))
    assert health["checks"]["connectivity"]["status"] == "pass"
    assert health["checks"]["disk_space"]["available_gb"] > 0
    assert health["checks"]["memory"]["available_gb"] > 0
    assert "docker_daemon" not in health["checks"]
    assert TIMESTAMP.match(health["last_check"])
    metrics = (await env.client.get(f"{env.base}/metrics?period=1h&resolution=1m")).json()
    assert metrics["period"] == "1h" and metrics["resolution"] == "1m"
    point = metrics["metrics"]["cpu_usage"][0]
    assert TIMESTAMP.match(point["timestamp"]) and isinstance(point["value"], float)
    assert set(metrics["summary"]) == {
        "avg_cpu_usage",
        "max_cpu_usage",
        "avg_memory_usage",
        "max_memory_usage",
        "total_jobs_executed",
    }
    default = (await env.client.get(f"{env.base}/metrics")).json()
    assert (default["period"], default["resolution"]) == ("24h", "5m")
    for query in ("period=2h", "resolution=10s"):
        bad = await env.client.get(f"{env.base}/metrics?{query}")
        assert bad.status_code == 400 and error_of(bad)["code"] == "INVALID_REQUEST"
    config = (await env.client.get(f"{env.base}/config")).json()
    assert config["configuration"]["max_concurrent_jobs"] == 2
    assert config["configuration"]["cleanup_policy"] == "always"
    assert TIMESTAMP.match(config["last_updated"]) and config["restart_required"] is False
    change = await env.client.put(
        f"{env.base}/config", json={"max_concurrent_jobs": 8, "job_timeout": 1800}
    )
    assert change.json() == {
        "success": True,
        "message": "Configuration updated successfully",
        "restart_required": False,
    }
    await env.until(lambda: _applied(env, 8))
    needs_restart = await env.client.put(f"{env.base}/config", json={"executor": "isolation"})
    assert needs_restart.json()["restart_required"] is True
    after = (await env.client.get(f"{env.base}/config")).json()
    assert after["configuration"]["job_timeout"] == 1800 and after["restart_required"] is True
    for body in ({"max_concurrent_jobs": 0}, {"cleanup_policy": "sometimes"}, {"bogus": 1}):
        bad = await env.client.put(f"{env.base}/config", json=body)
        assert bad.status_code == 400 and error_of(bad)["code"] == "INVALID_REQUEST"


async def _health_with_rtt(env: Any) -> Any:
    health = (await env.client.get(f"{env.base}/health")).json()
    return health if "response_time_ms" in health["checks"]["connectivity"] else None


async def _applied(env: Any, slots: int) -> bool:
    return bool(env.agent.config.get("max_concurrent_jobs") == slots)


async def test_logs_filters(agent_env: Any) -> None:
    env = await agent_env()
    job_id = await env.submit([{"name": "s", "run": "echo out; echo err >&2; exit 1"}])
    await env.wait_job(job_id, "failed")
    everything = (await env.client.get(f"{env.base}/logs?job_id={job_id}")).json()
    assert everything["runner_id"] == env.runner_id
    assert everything["total_count"] == len(everything["logs"]) and not everything["has_more"]
    entry = everything["logs"][0]
    assert set(entry) >= {"timestamp", "level", "message", "context"}
    warn = (await env.client.get(f"{env.base}/logs?job_id={job_id}&level=warn")).json()
    assert {e["level"] for e in warn["logs"]} == {"warn", "error"}
    last = (await env.client.get(f"{env.base}/logs?job_id={job_id}&limit=1")).json()
    assert last["has_more"] is True and len(last["logs"]) == 1
    assert last["logs"][0]["message"] == everything["logs"][-1]["message"]
    first = everything["logs"][0]["timestamp"]
    none = await env.client.get(f"{env.base}/logs", params={"until": "2000-01-01T00:00:00Z"})
    assert none.json()["logs"] == []
    since = (
        await env.client.get(f"{env.base}/logs", params={"since": first, "job_id": job_id})
    ).json()
    assert since["total_count"] == everything["total_count"]
    for query in ("level=fatal", "since=yesterday", "limit=0", "follow=perhaps"):
        bad = await env.client.get(f"{env.base}/logs?{query}")
        assert bad.status_code == 400 and error_of(bad)["code"] == "INVALID_REQUEST"


async def test_bulk_operations(agent_env: Any) -> None:
    env = await agent_env({"rate_limits": False})
    other = (
        await env.client.post(
            "/api/runners/register", json={"name": "idle", "type": "docker", "tags": ["production"]}
        )
    ).json()
    update = await env.client.post(
        "/api/runners/bulk",
        json={
            "operation": "update_config",
            "filters": {"status": "active"},
            "data": {"max_concurrent_jobs": 8, "job_timeout": 1800},
        },
    )
    assert update.json() == {
        "success": True,
        "affected_runners": 1,
        "results": [{"runner_id": env.runner_id, "success": True, "restart_required": False}],
    }
    stop = await env.client.post(
        "/api/runners/bulk", json={"operation": "stop", "filters": {"type": "docker"}}
    )
    body = stop.json()
    assert body["success"] is False and body["affected_runners"] == 0
    assert body["results"][0]["error"]["code"] == "RUNNER_UNAVAILABLE"
    restart = await env.client.post(
        "/api/runners/bulk",
        json={"operation": "restart", "filters": {"status": "active", "type": "native"}},
    )
    assert restart.json()["results"][0]["status"] == "restarting"
    gone = await env.client.post(
        "/api/runners/bulk", json={"operation": "delete", "filters": {"tags": ["production"]}}
    )
    assert gone.json()["affected_runners"] == 1
    assert (await env.client.get(f"/api/runners/{other['runner_id']}")).status_code == 404
    for bad_body in (
        {"operation": "explode"},
        {"operation": "update_config", "data": {"max_concurrent_jobs": -1}},
    ):
        bad = await env.client.post("/api/runners/bulk", json=bad_body)
        assert bad.status_code == 400 and error_of(bad)["code"] == "INVALID_REQUEST"


async def test_a_runner_that_stops_beating_fails_or_requeues_its_jobs(runners: Any) -> None:
    rt = await runners()
    runner_id, token = await register(rt.client)
    agent = f"/api/runners/{runner_id}/agent"
    headers = {"X-Runner-Token": token}
    jobs = []
    for retries in (0, 1):
        answer = await rt.client.post(
            f"/api/runners/{runner_id}/jobs",
            json={"name": "j", "steps": [{"name": "s", "run": "sleep 9"}], "retry_count": retries},
        )
        jobs.append(answer.json()["job_id"])
    beat = await rt.client.post(f"{agent}/heartbeat", headers=headers, json={"session": "a"})
    assert beat.json()["status"] == "active"
    poll = await rt.client.post(
        f"{agent}/poll", headers=headers, json={"session": "a", "capacity": 2, "wait": 0}
    )
    assert [j["job_id"] for j in poll.json()["jobs"]] == jobs
    # No more heartbeats: after 3 missed ones (0.6 s) the sweeper takes over.
    for _ in range(100):
        states = [
            (await rt.client.get(f"/api/runners/{runner_id}/jobs/{j}")).json()["status"]
            for j in jobs
        ]
        if states == ["failed", "queued"]:
            break
        await asyncio.sleep(0.05)
    assert states == ["failed", "queued"]
    status = (await rt.client.get(f"/api/runners/{runner_id}/status")).json()
    assert status["status"] == "inactive" and status["health"] == "unhealthy"
    failed = (await rt.client.get(f"/api/runners/{runner_id}/jobs/{jobs[0]}")).json()
    assert "went away" in failed["error"]
    # The agent that comes back late cannot finish what it lost.
    late = await rt.client.post(
        f"{agent}/jobs/{jobs[0]}/finish",
        headers=headers,
        json={"session": "a", "status": "completed", "exit_code": 0},
    )
    assert late.status_code == 409 and error_of(late)["code"] == "JOB_NOT_RUNNING"
    refused = await rt.client.post(
        f"/api/runners/{runner_id}/jobs",
        json={"name": "j", "steps": [{"name": "s", "run": "true"}]},
    )
    assert refused.status_code == 503 and error_of(refused)["code"] == "RUNNER_UNAVAILABLE"


async def test_agent_routes_need_the_runner_token(runners: Any) -> None:
    rt = await runners()
    runner_id, token = await register(rt.client)
    _, other_token = await register(rt.client, name="other")
    for headers in ({}, {"X-Runner-Token": "crt_nope"}, {"X-Runner-Token": other_token}):
        answer = await rt.client.post(
            f"/api/runners/{runner_id}/agent/heartbeat", headers=headers, json={"session": "a"}
        )
        assert answer.status_code == 401
        assert error_of(answer)["code"] == "INVALID_RUNNER_TOKEN"
    unknown = await rt.client.post(
        "/api/runners/runner_x/agent/poll", headers={"X-Runner-Token": token}, json={"session": "a"}
    )
    assert unknown.status_code == 401


async def test_the_websocket_sends_status_changes(runners: Any) -> None:
    rt = await runners()
    runner_id, token = await register(rt.client)
    app = rt.dispatcher.current.app if hasattr(rt.dispatcher, "current") else None
    assert app is not None
    client = app.test_client()
    async with client.websocket("/api/runners/ws") as ws:
        await asyncio.sleep(0.1)
        await rt.client.post(
            f"/api/runners/{runner_id}/agent/heartbeat",
            headers={"X-Runner-Token": token},
            json={"session": "a"},
        )
        frame = json.loads(await asyncio.wait_for(ws.receive(), 5))
    assert frame["type"] == "runner_status_change" and frame["runner_id"] == runner_id
    assert (frame["old_status"], frame["new_status"]) == ("inactive", "active")
    assert TIMESTAMP.match(frame["timestamp"])


async def test_the_sweeper_prunes_old_samples_and_log_lines(runners: Any) -> None:
    import logging
    import time
    from types import SimpleNamespace

    from courtyard_runners.service import Service
    from courtyard_runners.states import Options
    from sqlalchemy import text

    rt = await runners(log_retention_seconds=86400)
    runner_id, _ = await register(rt.client)
    engine = rt.dispatcher.services.database.engine
    now = time.time()
    async with engine.begin() as conn:
        for age in (31 * 86400, 60):
            await conn.execute(
                text(
                    "INSERT INTO runners_sample (runner_id, ts, cpu, memory, disk, active_jobs)"
                    " VALUES (:r, :ts, 1, 1, 1, 0)"
                ),
                {"r": runner_id, "ts": now - age},
            )
        for age in (2 * 86400, 60):
            await conn.execute(
                text(
                    "INSERT INTO runners_log (runner_id, level, message, ts)"
                    " VALUES (:r, 'info', :m, :ts)"
                ),
                {"r": runner_id, "m": f"age {age}", "ts": now - age},
            )
    options = Options(log_retention_seconds=86400)
    service = Service(SimpleNamespace(engine=engine), options, logging.getLogger("test"))
    await service.sweep()
    async with engine.connect() as conn:
        samples = (await conn.execute(text("SELECT COUNT(*) FROM runners_sample"))).scalar()
        lines = (await conn.execute(text("SELECT message FROM runners_log"))).scalars().all()
    assert samples == 1
    assert lines == ["age 60"]
