"""Every route of the queues and vaults plugins that reads a body, sent a corpus of bodies
it cannot use: each answers 4xx in the envelope, and nothing is stored or changed.

The corpus: bytes that are not UTF-8, NUL bytes, bodies nested 100 000 levels deep (and a
little past the plugins' limit), `NaN`, `Infinity` and numbers too large for a float,
wrong types, arrays, strings and `null` instead of objects, an empty body, lone
surrogates, NUL characters in names, and a valid body sent as `text/plain`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from courtyard_vaults import generate_key
from queues_kit import FAST, Backend, enqueue, new_worker, write_config

TASK = "{task}"  # replaced by the id of the task leased to worker w1

# Each body-taking route with a body it would accept.
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/queue/add", {"queue": "inference.high", "timeout": 30, "data": {"prompt": "p"}}),
    (
        "/queue/add-batch",
        {"queue": "inference.high", "timeout": 30, "jobs": [{"timeout": 30, "data": {"n": 1}}]},
    ),
    ("/api/cli/tasks", {"queue": "inference.high", "timeout": 30, "data": {"prompt": "p"}}),
    (
        "/api/cli/configs",
        {
            "name": "fresh",
            "priority": 1,
            "deployment": {
                "git_url": "https://example.invalid/fresh.git",
                "startup_cmd": "python main.py",
                "startup_timeout_secs": 60,
            },
        },
    ),
    ("/worker/register", {"worker_id": "w2", "queue": "inference", "concurrency": 1}),
    ("/worker/dequeue", {"worker_id": "w2", "queue": "inference", "wait": 0}),
    ("/worker/heartbeat", {"worker_id": "w2", "queue": "inference", "concurrency": 2}),
    (f"/worker/tasks/{TASK}/renew", {"worker_id": "w1"}),
    (f"/worker/tasks/{TASK}/complete", {"worker_id": "w1", "result": {"ok": True}}),
    (f"/worker/tasks/{TASK}/fail", {"worker_id": "w1", "error": "boom", "retry": True}),
    (f"/worker/tasks/{TASK}/release", {"worker_id": "w1"}),
    ("/api/vaults", {"name": "fresh", "description": "a new vault"}),
    ("/api/vaults/v/entries", {"key": "NEW_KEY", "value": "new-secret", "is_secret": True}),
]


def _map(value: Any, strings: Callable[[str], Any], numbers: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        return {k: _map(v, strings, numbers) for k, v in value.items()}
    if isinstance(value, list):
        return [_map(v, strings, numbers) for v in value]
    if isinstance(value, str):
        return strings(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return numbers(value)
    return value


def _text(body: Any) -> bytes:
    return json.dumps(body).encode()


def _with_raw(good: dict[str, Any], raw: str) -> bytes:
    """`good` with one more key whose value is the JSON text `raw`, as given."""
    return _text(good)[:-1] + b', "zz": ' + raw.encode() + b"}"


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# name -> (good body -> bytes to send, or None when the variant does not apply; headers)
Variant = Callable[[dict[str, Any]], bytes | None]
CORPUS: dict[str, tuple[Variant, dict[str, str]]] = {
    "not-utf8": (lambda good: b"\xff\xfe\xfd", {}),
    "not-utf8-in-a-string": (lambda good: _text(good).replace(b'"', b'"\xff', 1), {}),
    "utf16": (lambda good: json.dumps(good).encode("utf-16"), {}),
    "nul-byte": (lambda good: b"\x00", {}),
    "nul-bytes-around": (lambda good: b"\x00" + _text(good) + b"\x00", {}),
    "deep-100000": (lambda good: b"[" * 100_000, {}),
    "deep-inside": (lambda good: _with_raw(good, "[" * 100_000), {}),
    "deep-past-the-limit": (lambda good: _with_raw(good, _deep(80)), {}),
    "nan": (lambda good: _with_raw(good, "NaN"), {}),
    "infinity": (lambda good: _with_raw(good, "-Infinity"), {}),
    "1e309": (lambda good: _with_raw(good, "1e309"), {}),
    "digits-past-the-limit": (lambda good: _with_raw(good, "9" * 5000), {}),
    "huge-numbers": (
        lambda good: (
            _text(_map(good, str, lambda n: 10**400))
            if _map(good, str, lambda n: None) != good
            else None
        ),
        {},
    ),
    "wrong-types": (lambda good: _text(_map(good, lambda s: 12345, lambda n: "12")), {}),
    "nul-in-strings": (lambda good: _text(_map(good, lambda s: s + "\x00", lambda n: n)), {}),
    "lone-surrogate": (lambda good: _text(_map(good, lambda s: s + "\ud800", lambda n: n)), {}),
    "array": (lambda good: _text([good]), {}),
    "string": (lambda good: b'"hello"', {}),
    "number": (lambda good: b"42", {}),
    "null": (lambda good: b"null", {}),
    "empty": (lambda good: b"", {}),
    "whitespace": (lambda good: b" \r\n\t ", {}),
    "truncated": (lambda good: _text(good)[:-3], {}),
    "text-plain": (lambda good: _text(good), {"Content-Type": "text/plain"}),
    "text-plain-charset": (lambda good: _text(good), {"Content-Type": "text/plain; charset=utf-8"}),
}


@pytest.fixture
def both(courtyard: Any, backend: Backend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A runtime with the queues plugin (on the backend under test) and the vaults plugin,
    open (no credential), with slow leases so that nothing moves during the test."""
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", generate_key())
    monkeypatch.delenv("RUNQY_API_KEY", raising=False)
    config = write_config(tmp_path / "config")

    async def start() -> Any:
        plugin = {
            "config_files": [str(config)],
            **FAST,
            "lease_seconds": 600,
            "heartbeat_seconds": 600,
            **backend.plugin,
        }
        return await courtyard(
            only_plugins=["queues", "vaults"], plugins={"queues": plugin}, **backend.runtime
        )

    return start


async def _snapshot(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """Everything a body could have changed."""
    seen: dict[str, Any] = {}
    for path in (
        "/api/cli/queues",
        "/api/cli/configs",
        "/api/cli/workers",
        f"/queue/{task_id}",
        "/api/vaults",
        "/api/vaults/v",
    ):
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        seen[path] = answer.json()
    for worker in seen["/api/cli/workers"]["workers"]:
        worker.pop("is_stale")
    for state in ("pending", "active", "scheduled", "retry", "archived", "completed"):
        for queue in ("inference.high", "inference.low"):
            path = f"/api/cli/queues/{queue}/tasks?state={state}&limit=100"
            seen[path] = (await client.get(path)).json()
    return seen


@pytest.mark.parametrize("variant", list(CORPUS))
async def test_bad_bodies_are_refused_and_change_nothing(both: Any, variant: str) -> None:
    rt = await both()
    client = rt.client
    answer = await client.post("/api/vaults", json={"name": "v"})
    assert answer.status_code == 201, answer.text
    answer = await client.post("/api/vaults/v/entries", json={"key": "K", "value": "secret-1"})
    assert answer.status_code == 200, answer.text
    task_id = await enqueue(client, "inference.high")
    worker = new_worker(client, "inference")
    worker.worker_id = "w1"
    assert (await worker.register()).status_code == 200
    assert (await worker.dequeue())["task_id"] == task_id
    before = await _snapshot(client, task_id)

    make, headers = CORPUS[variant]
    tried = 0
    for route, good in ROUTES:
        body = make(good)
        if body is None:
            continue
        tried += 1
        path = route.replace(TASK, task_id)
        answer = await client.post(path, content=body, headers=headers)
        assert 400 <= answer.status_code < 500, (variant, path, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert error["code"] and error["message"], (variant, path)
    assert tried
    assert await _snapshot(client, task_id) == before, variant


async def test_the_good_bodies_are_good(both: Any) -> None:
    """The corpus's bodies are derived from bodies each route accepts: so a refusal above
    is about what the variant broke, not about the route's other rules."""
    rt = await both()
    client = rt.client
    assert (await client.post("/api/vaults", json={"name": "v"})).status_code == 201
    task_id = await enqueue(client, "inference.high")
    worker = new_worker(client, "inference")
    worker.worker_id = "w1"
    assert (await worker.register()).status_code == 200
    assert (await worker.dequeue())["task_id"] == task_id
    for route, good in ROUTES:
        if route.endswith(("/complete", "/fail", "/release")):
            continue  # each ends the lease: renew stands for them
        answer = await client.post(route.replace(TASK, task_id), json=good)
        assert answer.status_code in (200, 201, 204), (route, answer.text)
    for action in ("complete", "fail", "release"):
        good = dict(ROUTES)[f"/worker/tasks/{TASK}/{action}"]
        await enqueue(client, "inference.high")
        leased = (await worker.dequeue())["task_id"]
        answer = await client.post(f"/worker/tasks/{leased}/{action}", json=good)
        assert answer.status_code == 200, (action, answer.text)
