"""The Redis backend across a Redis crash (AOF on) and across runtime instances."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from courtyard.testing import free_port
from queues_kit import FAST, enqueue, new_worker, task_info, write_config
from servers import REDIS_SERVER, available, ping, redis_server

pytestmark = pytest.mark.skipif(
    not available(), reason="redis-server is not installed (Debian package redis-server)"
)


class AofRedis:
    """A redis-server of this test's own, appending every write to its AOF at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.folder / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no chance to write anything more."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path / "aof")
    server.folder.mkdir()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


async def test_nothing_is_lost_when_redis_crashes_and_comes_back(courtyard, tmp_path, aof_redis):
    config = write_config(tmp_path / "config")
    rt = await courtyard(
        only_plugins=["queues"],
        plugins={
            "queues": {
                "backend": "redis",
                "redis_url": aof_redis.url,
                "config_files": [str(config)],
                **FAST,
                "lease_seconds": 60,
            }
        },
    )
    pending = [await enqueue(rt.client, "simple", {"i": i}) for i in range(5)]
    scheduled = await enqueue(rt.client, "inference.low", process_in=3600)
    worker = new_worker(rt.client, "simple")
    active = (await worker.dequeue())["task_id"]
    done = (await worker.dequeue())["task_id"]
    await worker.call(done, "complete", result={"kept": True})
    await rt.client.post("/api/cli/queues/strict.high/pause")
    before = (await rt.client.get("/api/cli/queues/simple")).json()

    aof_redis.kill()
    aof_redis.start()  # same port, same folder: it replays its AOF

    async def answers() -> bool:
        return (await rt.client.get("/api/cli/queues/simple")).status_code == 200

    deadline = time.monotonic() + 10
    while not await answers():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await rt.client.get("/api/cli/queues/simple")).json() == before
    assert (await task_info(rt.client, active))["state"] == "active"
    assert (await task_info(rt.client, scheduled))["state"] == "scheduled"
    finished = await task_info(rt.client, done)
    assert finished["state"] == "completed" and finished["result"] == '{"kept":true}'
    assert (await rt.client.get("/api/cli/queues/strict.high")).json()["paused"] is True
    # The worker goes on: its lease holds, and the rest of the queue is there, in order.
    assert (await worker.call(active, "complete", result=1)).status_code == 200
    rest = [(await worker.dequeue())["task_id"] for _ in range(3)]
    assert rest == pending[2:]
    assert await worker.dequeue() is None


async def test_a_redis_that_lost_its_data_is_noticed_and_the_files_written_again(
    courtyard, tmp_path, caplog
):
    """Without persistence (what the session's Redis and this one run with), a restart
    loses everything: said at start, noticed within a sweep, the file queues restored."""
    config = write_config(tmp_path / "config")
    with redis_server(tmp_path / "volatile") as redis:
        rt = await courtyard(
            only_plugins=["queues"],
            plugins={
                "queues": {
                    "backend": "redis",
                    "redis_url": redis.url,
                    "config_files": [str(config)],
                    **FAST,
                }
            },
        )
        assert "persists nothing (appendonly no, no save points)" in caplog.text
        lost = await enqueue(rt.client, "simple")
        redis.stop()
        down = await rt.client.post("/queue/add", json={"queue": "simple", "data": {}})
        assert down.status_code == 503, down.text  # not a 500
        assert down.json()["error"]["code"] == "REDIS_UNAVAILABLE"
        redis.start()  # empty: nothing was saved

        deadline = time.monotonic() + 10
        while "the queues' Redis lost its data" not in caplog.text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a few more sweeps: the loss is reported once
        assert caplog.text.count("the queues' Redis lost its data") == 1
        assert (await rt.client.get(f"/queue/{lost}")).status_code == 404
        # The file-defined queue is there again for workers (no QUEUE_NOT_FOUND).
        worker = new_worker(rt.client, "simple")
        task_id = await enqueue(rt.client, "simple")
        assert (await worker.dequeue())["task_id"] == task_id
        await rt.dispatcher.close()


async def test_instances_share_queues_and_wake_each_other(courtyard, tmp_path, redis):
    config = write_config(tmp_path / "config")
    settings = {
        "backend": "redis",
        "redis_url": redis.url,
        "redis_prefix": f"shared:{uuid.uuid4().hex}",
        "config_files": [str(config)],
        **FAST,
        "poll_seconds": 10,  # only the relayed enqueue can wake the other instance fast
        "lease_seconds": 30,  # no lease expires (and its task comes back) mid-test
    }
    first = await courtyard(only_plugins=["queues"], plugins={"queues": settings})
    second = await courtyard(only_plugins=["queues"], plugins={"queues": settings})
    worker = new_worker(second.client, "simple")
    waiting = asyncio.create_task(worker.dequeue(wait=20))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task_id = await enqueue(first.client, "simple")
    assert (await asyncio.wait_for(waiting, 20))["task_id"] == task_id
    assert time.monotonic() - started < 3
    assert (await task_info(first.client, task_id))["state"] == "active"

    # Dequeuers on both instances at once never share a task.
    answer = await first.client.post(
        "/queue/add-batch",
        json={"queue": "simple", "jobs": [{"data": {"i": i}} for i in range(80)]},
    )
    expected = set(answer.json()["task_ids"])

    async def drain(client) -> list[str]:
        mine = new_worker(client, "simple")
        got = []
        while (task := await mine.dequeue()) is not None:
            got.append(task["task_id"])
        return got

    batches = await asyncio.gather(*(drain(rt.client) for rt in (first, second) * 4))
    taken = [task_id for batch in batches for task_id in batch]
    assert len(taken) == len(set(taken)) and set(taken) == expected
