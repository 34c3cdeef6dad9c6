"""A dependency that goes down answers 503 (507 for a full disk) and heals, without a
traceback per request, and readiness says so. Real servers are stopped and restarted;
the full disk is a small tmpfs mounted by the test (as root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from courtyard.outages import DATABASE, REDIS, classify
from redis.asyncio import Redis
from servers import create_database, postgres_server, redis_server


async def eventually(check, timeout: float = 15.0) -> None:
    """Wait until the coroutine function `check` returns true."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not healed in time"
        await asyncio.sleep(0.1)


def no_traceback_per_request(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len([r for r in caplog.records if r.name == "courtyard.outages"]) <= 3


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_a_database_outage_answers_503_and_heals(courtyard, caplog):
    caplog.set_level(logging.INFO)
    with postgres_server() as postgres:
        rt = await courtyard(entry_points=False, database_url=create_database(postgres, "out"))
        assert (await rt.client.get("/api/keys/")).status_code == 200
        postgres.stop()
        answers = []
        for _ in range(15):  # across the second in which auth still trusts what it read
            answers.append(await rt.client.get("/api/keys/"))
            await asyncio.sleep(0.1)
        codes = {a.json()["error"]["code"] for a in answers}
        assert {a.status_code for a in answers} == {503}
        assert codes <= {"DATABASE_UNAVAILABLE", "AUTH_UNAVAILABLE"}
        assert "AUTH_UNAVAILABLE" in codes  # not 401: this open server asks for no key
        assert all(a.headers["Retry-After"] == "5" for a in answers)
        ready = await rt.client.get("/api/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert set(ready.json()["unavailable"]) == {"database"}, ready.json()
        no_traceback_per_request(caplog)

        postgres.start()

        async def healed() -> bool:
            keys = await rt.client.get("/api/keys/")
            ready = await rt.client.get("/api/health/ready")
            return keys.status_code == ready.status_code == 200

        await eventually(healed)
        await rt.dispatcher.close()


async def test_a_redis_outage_makes_the_instance_unready_and_heals(courtyard, tmp_path):
    with redis_server(tmp_path / "redis") as redis:
        rt = await courtyard(entry_points=False, event_bus="redis", redis_url=redis.url)
        assert (await rt.client.get("/api/health/ready")).status_code == 200
        redis.stop()
        await asyncio.sleep(1.1)  # past the cached answer
        ready = await rt.client.get("/api/health/ready")
        assert ready.status_code == 503
        assert set(ready.json()["unavailable"]) == {"redis"}
        redis.start()

        async def healed() -> bool:
            return (await rt.client.get("/api/health/ready")).status_code == 200

        await eventually(healed)
        await rt.dispatcher.close()


async def test_redis_and_postgresql_connection_failures_are_recognised(tmp_path):
    """The exceptions the real clients raise against a stopped server."""
    from sqlalchemy.ext.asyncio import create_async_engine

    with redis_server(tmp_path / "redis") as redis:
        url = redis.url
    client = Redis.from_url(url, socket_connect_timeout=1)
    with pytest.raises(Exception) as failed:
        await client.ping()
    await client.aclose()
    assert classify(failed.value) == REDIS

    with postgres_server() as postgres:
        database = postgres.url()
    engine = create_async_engine(database.replace("postgresql://", "postgresql+asyncpg://"))
    with pytest.raises(Exception) as failed:
        async with engine.connect():
            pass
    await engine.dispose()
    assert classify(failed.value) == DATABASE
    assert classify(ValueError("a bug")) is None  # anything else stays a 500


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs (skipped unless the test may mount one, as root can)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_full_disk_answers_507_and_heals(courtyard, small_disk, caplog):
    rt = await courtyard(entry_points=False, data_dir=small_disk / "data")
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 65536)
    created = [
        await rt.client.post("/api/keys/", json={"name": f"k{n}", "roles": ["admin"]})
        for n in range(3)
    ]
    assert {c.status_code for c in created} == {507}, [c.text for c in created]
    assert created[0].json()["error"]["code"] == "INSUFFICIENT_STORAGE"
    ready = await rt.client.get("/api/health/ready")
    assert ready.status_code == 503 and set(ready.json()["unavailable"]) == {"disk"}
    no_traceback_per_request(caplog)
    filler.unlink()
    await asyncio.sleep(1.1)  # past readiness's cached answer
    assert (await rt.client.get("/api/health/ready")).status_code == 200
    made = await rt.client.post("/api/keys/", json={"name": "after", "roles": ["admin"]})
    assert made.status_code == 201, made.text
    await rt.dispatcher.close()
