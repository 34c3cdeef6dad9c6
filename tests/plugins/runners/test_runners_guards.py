"""Rate limits, the Origin check, the error envelope of answers the runtime gives,
OpenAPI, the page, and PostgreSQL."""

from __future__ import annotations

from typing import Any

from runners_kit import error_of, register


async def test_registration_is_limited_to_10_a_minute_per_address(runners: Any) -> None:
    rt = await runners()
    answers = [
        await rt.client.post("/api/runners/register", json={"name": f"r{i}", "type": "native"})
        for i in range(11)
    ]
    assert [a.status_code for a in answers] == [201] * 10 + [429]
    assert answers[0].headers["X-RateLimit-Limit"] == "10"
    assert answers[0].headers["X-RateLimit-Remaining"] == "9"
    assert int(answers[0].headers["X-RateLimit-Reset"]) > 1_600_000_000
    refused = answers[-1]
    assert error_of(refused)["code"] == "RATE_LIMIT_EXCEEDED"
    assert int(refused.headers["Retry-After"]) >= 1
    # Other routes are not limited by registration's budget.
    listing = await rt.client.get("/api/runners")
    assert listing.status_code == 200 and "X-RateLimit-Limit" not in listing.headers


async def test_status_and_health_share_100_a_minute_per_runner(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client)
    other_id, _ = await register(rt.client, name="other")
    codes = []
    for i in range(130):  # the bucket refills 1.7 tokens a second meanwhile
        path = "status" if i % 2 else "health"
        codes.append((await rt.client.get(f"/api/runners/{runner_id}/{path}")).status_code)
        if codes[-1] == 429:
            break
    assert codes[:100] == [200] * 100 and codes[-1] == 429
    assert (await rt.client.get(f"/api/runners/{other_id}/status")).status_code == 200


async def test_job_submission_is_limited_to_50_a_minute_per_runner(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client)
    job = {"name": "j", "steps": [{"name": "s", "run": "true"}]}
    codes = []
    for _ in range(70):  # the bucket refills 0.8 tokens a second meanwhile
        codes.append((await rt.client.post(f"/api/runners/{runner_id}/jobs", json=job)).status_code)
        if codes[-1] == 429:
            break
    assert codes[:50] == [201] * 50 and codes[-1] == 429


async def test_a_foreign_origin_is_refused_in_the_envelope(runners: Any) -> None:
    rt = await runners()
    answer = await rt.client.post(
        "/api/runners/register",
        json={"name": "x", "type": "native"},
        headers={"Origin": "http://evil.test"},
    )
    assert answer.status_code == 403
    assert error_of(answer)["code"] == "CSRF_FAILED"


async def test_programs_without_origin_may_call_the_documented_routes(runners: Any) -> None:
    rt = await runners()
    client = rt.client
    del client.headers["Origin"]
    answer = await client.post("/api/runners/register", json={"name": "x", "type": "native"})
    assert answer.status_code == 201


async def test_a_bad_key_is_refused_in_the_envelope(runners: Any) -> None:
    rt = await runners()
    await rt.create_key(roles=["admin"])
    answer = await rt.client.get("/api/runners", headers={"X-API-Key": "cyk_nope"})
    assert answer.status_code == 401
    assert error_of(answer)["code"] == "INVALID_API_KEY"
    anonymous = await rt.client.get("/api/runners")
    assert anonymous.status_code == 401
    assert error_of(anonymous)["code"] == "AUTHENTICATION_REQUIRED"
    viewer = await rt.client_as(roles=["viewer"])
    assert (await viewer.get("/api/runners")).status_code == 200
    refused = await viewer.post("/api/runners/register", json={"name": "x", "type": "native"})
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "AUTHORIZATION_FAILED"
    jobs_only = await rt.client_as(permissions=["runners:jobs"])
    assert (await jobs_only.get("/api/runners")).status_code == 403


async def test_openapi_lists_the_routes(runners: Any) -> None:
    rt = await runners()
    document = (await rt.client.get("/api/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/api/runners",
        "/api/runners/register",
        "/api/runners/bulk",
        "/api/runners/{runner_id}",
        "/api/runners/{runner_id}/jobs",
        "/api/runners/{runner_id}/logs",
        "/api/runners/{runner_id}/config",
        "/api/runners/{runner_id}/stop",
        "/api/runners/{runner_id}/agent/poll",
    ):
        assert path in paths, path
    register_op = paths["/api/runners/register"]["post"]
    assert "201" in register_op["responses"]
    assert register_op["x-permissions"] == ["runners:manage"]


async def test_the_page_lists_runners_escaped(runners: Any) -> None:
    rt = await runners()
    runner_id, _ = await register(rt.client, name="<b>bold</b>")
    page = await rt.client.get("/runners/")
    assert page.status_code == 200 and "&lt;b&gt;bold&lt;/b&gt;" in page.text
    detail = await rt.client.get(f"/runners/{runner_id}")
    assert detail.status_code == 200
    loaded = (await rt.client.get("/api/plugins/loaded")).json()
    menus = [m for p in loaded if p["name"] == "runners" for m in p["menus"]]
    assert menus == [{"title": "Runners", "icon": "lucide:server-cog", "path": "/runners"}]


async def test_on_postgresql(runners: Any, postgres_url: str) -> None:
    rt = await runners({"database_url": postgres_url})
    runner_id, token = await register(rt.client, tags=["pg"])
    job = {"name": "j", "steps": [{"name": "s", "run": "true"}]}
    submitted = await rt.client.post(f"/api/runners/{runner_id}/jobs", json=job)
    assert submitted.status_code == 201
    agent = f"/api/runners/{runner_id}/agent"
    headers = {"X-Runner-Token": token}
    await rt.client.post(f"{agent}/heartbeat", headers=headers, json={"session": "a"})
    poll = await rt.client.post(
        f"{agent}/poll", headers=headers, json={"session": "a", "capacity": 1, "wait": 0}
    )
    job_id = poll.json()["jobs"][0]["job_id"]
    lines = {"session": "a", "lines": [{"ts": 1.7e9, "message": "hi\u0000there"}]}
    assert (
        await rt.client.post(f"{agent}/jobs/{job_id}/logs", headers=headers, json=lines)
    ).status_code == 200
    done = await rt.client.post(
        f"{agent}/jobs/{job_id}/finish",
        headers=headers,
        json={"session": "a", "status": "completed", "exit_code": 0},
    )
    assert done.json() == {"status": "completed"}
    logs = (await rt.client.get(f"/api/runners/{runner_id}/logs")).json()["logs"]
    assert "hi\ufffdthere" in [e["message"] for e in logs]
    details = (await rt.client.get(f"/api/runners/{runner_id}")).json()
    assert details["statistics"]["successful_jobs"] == 1
    metrics = (await rt.client.get(f"/api/runners/{runner_id}/metrics?period=1h")).json()
    assert len(metrics["metrics"]["cpu_usage"]) == 1
    assert (await rt.client.get("/api/runners?tags=pg")).json()["total_count"] == 1
    assert (await rt.client.delete(f"/api/runners/{runner_id}")).status_code == 200


async def test_audit_records_domain_events_without_the_token(runners: Any) -> None:
    rt = await runners()
    answer = await rt.client.post("/api/runners/register", json={"name": "a", "type": "native"})
    token = answer.json()["registration_token"]
    runner_id = answer.json()["runner_id"]
    await rt.client.put(f"/api/runners/{runner_id}/config", json={"job_timeout": 60})
    await rt.client.delete(f"/api/runners/{runner_id}")
    import asyncio

    for _ in range(50):
        entries = (await rt.client.get("/api/audit/?kind=event&plugin=runners")).json()
        if len(entries.get("entries", entries if isinstance(entries, list) else [])) >= 3:
            break
        await asyncio.sleep(0.1)
    everything = (await rt.client.get("/api/audit/")).text
    assert "runner.registered" in everything and "runner.deleted" in everything
    assert token not in everything


async def test_unusable_ids_and_values_are_4xx_on_postgresql(
    runners: Any, postgres_url: str
) -> None:
    rt = await runners({"database_url": postgres_url}, rate_limits=False)
    runner_id, token = await register(rt.client)
    for path in (
        "/api/runners/runner_%00x",
        f"/api/runners/{'r' * 300}/status",
        f"/api/runners/{runner_id}/jobs/job_%00",
        "/runners/runner_%00x",
    ):
        answer = await rt.client.get(path)
        assert answer.status_code == 404, (path, answer.text)
    for query in ("job_id=%00", "tags=a%00b"):
        target = "/api/runners" if query.startswith("tags") else f"/api/runners/{runner_id}/logs"
        answer = await rt.client.get(f"{target}?{query}")
        assert answer.status_code == 400, (query, answer.text)
        assert error_of(answer)["code"] == "INVALID_REQUEST"
    agent = await rt.client.post(
        f"/api/runners/{runner_id}/agent/heartbeat",
        headers={"X-Runner-Token": token},
        json={"session": "a\u0000b"},
    )
    assert agent.status_code == 400


async def test_in_protected_mode_agents_need_only_their_token(runners: Any) -> None:
    import httpx

    rt = await runners()
    runner_id, token = await register(rt.client)
    await rt.create_key(roles=["admin"])  # protected from now on
    async with httpx.AsyncClient(
        transport=rt.client._transport, base_url="http://localhost"
    ) as agent:
        beat = await agent.post(
            f"/api/runners/{runner_id}/agent/heartbeat",
            headers={"X-Runner-Token": token},
            json={"session": "a"},
        )
        assert beat.status_code == 200, beat.text
        poll = await agent.post(
            f"/api/runners/{runner_id}/agent/poll",
            headers={"X-Runner-Token": token},
            json={"session": "a", "wait": 0},
        )
        assert poll.status_code == 200
        # The token is no credential for the rest of the API.
        listing = await agent.get("/api/runners", headers={"X-Runner-Token": token})
        assert listing.status_code == 401
