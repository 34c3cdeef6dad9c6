"""Jobs run by the agent (in process, with real processes): they succeed, fail, time
out, are cancelled mid-step, are retried; concurrency; control delivered to the agent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from runners_kit import TIMESTAMP


async def test_a_job_runs_its_steps_and_streams_its_output(agent_env: Any) -> None:
    env = await agent_env()
    job_id = await env.submit(
        [
            {"name": "setup", "run": "echo 'Setting up environment'; echo oops >&2"},
            {"name": "build", "run": "echo NODE_ENV=$NODE_ENV DEBUG=$DEBUG; pwd > where"},
            {"name": "test", "run": 'test "$(cat where)" = "$COURTYARD_WORKSPACE" && echo ok'},
        ],
        name="test-job",
        environment={"NODE_ENV": "test", "DEBUG": "true"},
        timeout=300,
        retry_count=2,
    )
    job = await env.wait_job(job_id, "completed", "failed")
    assert job["status"] == "completed", job
    assert job["exit_code"] == 0 and job["attempt"] == 1
    assert TIMESTAMP.match(job["started_at"]) and TIMESTAMP.match(job["completed_at"])
    assert job["duration"] >= 0
    assert [s["name"] for s in job["step_results"]] == ["setup", "build", "test"]
    lines = await env.logs(job_id=job_id)
    output = [(e["level"], e["message"], e["context"]["step"]) for e in lines]
    assert output.index(("info", "Setting up environment", "setup")) < output.index(
        ("info", "NODE_ENV=test DEBUG=true", "build")
    )
    assert ("warn", "oops", "setup") in output
    assert ("info", "ok", "test") in output
    assert ("debug", "Step started: build", "build") in output
    assert all(e["context"]["job_id"] == job_id for e in lines)
    listed = (await env.client.get(f"{env.base}/jobs")).json()
    assert listed["total_count"] == 1 and listed["jobs"][0]["status"] == "completed"
    assert set(listed["jobs"][0]) >= {
        "job_id",
        "name",
        "status",
        "created_at",
        "started_at",
        "completed_at",
        "duration",
        "exit_code",
    }
    stats = (await env.client.get(env.base)).json()["statistics"]
    assert stats["total_jobs_executed"] == 1 and stats["successful_jobs"] == 1
    assert stats["uptime_percentage"] > 0
    # The workspace is gone (cleanup_policy "always").
    assert not any(p.name.startswith(job_id) for p in Path(env.agent.work_dir).iterdir())


async def test_fail_timeout_cancel_and_retry(agent_env: Any, tmp_path: Path) -> None:
    env = await agent_env(max_concurrent_jobs=4)
    marker = tmp_path / "child-alive"
    counter = tmp_path / "tries"
    failing = await env.submit([{"name": "a", "run": "exit 3"}, {"name": "b", "run": "echo no"}])
    slow = await env.submit(
        [{"name": "sleep", "run": f"(sleep 1; touch {marker}) & sleep 30"}], timeout=0.5
    )
    cancelled = await env.submit([{"name": "long", "run": "echo started; sleep 30"}])
    flaky = await env.submit(
        [{"name": "flaky", "run": f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"}],
        retry_count=2,
    )

    job = await env.wait_job(failing, "failed", "completed")
    assert job["status"] == "failed" and job["exit_code"] == 3
    assert [s["name"] for s in job["step_results"]] == ["a"]
    assert "no" not in [e["message"] for e in await env.logs(job_id=failing)]

    job = await env.wait_job(slow, "timed_out", "failed", "completed")
    assert job["status"] == "timed_out" and "timed out" in job["error"]

    await env.until(lambda: _said(env, cancelled, "started"))
    answer = await env.client.post(f"{env.base}/jobs/{cancelled}/cancel")
    assert answer.json() == {"success": True, "job_id": cancelled, "status": "cancelling"}
    started = time.monotonic()
    job = await env.wait_job(cancelled, "cancelled", timeout=5)
    assert time.monotonic() - started < 3  # at once, not after the step's 30 s
    again = await env.client.post(f"{env.base}/jobs/{cancelled}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "JOB_FINISHED"

    job = await env.wait_job(flaky, "completed", "failed")
    assert job["status"] == "completed" and job["attempt"] == 3
    assert counter.read_text().count("x") == 3
    retries = [e["message"] for e in await env.logs(job_id=flaky) if e["level"] == "warn"]
    assert any("retrying" in m for m in retries)

    await asyncio.sleep(1.2)
    assert not marker.exists()  # the timed-out step's background child died with its group
    stats = (await env.client.get(env.base)).json()["statistics"]
    assert stats["successful_jobs"] == 1 and stats["failed_jobs"] == 2
    assert stats["cancelled_jobs"] == 1


async def _said(env: Any, job_id: str, message: str) -> bool:
    return any(e["message"] == message for e in await env.logs(job_id=job_id))


async def test_a_queued_job_is_cancelled_at_once(runners: Any) -> None:
    rt = await runners()
    answer = await rt.client.post("/api/runners/register", json={"name": "x", "type": "native"})
    runner_id = answer.json()["runner_id"]
    job = await rt.client.post(
        f"/api/runners/{runner_id}/jobs", json={"name": "j", "steps": [{"name": "s", "run": "x"}]}
    )
    body = job.json()
    assert body["status"] == "queued" and TIMESTAMP.match(body["estimated_start_time"])
    cancel = await rt.client.post(f"/api/runners/{runner_id}/jobs/{body['job_id']}/cancel")
    assert cancel.json()["status"] == "cancelled"
    listed = (await rt.client.get(f"/api/runners/{runner_id}/jobs?status=cancelled")).json()
    assert [j["job_id"] for j in listed["jobs"]] == [body["job_id"]]
    missing = await rt.client.post(f"/api/runners/{runner_id}/jobs/job_nope/cancel")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_max_concurrent_jobs_holds(agent_env: Any, tmp_path: Path) -> None:
    env = await agent_env(max_concurrent_jobs=2)
    ids = [await env.submit([{"name": "s", "run": "sleep 0.4"}]) for _ in range(4)]
    peak = 0
    while True:
        running = (await env.client.get(f"{env.base}/jobs?status=running")).json()["total_count"]
        peak = max(peak, running)
        done = (await env.client.get(f"{env.base}/jobs?status=completed")).json()["total_count"]
        if done == 4:
            break
        await asyncio.sleep(0.02)
    assert peak == 2
    assert len(ids) == 4


async def test_stop_start_restart_reach_the_agent(agent_env: Any) -> None:
    env = await agent_env()
    running = await env.submit([{"name": "s", "run": "echo go; sleep 30"}])
    await env.until(lambda: _said(env, running, "go"))
    stop = await env.client.post(f"{env.base}/stop")  # immediate: the job is cancelled
    assert stop.json() == {
        "success": True,
        "message": "Runner stopped successfully",
        "status": "stopped",
    }
    assert (await env.wait_job(running, "cancelled", timeout=5))["status"] == "cancelled"
    assert (await env.client.get(f"{env.base}/status")).json()["status"] == "inactive"
    refused = await env.client.post(
        f"{env.base}/jobs", json={"name": "j", "steps": [{"name": "s", "run": "true"}]}
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "RUNNER_UNAVAILABLE"
    start = await env.client.post(f"{env.base}/start")
    assert start.json() == {
        "success": True,
        "message": "Runner started successfully",
        "status": "starting",
    }
    await env.until(lambda: _status(env, "active"))
    done = await env.submit([{"name": "s", "run": "echo after"}])
    assert (await env.wait_job(done, "completed"))["status"] == "completed"
    slow = await env.submit([{"name": "s", "run": "sleep 0.3; echo finished"}])
    await env.wait_job(slow, "running")
    restart = await env.client.post(f"{env.base}/restart", json={"graceful": True, "timeout": 5})
    assert restart.json() == {
        "success": True,
        "message": "Runner restart initiated",
        "status": "restarting",
    }
    # Graceful: the running job finishes rather than being cancelled.
    assert (await env.wait_job(slow, "completed", "cancelled"))["status"] == "completed"
    await env.until(lambda: _said_anywhere(env, "Runner restarted"))
    later = await env.submit([{"name": "s", "run": "echo again"}])
    assert (await env.wait_job(later, "completed"))["status"] == "completed"
    events = [e["message"] for e in await env.logs(level="debug") if e["context"]["job_id"] is None]
    assert "stop requested" in events and "Control received: restart" in events


async def _status(env: Any, status: str) -> bool:
    return bool((await env.client.get(f"{env.base}/status")).json()["status"] == status)


async def _said_anywhere(env: Any, text: str) -> bool:
    return any(text in e["message"] for e in await env.logs())


async def test_control_needs_a_connected_agent(runners: Any) -> None:
    rt = await runners()
    answer = await rt.client.post("/api/runners/register", json={"name": "x", "type": "native"})
    runner_id = answer.json()["runner_id"]
    for action in ("start", "stop", "restart"):
        refused = await rt.client.post(f"/api/runners/{runner_id}/{action}")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "RUNNER_UNAVAILABLE"
    bad = await rt.client.post(f"/api/runners/{runner_id}/stop", json={"graceful": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST"


async def test_the_isolation_executor_sees_only_its_workspace(
    agent_env: Any, tmp_path: Path
) -> None:
    import shutil

    import pytest

    if shutil.which("bwrap") is None:
        pytest.skip("needs bwrap (Debian package bubblewrap)")
    secret = tmp_path / "outside.txt"
    secret.write_text("secret")
    env = await agent_env(executor="isolation")
    assert env.agent.executor == "isolation"
    job_id = await env.submit(
        [
            {"name": "inside", "run": "echo data > mine && cat mine"},
            {"name": "outside", "run": f"cat {secret} || echo hidden"},
            {"name": "system", "run": "touch /usr/x 2>/dev/null || echo read-only"},
        ]
    )
    job = await env.wait_job(job_id, "completed", "failed")
    assert job["status"] == "completed", await env.logs(job_id=job_id)
    said = [e["message"] for e in await env.logs(job_id=job_id) if e["level"] == "info"]
    assert said == ["data", "hidden", "read-only"]


async def test_terminate_finishes_running_jobs_then_cancels_past_the_grace(
    agent_env: Any,
) -> None:
    env = await agent_env(max_concurrent_jobs=2)
    short = await env.submit([{"name": "s", "run": "sleep 0.3; echo done"}])
    long = await env.submit([{"name": "s", "run": "echo long; sleep 30"}])
    await env.wait_job(short, "running")
    await env.until(lambda: _said(env, long, "long"))
    env.agent.grace = 1.0
    env.agent.terminate()  # what SIGTERM does
    assert await asyncio.wait_for(env.task, 10) == 0
    assert (await env.job(short))["status"] == "completed"
    cancelled = await env.job(long)
    assert cancelled["status"] == "cancelled" and "runner stopped" in cancelled["error"]
    status = (await env.client.get(f"{env.base}/status")).json()
    assert status["status"] == "active"  # stopping is the agent's, not the operator's
    queued = await env.submit([{"name": "s", "run": "true"}])
    assert (await env.job(queued))["status"] == "queued"  # waits for the next agent


async def test_the_job_page_follows_the_log(agent_env: Any) -> None:
    env = await agent_env()
    job_id = await env.submit([{"name": "s", "run": "echo '<script>'"}])
    await env.wait_job(job_id, "completed")
    page = await env.client.get(f"/runners/{env.runner_id}/jobs/{job_id}")
    assert page.status_code == 200
    assert f"/api/runners/{env.runner_id}/logs?follow=true&amp;job_id={job_id}" in page.text
    runner = await env.client.get(f"/runners/{env.runner_id}")
    assert job_id in runner.text and "completed" in runner.text
    missing = await env.client.get("/runners/runner_nope")
    assert missing.status_code == 404


async def test_runner_limits_and_cleanup_policy_apply(agent_env: Any) -> None:
    env = await agent_env(
        job_timeout=0.5,
        cleanup_policy="never",
        resource_limits={"memory_limit": "64Mi", "disk_limit": "1Mi"},
    )
    capped = await env.submit([{"name": "s", "run": "sleep 20"}], timeout=100)
    job = await env.wait_job(capped, "timed_out", "failed", "completed")
    assert job["status"] == "timed_out"  # the runner's job_timeout caps the job's
    hungry = await env.submit(
        [{"name": "s", "run": "python3 -c 'x = bytearray(512 * 1024 * 1024)'"}]
    )
    assert (await env.wait_job(hungry, "failed", "completed"))["status"] == "failed"
    big = await env.submit([{"name": "s", "run": "head -c 2097152 /dev/zero > big"}])
    assert (await env.wait_job(big, "failed", "completed"))["status"] == "failed"
    kept = [p.name for p in Path(env.agent.work_dir).iterdir()]
    assert any(name.startswith(capped) for name in kept)  # cleanup_policy "never"


async def test_long_lines_are_cut_and_every_line_arrives_in_order(agent_env: Any) -> None:
    env = await agent_env()
    script = (
        'python3 -c "import sys; [print(i) for i in range(3000)]; '
        "sys.stdout.write('y' * 200000 + '\\n')\""
    )
    job_id = await env.submit([{"name": "s", "run": script}])
    assert (await env.wait_job(job_id, "completed", "failed"))["status"] == "completed"
    answer = await env.client.get(
        f"{env.base}/logs", params={"job_id": job_id, "level": "info", "limit": 1000}
    )
    body = answer.json()
    assert body["total_count"] == 3000 + 4 and body["has_more"] is True
    rows = body["logs"]  # the newest 1000, oldest first
    assert [len(r["message"]) for r in rows[-4:]] == [65000, 65000, 65000, 5000]
    assert [r["message"] for r in rows[:-4]] == [str(i) for i in range(2004, 3000)]


async def test_deleting_a_runner_stops_its_agent_and_its_jobs(agent_env: Any) -> None:
    env = await agent_env()
    job_id = await env.submit([{"name": "s", "run": "echo go; sleep 30"}])
    await env.until(lambda: _said(env, job_id, "go"))
    answer = await env.client.delete(f"{env.base}?force=true")
    assert answer.json()["cancelled_jobs"] == 1
    # The token is gone with the runner: the agent's next request is refused, it cancels
    # what it runs and exits 1.
    assert await asyncio.wait_for(env.task, 10) == 1
    assert not env.agent.jobs


async def test_a_reload_hands_the_agent_to_the_new_generation(agent_env: Any) -> None:
    env = await agent_env()
    first = await env.submit([{"name": "s", "run": "echo one"}])
    await env.wait_job(first, "completed")
    reloaded = await env.client.post(
        "/api/plugins/reload", headers={"X-Courtyard-Internal": "true"}
    )
    assert reloaded.status_code == 200, reloaded.text
    second = await env.submit([{"name": "s", "run": "echo two"}])
    assert (await env.wait_job(second, "completed", timeout=10))["status"] == "completed"


async def test_jobs_run_on_postgresql(agent_env: Any, postgres_url: str, tmp_path: Path) -> None:
    env = await agent_env(runtime={"database_url": postgres_url}, max_concurrent_jobs=2)
    counter = tmp_path / "tries"
    flaky = await env.submit(
        [{"name": "flaky", "run": f"echo x >> {counter}; test $(wc -l < {counter}) -ge 2"}],
        retry_count=1,
    )
    long = await env.submit([{"name": "long", "run": "echo started; sleep 30"}])
    job = await env.wait_job(flaky, "completed", "failed")
    assert job["status"] == "completed" and job["attempt"] == 2
    await env.until(lambda: _said(env, long, "started"))
    await env.client.post(f"{env.base}/jobs/{long}/cancel")
    assert (await env.wait_job(long, "cancelled", timeout=5))["status"] == "cancelled"
    stats = (await env.client.get(env.base)).json()["statistics"]
    assert stats["successful_jobs"] == 1 and stats["cancelled_jobs"] == 1
    metrics = (await env.client.get(f"{env.base}/metrics?period=1h&resolution=1m")).json()
    assert metrics["metrics"]["cpu_usage"]
