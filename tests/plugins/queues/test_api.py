"""Every endpoint of runqy's queue and CLI API, on every backend."""

from __future__ import annotations

import json

from queues_kit import enqueue, new_worker, task_info, write_config


async def test_add_and_get_a_task_in_the_seed_shapes(queues):
    rt = await queues()
    added = await rt.client.post(
        "/queue/add",
        json={"queue": "inference.high", "timeout": 300, "data": {"prompt": "Hello world"}},
    )
    assert added.status_code == 200
    info = added.json()["info"]
    assert list(info)[:3] == ["id", "queue", "state"]
    assert info["queue"] == "inference.high" and info["state"] == "pending"
    assert info["type"] == "inference" and info["timeout"] == 300
    got = await task_info(rt.client, info["id"])
    assert got["state"] == "pending" and got["result"] is None
    assert json.loads(got["payload"]) == {"prompt": "Hello world"}

    worker = new_worker(rt.client, "inference")
    task = await worker.dequeue()
    assert task["task_id"] == info["id"] and task["payload"] == {"prompt": "Hello world"}
    done = await worker.call(info["id"], "complete", result={"image": "abc"})
    assert done.status_code == 200 and done.json() == {"state": "completed"}
    got = await task_info(rt.client, info["id"])
    assert got["state"] == "completed" and json.loads(got["result"]) == {"image": "abc"}
    assert got["completed_at"].endswith("Z")


async def test_bare_and_flat_forms_and_their_errors(queues):
    rt = await queues()
    # A bare name is <name>.default; a flat body's other keys are the payload.
    flat = await rt.client.post("/queue/add", json={"queue": "simple", "msg": "hi", "n": 2})
    assert flat.status_code == 200
    info = flat.json()["info"]
    assert info["queue"] == "simple.default"
    assert json.loads((await task_info(rt.client, info["id"]))["payload"]) == {"msg": "hi", "n": 2}

    missing = await rt.client.post("/queue/add", json={"queue": "nope", "data": {}})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "QUEUE_NOT_FOUND"
    assert "nope.default" in missing.json()["error"]["message"]
    # inference has sub-queues high and low: no inference.default.
    assert (
        await rt.client.post("/queue/add", json={"queue": "inference", "data": {}})
    ).status_code == 404

    for bad in (b"{not json", b"[1, 2]", json.dumps({"data": {}}).encode()):
        answer = await rt.client.post("/queue/add", content=bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    negative = await rt.client.post(
        "/queue/add", json={"queue": "simple", "timeout": -1, "data": {}}
    )
    assert negative.status_code == 400
    assert "timeout" in negative.json()["error"]["message"]
    unknown = await rt.client.post("/queue/add", json={"queue": "simple", "data": {}, "color": 1})
    assert unknown.status_code == 400 and "color" in unknown.json()["error"]["message"]

    gone = await rt.client.get("/queue/00000000-0000-4000-8000-000000000000")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "TASK_NOT_FOUND"


async def test_input_fields_are_checked_and_defaulted(queues):
    rt = await queues()
    ok = await rt.client.post("/queue/add", json={"queue": "typed", "data": {"prompt": "p"}})
    assert ok.status_code == 200
    payload = json.loads((await task_info(rt.client, ok.json()["info"]["id"]))["payload"])
    assert payload == {"prompt": "p", "width": 512}
    whole = await rt.client.post(
        "/queue/add", json={"queue": "typed", "data": {"prompt": "p", "width": 64.0}}
    )
    task = await task_info(rt.client, whole.json()["info"]["id"])
    assert json.loads(task["payload"])["width"] == 64

    for data, message in (
        ({}, "prompt is required"),
        ({"prompt": 3}, "field 'prompt' has type int, expected one of: string"),
        ({"prompt": "p", "width": 1.5}, "field 'width' has type float"),
        ([1], "data must be a JSON object"),
    ):
        answer = await rt.client.post("/queue/add", json={"queue": "typed", "data": data})
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "INVALID_PAYLOAD"
        assert message in answer.json()["error"]["message"]


async def test_add_batch(queues):
    rt = await queues(max_batch=5)
    answer = await rt.client.post(
        "/queue/add-batch",
        json={
            "queue": "typed",
            "timeout": 60,
            "jobs": [
                {"timeout": 10, "data": {"prompt": "a"}},
                {"data": {"prompt": "b"}},
                {"data": {"width": 3}},
                {"prompt": "raw job"},
                {"data": {"prompt": "c"}, "bogus": True},
            ],
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["enqueued"] == 3 and body["failed"] == 2 and len(body["task_ids"]) == 3
    assert any("prompt is required" in e for e in body["errors"])
    assert any("job 4" in e and "bogus" in e for e in body["errors"])
    timeouts = [(await task_info(rt.client, i))["timeout"] for i in body["task_ids"]]
    assert timeouts == [10, 60, 60]
    raw = await task_info(rt.client, body["task_ids"][2])
    assert json.loads(raw["payload"]) == {"prompt": "raw job", "width": 512}

    for bad, status, code in (
        ({"queue": "typed", "jobs": []}, 400, "VALIDATION_ERROR"),
        ({"queue": "typed", "jobs": [{"data": {"prompt": "x"}}] * 6}, 400, "BATCH_TOO_LARGE"),
        ({"queue": "nope", "jobs": [{"data": {}}]}, 404, "QUEUE_NOT_FOUND"),
        ({"queue": "typed"}, 400, "VALIDATION_ERROR"),
    ):
        refused = await rt.client.post("/queue/add-batch", json=bad)
        assert refused.status_code == status, refused.text
        assert refused.json()["error"]["code"] == code


async def test_status_long_poll_waits_for_the_result(queues):
    rt = await queues()
    task_id = await enqueue(rt.client, "simple")
    worker = new_worker(rt.client, "simple")
    import asyncio

    waiting = asyncio.create_task(rt.client.get(f"/queue/{task_id}?wait=true"))
    task = await worker.dequeue()
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await worker.call(task["task_id"], "complete", result=[1, 2])
    answer = await asyncio.wait_for(waiting, 5)
    assert answer.json()["info"]["state"] == "completed"
    assert json.loads(answer.json()["info"]["result"]) == [1, 2]


async def test_cli_queues_pause_and_unpause(queues):
    rt = await queues()
    await enqueue(rt.client, "inference.low")
    listed = (await rt.client.get("/api/cli/queues")).json()["queues"]
    names = [q["queue"] for q in listed]
    assert names == sorted(names)
    assert {"inference.high", "inference.low", "simple.default", "strict.high"} <= set(names)
    low = next(q for q in listed if q["queue"] == "inference.low")
    assert low["pending"] == 1 and low["size"] == 1 and low["priority"] == 3
    assert low["paused"] is False

    detail = await rt.client.get("/api/cli/queues/simple")
    assert detail.status_code == 200 and detail.json()["queue"] == "simple.default"
    assert (await rt.client.get("/api/cli/queues/nope")).status_code == 404

    paused = await rt.client.post("/api/cli/queues/inference.low/pause")
    assert paused.json() == {"message": "queue paused", "queue": "inference.low"}
    assert (await rt.client.get("/api/cli/queues/inference.low")).json()["paused"] is True
    worker = new_worker(rt.client, "inference")
    assert await worker.dequeue() is None
    unpaused = await rt.client.post("/api/cli/queues/inference.low/unpause")
    assert unpaused.json() == {"message": "queue unpaused", "queue": "inference.low"}
    assert await worker.dequeue() is not None
    assert (await rt.client.post("/api/cli/queues/nope/pause")).status_code == 404


async def test_cli_tasks(queues):
    rt = await queues()
    created = await rt.client.post(
        "/api/cli/tasks", json={"queue": "simple", "data": {"i": 0}, "timeout": 90}
    )
    assert created.status_code == 200
    ids = [created.json()["info"]["id"]]
    for i in range(1, 5):
        ids.append(await enqueue(rt.client, "simple", {"i": i}))

    first = (await rt.client.get("/api/cli/queues/simple/tasks?limit=2")).json()
    assert [t["id"] for t in first["tasks"]] == ids[:2] and first["next_cursor"]
    second = (
        await rt.client.get(f"/api/cli/queues/simple/tasks?limit=2&cursor={first['next_cursor']}")
    ).json()
    third = (
        await rt.client.get(f"/api/cli/queues/simple/tasks?limit=2&cursor={second['next_cursor']}")
    ).json()
    assert [t["id"] for t in second["tasks"] + third["tasks"]] == ids[2:]
    assert third["next_cursor"] is None
    item = first["tasks"][0]
    assert item["state"] == "pending" and item["timeout"] == "1m30s"
    assert json.loads(item["payload"]) == {"i": 0} and item["retried"] == 0

    for query, code in (
        ("state=bogus", "INVALID_STATE"),
        ("limit=0", "VALIDATION_ERROR"),
        ("limit=x", "VALIDATION_ERROR"),
        ("cursor=zz", "VALIDATION_ERROR"),
    ):
        refused = await rt.client.get(f"/api/cli/queues/simple/tasks?{query}")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == code

    detail = await rt.client.get(f"/api/cli/queues/simple.default/tasks/{ids[0]}")
    assert detail.status_code == 200 and detail.json()["id"] == ids[0]
    assert (await rt.client.get(f"/api/cli/queues/typed/tasks/{ids[0]}")).status_code == 404

    # Cancel: a pending task is archived with the error "cancelled".
    cancelled = await rt.client.delete(f"/api/cli/tasks/{ids[0]}")
    assert cancelled.json() == {"message": "task cancelled", "task_id": ids[0], "state": "archived"}
    info = await task_info(rt.client, ids[0])
    assert info["state"] == "archived" and info["last_err"] == "cancelled"
    again = await rt.client.delete(f"/api/cli/tasks/{ids[0]}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "TASK_FINISHED"
    archived = (await rt.client.get("/api/cli/queues/simple/tasks?state=archived")).json()
    assert [t["id"] for t in archived["tasks"]] == [ids[0]]
    assert (await rt.client.delete("/api/cli/tasks/nope")).status_code == 404

    # Delete: gone for good; an active task must be cancelled first.
    deleted = await rt.client.delete(f"/api/cli/queues/simple/tasks/{ids[1]}")
    assert deleted.json() == {"message": "task deleted", "task_id": ids[1]}
    assert (await rt.client.get(f"/queue/{ids[1]}")).status_code == 404
    worker = new_worker(rt.client, "simple")
    running = await worker.dequeue()
    refused = await rt.client.delete(f"/api/cli/queues/simple/tasks/{running['task_id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "TASK_ACTIVE"
    wrong_queue = await rt.client.delete(f"/api/cli/queues/typed/tasks/{ids[3]}")
    assert wrong_queue.status_code == 404
    active = (await rt.client.get("/api/cli/queues/simple/tasks?state=active")).json()
    assert [t["id"] for t in active["tasks"]] == [running["task_id"]]


async def test_cli_workers(queues):
    rt = await queues()
    worker = new_worker(rt.client, "inference")
    assert (await worker.register()).status_code == 200
    beat = await rt.client.post(
        "/worker/heartbeat",
        json={"worker_id": worker.worker_id, "status": "busy", "active_tasks": ["t1"]},
    )
    assert beat.status_code == 200 and beat.json()["worker_id"] == worker.worker_id
    listed = (await rt.client.get("/api/cli/workers")).json()
    assert listed["count"] == 1
    item = listed["workers"][0]
    assert item["worker_id"] == worker.worker_id and item["queues"] == "inference"
    assert item["status"] == "busy" and item["active_tasks"] == ["t1"]
    assert item["is_stale"] is False and item["last_beat"] >= item["started_at"] > 0
    detail = await rt.client.get(f"/api/cli/workers/{worker.worker_id}")
    assert detail.json() == item
    missing = await rt.client.get("/api/cli/workers/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "WORKER_NOT_FOUND"


async def test_cli_configs(queues, tmp_path):
    rt = await queues()
    listed = (await rt.client.get("/api/cli/configs")).json()
    assert listed["count"] == len(listed["queues"]) == 6
    row = next(q for q in listed["queues"] if q["name"] == "simple.default")
    assert row == {
        "name": "simple.default",
        "priority": 3,
        "mode": "one_shot",
        "git_url": "https://example.invalid/simple.git",
        "source": row["source"],
    }
    assert row["source"].endswith("queues.yaml")
    full = next(c for c in listed["configs"] if c["name"] == "simple")
    assert full["deployment"]["limits"] == {"max_retry": 2}

    body = {
        "name": "extra",
        "priority": 4,
        "deployment": {"git_url": "https://example.invalid/x.git", "startup_cmd": "python x.py"},
    }
    created = await rt.client.post("/api/cli/configs", json=body)
    assert created.status_code == 201
    assert created.json()["message"] == "Queue created successfully"
    assert created.json()["queue"]["source"] == "api"
    assert await enqueue(rt.client, "extra")
    again = await rt.client.post("/api/cli/configs", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFIG_CONFLICT"
    forced = await rt.client.post("/api/cli/configs?force=true", json={**body, "priority": 9})
    assert forced.status_code == 201 and forced.json()["message"] == "Queue updated successfully"
    assert (await rt.client.get("/api/cli/queues/extra")).json()["priority"] == 9

    bad = await rt.client.post("/api/cli/configs", json={"name": "bad", "priority": 1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_CONFIG"
    assert "queues.bad.deployment: required" in bad.json()["error"]["message"]
    dotted = await rt.client.post("/api/cli/configs", json={**body, "name": "a.b"})
    assert dotted.status_code == 400
    file_owned = await rt.client.post(
        "/api/cli/configs?force=true", json={**body, "name": "simple"}
    )
    assert file_owned.status_code == 409 and "queues.yaml" in file_owned.json()["error"]["message"]
    assert (await rt.client.delete("/api/cli/configs/simple")).status_code == 409

    deleted = await rt.client.delete("/api/cli/configs/extra")
    assert deleted.json() == {"message": "queue configuration deleted", "name": "extra"}
    assert (await rt.client.delete("/api/cli/configs/extra")).status_code == 404
    assert (
        await rt.client.post("/queue/add", json={"queue": "extra", "data": {}})
    ).status_code == 404
    # Its task is still there and listed among the queues.
    names = [q["queue"] for q in (await rt.client.get("/api/cli/queues")).json()["queues"]]
    assert "extra.default" in names


async def test_reload_reads_the_files_again(queues, tmp_path):
    folder = tmp_path / "more"
    path = write_config(
        folder,
        "queues:\n  one:\n    priority: 1\n    deployment: {git_url: g, startup_cmd: c}\n",
        "one.yaml",
    )
    rt = await queues(config_files=[str(folder)])
    assert (await rt.client.get("/api/cli/queues/one")).status_code == 200

    path.write_text(
        "queues:\n  two:\n    priority: 2\n    deployment: {git_url: g, startup_cmd: c}\n"
    )
    write_config(folder, "queues:\n  three:\n    priority: 0\n", "broken.yml")
    report = (await rt.client.post("/api/cli/configs/reload")).json()
    assert report["reloaded"] == ["two"] and report["removed"] == ["one"]
    assert len(report["errors"]) == 1
    assert "broken.yml" in report["errors"][0]
    assert "queues.three.priority" in report["errors"][0]
    assert isinstance(report["timestamp"], int)
    assert (await rt.client.get("/api/cli/queues/two")).status_code == 200
    assert (await rt.client.get("/api/cli/queues/one")).status_code == 404


async def test_tasks_and_api_configs_survive_a_restart(queues):
    body = {
        "name": "kept",
        "sub_queues": [{"name": "a", "priority": 2}],
        "deployment": {"git_url": "https://example.invalid/k.git", "startup_cmd": "python k.py"},
    }
    first = await queues()
    assert (await first.client.post("/api/cli/configs", json=body)).status_code == 201
    task_id = await enqueue(first.client, "kept.a", {"survives": True})
    done = await enqueue(first.client, "simple")
    worker = new_worker(first.client, "simple")
    await worker.dequeue()
    await worker.call(done, "complete", result={"r": 1})
    await first.dispatcher.close()

    second = await queues()
    assert (await task_info(second.client, task_id))["state"] == "pending"
    assert json.loads((await task_info(second.client, done))["result"]) == {"r": 1}
    configs = (await second.client.get("/api/cli/configs")).json()["configs"]
    assert next(c for c in configs if c["name"] == "kept")["source"] == "api"
    again = new_worker(second.client, "kept")
    assert (await again.dequeue())["task_id"] == task_id


async def test_a_reload_ends_long_polls_and_the_new_generation_serves(queues):
    import asyncio

    rt = await queues()
    worker = new_worker(rt.client, "simple")
    waiting = asyncio.create_task(worker.dequeue(wait=20))
    await asyncio.sleep(0.2)
    reloaded = await rt.reload()
    assert reloaded.status_code == 200 and reloaded.json()["ok"] is True
    assert await asyncio.wait_for(waiting, 10) is None  # ended, not held for 20 s
    task_id = await enqueue(rt.client, "simple")
    assert (await worker.dequeue(wait=5))["task_id"] == task_id
