"""runqy's own Python client (`runqy-python`) against a real `courtyard serve`."""

from __future__ import annotations

import httpx
import pytest
from queues_kit import FAST, write_config
from runqy_python import RunqyClient
from runqy_python.client import AuthenticationError, RunqyError, TaskNotFoundError

KEY = "runqy-client-key"


@pytest.fixture
def server(courtyard_server, tmp_path):
    config = write_config(tmp_path / "config")
    return courtyard_server(
        only_plugins=["queues"],
        plugins={"queues": {"config_files": [str(config)], **FAST}},
        env={"RUNQY_API_KEY": KEY},
    )


def test_enqueue_batch_and_get_task(server):
    client = RunqyClient(server.url, api_key=KEY)
    task = client.enqueue("inference.high", {"prompt": "hello"}, timeout=120)
    assert task.queue == "inference.high" and task.state == "pending" and task.task_id

    batch = client.enqueue_batch("simple", [{"i": 1}, {"i": 2}, {"i": 3}])
    assert batch.enqueued == 3 and batch.failed == 0 and len(batch.task_ids) == 3

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        body = {"worker_id": "w1", "queue": "inference"}
        leased = http.post("/worker/dequeue", json=body).json()["task"]
        assert leased["task_id"] == task.task_id and leased["timeout"] == 120
        http.post(
            f"/worker/tasks/{task.task_id}/complete",
            json={"worker_id": "w1", "result": {"image": "done"}},
        ).raise_for_status()

    got = client.get_task(task.task_id)
    assert got.state == "completed"
    assert got.result == {"image": "done"}
    assert got.payload == {"prompt": "hello"}
    pending = client.get_task(batch.task_ids[0])
    assert pending.state == "pending" and pending.payload == {"i": 1} and pending.result is None

    with pytest.raises(TaskNotFoundError):
        client.get_task("00000000-0000-4000-8000-000000000000")
    with pytest.raises(TaskNotFoundError):  # runqy's client maps every 404 so
        client.enqueue("no-such-queue", {})
    with pytest.raises(AuthenticationError):
        RunqyClient(server.url, api_key="wrong").enqueue("simple", {})
    with pytest.raises(RunqyError):
        client.enqueue_batch("simple", [])
