"""Bounded inputs, listings that survive any stored row, empty answers without a type,
masked configuration secrets, path parameters no row can have, and the routes that
programs may call without an `Origin`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid

import httpx
import pytest
from courtyard.testing import ORIGIN
from courtyard_queues.config import load_files
from courtyard_queues.formats import mask
from courtyard_queues.limits import MAX_RETRY, MAX_SECONDS
from courtyard_queues.store import NewTask
from courtyard_sdk import ApiError
from courtyard_sdk.origin import allows_without_origin
from courtyard_vaults import generate_key
from courtyard_vaults.validation import mask as vault_mask
from queues_kit import FAST, enqueue, task_info, write_config

# Task options out of bounds: each must be refused before anything is stored.
BAD_OPTIONS = [
    {"timeout": 1e300},
    {"timeout": MAX_SECONDS + 1},
    {"timeout": -1},
    {"timeout": 10**400},
    {"process_in": 1e300},
    {"process_in": MAX_SECONDS + 1},
    {"process_at": 1e300},
    {"process_at": -1},
    {"process_at": "0001-01-01T00:00:00+01:00"},
    {"process_at": "9999-12-31T23:59:59Z"},  # more than 365 days ahead
    {"unique_key": "k", "unique_ttl": 1e300},
    {"unique_key": "k", "unique_ttl": 0},
    {"max_retry": MAX_RETRY + 1},
    {"max_retry": 10**12},
    {"retention": 1e300},
    {"type": "a\x00b"},
    {"unique_key": "a\x00b"},
]
# Raw bodies Python's json would take as floats out of any range.
RAW_BAD = [
    b'{"queue": "simple", "timeout": 1e309, "data": {}}',
    b'{"queue": "simple", "timeout": Infinity, "data": {}}',
    b'{"queue": "simple", "timeout": NaN, "data": {}}',
    b'{"queue": "simple", "process_in": 1e309, "data": {}}',
    b'{"queue": "simple", "data": {"x": 1e309}}',
    b'{"queue": "simple", "data": {"x": NaN}}',
    b'{"queue": "simple", "timeout": 1e309}',  # runqy's flat form
]


async def _stored(client: httpx.AsyncClient, queue: str = "simple.default") -> int:
    stats = (await client.get(f"/api/cli/queues/{queue}")).json()
    return int(stats["size"] + stats["completed"])


async def test_task_options_are_bounded_before_anything_is_stored(queues):
    rt = await queues()
    for route in ("/queue/add", "/api/cli/tasks"):
        for options in BAD_OPTIONS:
            answer = await rt.client.post(route, json={"queue": "simple", "data": {}, **options})
            assert answer.status_code == 400, (route, options, answer.text)
            assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
        for raw in RAW_BAD:
            answer = await rt.client.post(route, content=raw)
            assert answer.status_code == 400, (route, raw, answer.text)
            assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    batch = await rt.client.post(
        "/queue/add-batch", json={"queue": "simple", "timeout": 1e300, "jobs": [{"n": 1}]}
    )
    assert batch.status_code == 400
    jobs = [{"data": {}, **options} for options in BAD_OPTIONS]
    batch = await rt.client.post("/queue/add-batch", json={"queue": "simple", "jobs": jobs})
    assert batch.status_code == 200, batch.text
    assert batch.json()["enqueued"] == 0 and batch.json()["failed"] == len(BAD_OPTIONS)
    assert await _stored(rt.client) == 0

    # The bounds themselves are accepted, and shown as they are.
    edge = {"timeout": MAX_SECONDS, "max_retry": MAX_RETRY, "retention": MAX_SECONDS}
    task_id = await enqueue(rt.client, "simple", {}, process_in=MAX_SECONDS, **edge)
    info = await task_info(rt.client, task_id)
    assert info["timeout"] == MAX_SECONDS and info["state"] == "scheduled"
    assert info["next_process_at"].endswith("Z")
    listed = await rt.client.get("/api/cli/queues/simple/tasks?state=scheduled")
    assert listed.status_code == 200 and listed.json()["tasks"][0]["timeout"] == "8760h0m0s"


async def test_other_plugins_cannot_store_unbounded_options_either(queues):
    rt = await queues()
    service = rt.dispatcher.current.record("queues").service
    for options in (
        {"timeout": math.inf},
        {"timeout": math.nan},
        {"process_in": 1e300},
        {"process_at": math.inf},
        {"unique_ttl": math.inf, "unique_key": "k"},
        {"max_retry": 10**6},
    ):
        with pytest.raises(ApiError) as raised:
            await service.enqueue("simple", {}, **options)
        assert raised.value.status == 400, options
    deep: list = []
    for _ in range(100):
        deep = [deep]
    for payload in ({"x": math.nan}, [math.inf], deep, {"s": "\ud800"}):
        with pytest.raises(ApiError) as raised:
            await service.enqueue("simple", payload)
        assert raised.value.status == 400, payload
    assert await _stored(rt.client) == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_a_stored_row_out_of_bounds_does_not_break_listings(queues):
    """Rows written before the bounds existed (here, straight into the store) still list."""
    rt = await queues()
    store = rt.dispatcher.current.record("queues").service._service().store
    ids = [str(uuid.uuid4()) for _ in range(3)]
    await store.enqueue(
        [
            NewTask(ids[0], "simple.default", "simple", {}, timeout=math.inf, process_at=1e300),
            NewTask(ids[1], "simple.default", "simple", {}, timeout=1e300),
            NewTask(ids[2], "simple.default", "simple", {}, process_at=-1e300),
        ]
    )
    for state in ("scheduled", "pending"):
        listed = await rt.client.get(f"/api/cli/queues/simple/tasks?state={state}")
        assert listed.status_code == 200, listed.text
    for task_id in ids:
        answer = await rt.client.get(f"/queue/{task_id}")
        assert answer.status_code == 200, answer.text
        json.loads(answer.text)  # strict JSON: no Infinity
        assert (await rt.client.get(f"/api/cli/queues/simple/tasks/{task_id}")).status_code == 200
    assert (await rt.client.get("/api/cli/queues")).status_code == 200
    assert (await rt.client.get("/queues/")).status_code == 200


CONFIG_BODY = {
    "name": "bounded",
    "priority": 1,
    "deployment": {"git_url": "https://example.invalid/b.git", "startup_cmd": "python main.py"},
}


def _with(path: str, value: object) -> dict:
    body = json.loads(json.dumps(CONFIG_BODY))
    target = body
    *parents, last = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return body


async def test_configuration_numbers_are_bounded(queues, tmp_path):
    rt = await queues()
    for path, value in (
        ("priority", 10**30),
        ("priority", 0),
        ("sub_queues", [{"name": "a", "priority": 1001}]),
        ("deployment.startup_timeout_secs", 10**12),
        ("deployment.limits.max_retry", 10**6),
        ("deployment.limits.active_timeout", 1e300),
        ("deployment.limits.ttl_completed", "99999999h"),
        ("deployment.limits.ttl_archived", "1" * 400 + "s"),
        ("deployment.limits.pending_timeout", -5),
        ("deployment.git_url", "https://example.invalid/\x00"),
        ("deployment.vaults", ["not a vault name"]),
        ("description", "a\x00b"),
    ):
        answer = await rt.client.post("/api/cli/configs", json=_with(path, value))
        assert answer.status_code == 400, (path, value, answer.text)
        assert answer.json()["error"]["code"] in ("INVALID_CONFIG", "VALIDATION_ERROR")
    for raw in (b'{"name": "bounded", "priority": 1e309}', b'{"name": "b", "priority": NaN}'):
        assert (await rt.client.post("/api/cli/configs", content=raw)).status_code == 400
    names = [c["name"] for c in (await rt.client.get("/api/cli/configs")).json()["configs"]]
    assert "bounded" not in names and "b" not in names


CONFIG_YAML = """
queues:
  bounded:
    priority: {priority}
    deployment:
      git_url: https://example.invalid/b.git
      startup_cmd: python main.py
      limits: {{active_timeout: {timeout}}}
"""


@pytest.mark.parametrize(
    ("priority", "timeout", "message"),
    [
        ("1", ".inf", "finite"),
        ("1", ".nan", "finite"),
        (".inf", "0", "priority"),
        ("1000000000000000000000", "0", "priority"),
        ("1", "100000000000", "active_timeout"),
    ],
)
def test_configuration_files_are_bounded_too(tmp_path, priority, timeout, message):
    path = write_config(tmp_path, CONFIG_YAML.format(priority=priority, timeout=timeout))
    files = load_files([path])
    assert not files.queues and len(files.errors) == 1
    assert message in files.errors[0]


def test_a_yaml_error_does_not_quote_the_line(tmp_path):
    """PyYAML quotes the offending line; the line may hold a token, and the message goes
    to the log and the reload's answer."""
    path = write_config(tmp_path, "queues:\n  a:\n    git_token: ghp_SECRET: [\n")
    files = load_files([path])
    assert len(files.errors) == 1 and "line" in files.errors[0]
    assert "ghp_SECRET" not in files.errors[0]


async def test_an_empty_dequeue_answers_204_without_a_body_or_a_type(queues):
    rt = await queues()
    answer = await rt.client.post(
        "/worker/dequeue", json={"worker_id": "w", "queue": "simple", "wait": 0}
    )
    assert answer.status_code == 204
    assert answer.content == b""
    assert "content-type" not in answer.headers
    assert "content-length" not in answer.headers  # RFC 9110: never on a 204


SECRET_CONFIG = """
queues:
  private:
    priority: 1
    deployment:
      git_url: https://deploy:glpat-URLSECRET99@git.example.invalid/private.git
      git_token: ghp_TOKENSECRET1234
      startup_cmd: python main.py
      db_password: PASSWORDSECRET77
      api-key: 12345678
    input:
      - {name: hf_token, type: [string], required: false, default: hf_DEFAULTSECRET5}
      - {name: max_tokens, type: [int], required: false, default: 256}
"""
SECRETS = ("glpat-URLSECRET99", "ghp_TOKENSECRET1234", "PASSWORDSECRET77", "hf_DEFAULTSECRET5")


def test_configurations_are_masked_as_vault_values_are():
    for value in ("", "a", "abcd", "abcde", "ghp_TOKENSECRET1234", "é" * 9):
        assert mask(value) == vault_mask(value), value


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_secrets_of_configurations_are_masked_for_everyone(queues, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config = write_config(tmp_path / "secret", SECRET_CONFIG)
    rt = await queues(config_files=[str(config)])
    viewer = await rt.client_as(roles=["viewer"])
    admin = await rt.client_as(roles=["admin"])
    for client in (viewer, admin):
        answer = await client.get("/api/cli/configs")
        assert answer.status_code == 200, answer.text
        for secret in SECRETS:
            assert secret not in answer.text
        full = answer.json()["configs"][0]
        deployment = full["deployment"]
        assert deployment["git_token"] == vault_mask("ghp_TOKENSECRET1234") == "gh****34"
        assert deployment["db_password"] == "PA****77"
        assert deployment["api-key"] == "12****78"
        assert deployment["git_url"] == (
            f"https://{vault_mask('deploy:glpat-URLSECRET99')}@git.example.invalid/private.git"
        )
        assert deployment["startup_cmd"] == "python main.py"  # the rest as it is
        inputs = {field["name"]: field for field in full["input"]}
        assert inputs["hf_token"]["default"] == "hf****T5"
        assert inputs["max_tokens"]["default"] == 256
        summary = answer.json()["queues"][0]
        assert "URLSECRET" not in summary["git_url"]

    body = {
        "name": "viaapi",
        "priority": 1,
        "deployment": {
            "git_url": "https://x-access-token:ghs_APISECRET42@github.com/o/r.git",
            "git_token": "ghp_APITOKEN4242",
            "startup_cmd": "python main.py",
        },
    }
    created = await admin.post("/api/cli/configs", json=body)
    assert created.status_code == 201, created.text
    assert "APISECRET" not in created.text and "APITOKEN" not in created.text
    assert created.json()["queue"]["deployment"]["git_token"] == "gh****42"
    listed = await viewer.get("/api/cli/configs")
    assert "APISECRET" not in listed.text and "APITOKEN" not in listed.text
    reload = await admin.post("/api/cli/configs/reload")
    assert reload.status_code == 200
    # Courtyard's own log lines (a database driver's debug log of SQL parameters is not).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("courtyard"))
    assert "unknown key" in ours
    for secret in (*SECRETS, "ghs_APISECRET42", "ghp_APITOKEN4242"):
        assert secret not in reload.text
        assert secret not in ours

    # The worker that registers still gets what it needs to clone.
    worker = await rt.client_as(permissions=["queues:work"])
    registered = await worker.post("/worker/register", json={"worker_id": "w", "queue": "private"})
    assert registered.status_code == 200
    assert "glpat-URLSECRET99" in registered.json()["deployment"]["git_url"]


@pytest.mark.parametrize("backend", ["postgresql", "redis"], indirect=True)
async def test_path_parameters_no_row_can_have_answer_404(queues):
    """PostgreSQL cannot compare text with NUL: such ids answer 404 before any query."""
    rt = await queues()
    for method, path, code in (
        ("GET", "/queue/a%00b", "TASK_NOT_FOUND"),
        ("GET", "/api/cli/queues/simple/tasks/a%00b", "TASK_NOT_FOUND"),
        ("DELETE", "/api/cli/tasks/a%00b", "TASK_NOT_FOUND"),
        ("DELETE", "/api/cli/queues/simple/tasks/a%00b", "TASK_NOT_FOUND"),
        ("GET", "/api/cli/workers/a%00b", "WORKER_NOT_FOUND"),
        ("GET", f"/api/cli/workers/{'w' * 300}", "WORKER_NOT_FOUND"),
        ("GET", "/api/cli/queues/a%00b", "QUEUE_NOT_FOUND"),
        ("POST", "/api/cli/queues/a%00b/pause", "QUEUE_NOT_FOUND"),
        ("DELETE", "/api/cli/configs/a%00b", "CONFIG_NOT_FOUND"),
        ("POST", "/worker/tasks/a%00b/renew", "TASK_NOT_FOUND"),
    ):
        body = {"worker_id": "w"} if method == "POST" else None
        answer = await rt.client.request(method, path, json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"]["code"] == code
    for cursor in ("9" * 40, "%C2%B2", "-1", "1.5"):
        answer = await rt.client.get(f"/api/cli/queues/simple/tasks?cursor={cursor}")
        assert answer.status_code == 400, (cursor, answer.text)
    for worker_id in ("w\x00", "w" * 201):
        answer = await rt.client.post(
            "/worker/heartbeat", json={"worker_id": worker_id, "queue": "simple"}
        )
        assert answer.status_code == 400
    answer = await rt.client.post(
        "/worker/heartbeat", json={"worker_id": "w", "queue": "simple", "concurrency": 2**40}
    )
    assert answer.status_code == 400
    assert (await rt.client.get("/api/cli/workers")).json()["count"] == 0


# The state-changing routes that programs call with their key and no Origin: runqy's
# Python client (/queue/add, /queue/add-batch), runqy's CLI (/api/cli/...) and workers.
WITHOUT_ORIGIN = {
    ("POST", "/queue/add"),
    ("POST", "/queue/add-batch"),
    ("POST", "/api/cli/queues/<queue>/pause"),
    ("POST", "/api/cli/queues/<queue>/unpause"),
    ("POST", "/api/cli/tasks"),
    ("DELETE", "/api/cli/tasks/<task_id>"),
    ("DELETE", "/api/cli/queues/<queue>/tasks/<task_id>"),
    ("POST", "/api/cli/configs"),
    ("POST", "/api/cli/configs/reload"),
    ("DELETE", "/api/cli/configs/<name>"),
    ("POST", "/worker/register"),
    ("POST", "/worker/dequeue"),
    ("POST", "/worker/batch"),
    ("POST", "/worker/heartbeat"),
    ("POST", "/worker/tasks/<task_id>/renew"),
    ("POST", "/worker/tasks/<task_id>/complete"),
    ("POST", "/worker/tasks/<task_id>/fail"),
    ("POST", "/worker/tasks/<task_id>/release"),
}
PLUGIN_PREFIXES = ("/queue/", "/api/cli/", "/worker/", "/queues", "/swagger", "/api/vaults")


@pytest.fixture
def queues_and_vaults(courtyard, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", generate_key())
    monkeypatch.delenv("RUNQY_API_KEY", raising=False)
    config = write_config(tmp_path / "config")

    async def start():
        plugin = {"config_files": [str(config)], **FAST}
        return await courtyard(only_plugins=["queues", "vaults"], plugins={"queues": plugin})

    return start


async def test_exactly_the_program_routes_accept_no_origin(queues_and_vaults):
    rt = await queues_and_vaults()
    app = rt.dispatcher.current.app
    marked = set()
    state_changing = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PLUGIN_PREFIXES):
            continue
        for method in rule.methods & {"POST", "PUT", "PATCH", "DELETE"}:
            state_changing.add((method, rule.rule))
            if allows_without_origin(app.view_functions[rule.endpoint]):
                marked.add((method, rule.rule))
    assert state_changing >= WITHOUT_ORIGIN  # every route named above exists
    assert marked == WITHOUT_ORIGIN  # the vault routes are not marked: browsers and keys
    assert ("POST", "/api/vaults") in state_changing


async def test_programs_without_origin_in_the_open_mode(queues_and_vaults):
    """With no credential configured, a program that sends no Origin reaches the marked
    routes; a foreign Origin is refused everywhere."""
    rt = await queues_and_vaults()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher), base_url=ORIGIN
    ) as program:
        added = await program.post("/queue/add", json={"queue": "simple", "data": {}})
        assert added.status_code == 200, added.text
        beat = await program.post("/worker/heartbeat", json={"worker_id": "w", "queue": "simple"})
        assert beat.status_code == 200, beat.text
        refused = await program.post("/api/vaults", json={"name": "v"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "CSRF_FAILED"
        internal = await program.post(
            "/api/vaults", json={"name": "v"}, headers={"X-Courtyard-Internal": "true"}
        )
        assert internal.status_code == 201, internal.text
        foreign = await program.post(
            "/queue/add",
            json={"queue": "simple", "data": {}},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403


async def test_a_worker_fails_a_task_whose_result_the_server_refuses(tmp_path):
    """A result the server cannot store (here, NaN, which the task's own JSON may hold)
    would otherwise come back each time its lease expires: the worker fails it for good."""
    from courtyard_queues.worker.client import Exchanged, Settlement
    from courtyard_queues.worker.messages import Assignment, Outcome
    from courtyard_queues.worker.runner import Options, Worker, _Slot

    class Client:
        def __init__(self):
            self.sent = []

        async def exchange(self, queue, reports, lease, wait, **_):
            settlements = []
            for report in reports:
                self.sent.append((report.task_id, report.outcome, lease))
                if report.outcome.ok:  # as the server answers a result it cannot store
                    refusal = ("VALIDATION_ERROR", "NaN is not a JSON number", 400)
                    settlements.append(Settlement(report.task_id, None, *refusal))
                else:
                    settlements.append(Settlement(report.task_id, state="archived"))
            return Exchanged(settlements, [])

    class Executor:
        def is_ready(self):
            return False  # nothing more is leased

    client = Client()
    worker = Worker(client, Options(queue="simple", workdir=tmp_path))  # type: ignore[arg-type]
    worker.executor = Executor()  # type: ignore[assignment]
    reporter = asyncio.create_task(worker._report_loop())
    try:
        task = Assignment("t1", "simple", {}, 0, 3, "simple.default", 0.0)
        worker._held = 1
        await asyncio.wait_for(worker._deliver(task, Outcome(result=math.nan), _Slot()), 5)
    finally:
        reporter.cancel()
    failure = "the server refused the result: VALIDATION_ERROR: NaN is not a JSON number"
    assert [(t, o.error, o.retry, lease) for t, o, lease in client.sent] == [
        ("t1", None, False, 0),
        ("t1", failure, False, 0),
    ]
    assert worker.failed == 1 and worker.completed == 0
    assert worker._held == 0  # its room is free again


async def test_an_unusable_path_parameter_is_still_401_without_credentials(queues, monkeypatch):
    monkeypatch.setenv("RUNQY_API_KEY", "runqy-test-key-0123456789")
    rt = await queues()
    for path in ("/api/cli/workers/a%00b", "/api/cli/queues/simple/tasks/a%00b"):
        answer = await rt.client.get(path)
        assert answer.status_code == 401, (path, answer.text)
