"""The worker's HTTP client: the worker protocol against the real queues plugin, and the
transport's handling of what servers and proxies do on the wire (chunked answers,
closed connections, silence, overload), on loopback sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from courtyard.testing import Server, free_port
from courtyard_queues.worker.client import (
    LeaseLost,
    Report,
    ServerError,
    Unreachable,
    WorkerClient,
)
from courtyard_queues.worker.http import HttpClient, TransportError
from courtyard_queues.worker.messages import LONG_RUNNING, ONE_SHOT, Outcome

KEY = "client-test-runqy-key"
CONFIG = """
queues:
  jobs:
    priority: 4
    deployment:
      git_url: /somewhere/repo.git
      branch: main
      startup_cmd: python tasks.py
      startup_timeout_secs: 45
      requirements_file: requirements.txt
  quick:
    priority: 1
    mode: one_shot
    deployment:
      git_url: /somewhere/quick.git
      startup_cmd: python run.py
"""


@pytest.fixture
def server(courtyard_server: Callable[..., Server], tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "queues.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    yield courtyard_server(
        only_plugins=["queues"],
        plugins={"queues": {"config_files": [str(config)], "lease_seconds": 7}},
        env={"RUNQY_API_KEY": KEY},
    )


@pytest.fixture
async def client(server: Server) -> AsyncIterator[WorkerClient]:
    worker = WorkerClient(server.url, KEY, "client-test-worker")
    yield worker
    await worker.close()


async def enqueue(client: WorkerClient, queue: str, data: object) -> str:
    answer = await client.call("/queue/add", {"queue": queue, "data": data}, deadline=None)
    return str(answer.json()["info"]["id"])


async def test_the_worker_protocol(client: WorkerClient) -> None:
    soon = time.monotonic() + 10
    registration = await client.register("jobs", 3, deadline=soon)
    assert registration.queue == "jobs" and registration.priority == 4
    assert registration.mode == LONG_RUNNING
    assert registration.lease_seconds == 7
    deployment = registration.deployment
    assert deployment.git_url == "/somewhere/repo.git" and deployment.branch == "main"
    assert deployment.startup_cmd == "python tasks.py" and deployment.startup_timeout == 45
    assert deployment.requirements_file == "requirements.txt"
    assert registration.vaults == {}
    quick = await client.register("quick", 1, deadline=soon)
    assert quick.mode == ONE_SHOT

    assert await client.dequeue("jobs", 0, deadline=soon) is None  # 204: nothing to do
    first = await enqueue(client, "jobs", {"n": 1})
    task = await client.dequeue("jobs", 0, deadline=soon)
    assert task is not None and task.task_id == first
    assert task.payload == {"n": 1} and task.queue == "jobs.default"
    assert task.retry_count == 0 and task.max_retry >= 0
    assert await client.renew(first, deadline=soon) is False
    await client.complete(first, {"ok": True}, deadline=soon)
    with pytest.raises(LeaseLost):
        await client.complete(first, {"ok": True}, deadline=soon)

    second = await enqueue(client, "jobs", {"n": 2})
    assert (await client.dequeue("jobs", 5, deadline=soon)).task_id == second  # type: ignore[union-attr]
    assert await client.fail(second, "bad input", False, deadline=soon) == "archived"

    third = await enqueue(client, "jobs", {"n": 3})
    assert (await client.dequeue("jobs", 5, deadline=soon)).task_id == third  # type: ignore[union-attr]
    await client.release(third, deadline=soon)
    again = await client.dequeue("jobs", 5, deadline=soon)
    assert again is not None and again.task_id == third and again.retry_count == 0

    await client.heartbeat("jobs", "running", [third], 3, deadline=soon)
    assert len(client._http._idle) >= 1  # the connection was kept for the next request


async def test_reports_and_leases_go_in_one_batch(client: WorkerClient) -> None:
    soon = time.monotonic() + 10
    ids = [await enqueue(client, "jobs", {"n": n}) for n in range(4)]
    leased = await client.exchange("jobs", [], 3, 0, deadline=soon)
    assert client.batches is True and leased.settlements == []
    assert [t.task_id for t in leased.tasks] == ids[:3]
    assert [t.payload for t in leased.tasks] == [{"n": 0}, {"n": 1}, {"n": 2}]

    reports = [
        Report(ids[0], Outcome(result={"r": 0})),
        Report(ids[1], Outcome(error="bad input", retry=False)),
        Report(ids[0], Outcome(result="twice")),
    ]
    answer = await client.exchange("jobs", reports, 2, 0, deadline=soon)
    assert [(s.task_id, s.state, s.code, s.status) for s in answer.settlements] == [
        (ids[0], "completed", None, None),
        (ids[1], "archived", None, None),
        (ids[0], None, "LEASE_LOST", 409),
    ]
    assert [t.task_id for t in answer.tasks] == [ids[3]]  # what was left

    # A result the server cannot store refuses the whole batch: each report is then sent
    # on its own, and gets its own answer; the lease follows.
    nan = [Report(ids[2], Outcome(result=float("nan"))), Report(ids[3], Outcome(result=3))]
    fifth = await enqueue(client, "jobs", {"n": 4})
    answer = await client.exchange("jobs", nan, 1, 0, deadline=soon)
    assert answer.settlements[0].status == 400 and answer.settlements[0].code == "VALIDATION_ERROR"
    assert answer.settlements[1].state == "completed"
    assert [t.task_id for t in answer.tasks] == [fifth]
    assert client.batches is True

    with pytest.raises(ServerError) as unknown:
        await client.exchange("no-such-queue", [], 1, 0, deadline=soon)
    assert unknown.value.code == "QUEUE_NOT_FOUND"
    # With reports, a queue that went away still records them, one by one.
    gone = await client.exchange(
        "no-such-queue", [Report(fifth, Outcome(result=5))], 1, 0, deadline=soon
    )
    assert gone.settlements[0].state == "completed" and gone.tasks == []


async def test_a_batch_too_large_for_one_request_is_sent_in_parts(client: WorkerClient) -> None:
    soon = time.monotonic() + 60
    for n in range(3):
        await enqueue(client, "jobs", {"n": n})
    leased = await client.exchange("jobs", [], 3, 0, deadline=soon)
    big = "x" * (7 * 1024 * 1024)  # three of them are over the server's 16 MiB per request
    reports = [Report(task.task_id, Outcome(result=big)) for task in leased.tasks]
    answer = await client.exchange("jobs", reports, 0, 0, deadline=soon)
    assert [s.state for s in answer.settlements] == ["completed"] * 3
    assert client.batches is True


async def test_a_server_without_batches_gets_one_request_per_task(
    raw_server: Callable[..., Awaitable[str]],
) -> None:
    """An older server (no /worker/batch) is asked through the single-task routes."""
    seen: list[tuple[str, dict[str, object]]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = json.loads(await reader.readexactly(length))
            seen.append((path, body))
            status, answer = "200 OK", b'{"state": "completed"}'
            if path == "/worker/batch":
                status, answer = "404 Not Found", b'{"error": {"code": "NOT_FOUND", "message": ""}}'
            elif path == "/worker/dequeue":
                answer = json.dumps(
                    {
                        "task": {
                            "task_id": "t9",
                            "type": "jobs",
                            "payload": {},
                            "queue": "jobs.default",
                        }
                    }
                ).encode()
            elif path.endswith("/fail"):
                answer = b'{"state": "retry"}'
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (status.encode(), len(answer))
                + answer
            )
            await writer.drain()

    client = WorkerClient(await raw_server(handler), None, "old-server-worker")
    try:
        reports = [Report("t1", Outcome(result=1)), Report("t2", Outcome(error="e", retry=True))]
        answer = await client.exchange("jobs", reports, 4, 0, deadline=time.monotonic() + 10)
        assert client.batches is False
        assert [s.state for s in answer.settlements] == ["completed", "retry"]
        assert [t.task_id for t in answer.tasks] == ["t9"]  # one task per exchange
        again = await client.exchange("jobs", [], 4, 1, deadline=time.monotonic() + 10)
        assert [t.task_id for t in again.tasks] == ["t9"]
    finally:
        await client.close()
    assert [path for path, _ in seen] == [
        "/worker/batch",
        "/worker/tasks/t1/complete",
        "/worker/tasks/t2/fail",
        "/worker/dequeue",
        "/worker/dequeue",  # the batch route is not asked again
    ]
    assert seen[2][1] == {"worker_id": "old-server-worker", "error": "e", "retry": True}
    assert seen[3][1]["wait"] == 0 and seen[4][1]["wait"] == 1


async def test_refusals_are_not_retried(server: Server) -> None:
    wrong = WorkerClient(server.url, "not-the-key", "w")
    try:
        started = time.monotonic()
        with pytest.raises(ServerError) as refused:
            await wrong.register("jobs", 1, deadline=None)
        assert refused.value.status == 401 and time.monotonic() - started < 5
    finally:
        await wrong.close()
    right = WorkerClient(server.url, KEY, "w")
    try:
        with pytest.raises(ServerError) as unknown:
            await right.register("no-such-queue", 1, deadline=None)
        assert unknown.value.status == 404
        with pytest.raises(ServerError) as bad:
            await right.dequeue("jobs", 300, deadline=None)  # the protocol allows 30 s at most
        assert bad.value.status == 400
    finally:
        await right.close()


async def test_an_unreachable_server_is_retried_until_the_deadline() -> None:
    client = WorkerClient(f"http://127.0.0.1:{free_port()}", KEY, "w")
    try:
        started = time.monotonic()
        with pytest.raises(Unreachable, match="CONNECTION_FAILED"):
            await client.register("jobs", 1, deadline=time.monotonic() + 1.5)
        assert 0.5 < time.monotonic() - started < 5
    finally:
        await client.close()


# -- the transport, on raw sockets -----------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def test_chunked_answers_and_kept_connections(
    raw_server: Callable[..., Awaitable[str]],
) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            body = await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\n\r\n"
            )
            await writer.drain()

    http = HttpClient(await raw_server(handler), {})
    try:
        for n in range(5):
            answer = await http.post("/echo", {"n": n, "text": "é" * n}, timeout=5)
            assert answer.ok and answer.json() == {"n": n, "text": "é" * n}
        assert connections == 1
    finally:
        await http.close()


async def test_connection_close_is_honoured(raw_server: Callable[..., Awaitable[str]]) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()

    http = HttpClient(await raw_server(handler), {})
    try:
        for _ in range(3):
            assert (await http.post("/x", {}, timeout=5)).status == 204
        assert connections == 3 and not http._idle
    finally:
        await http.close()


async def test_a_connection_the_server_dropped_is_not_reused(
    raw_server: Callable[..., Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        # ...and close without saying so, as a server does when its keep-alive expires.

    http = HttpClient(await raw_server(handler), {})
    try:
        await http.post("/x", {}, timeout=5)
        await asyncio.sleep(0.2)  # the close reaches the client
        assert (await http.post("/x", {}, timeout=5)).json() == {}
    finally:
        await http.close()


async def test_silence_and_garbage_are_transport_errors(
    raw_server: Callable[..., Awaitable[str]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()

    for handler, problem in (
        (silent, "no answer within 0.5 s"),
        (garbage, "illegal status line"),
        (cut, "peer closed connection"),
    ):
        http = HttpClient(await raw_server(handler), {})
        try:
            with pytest.raises(TransportError, match=problem):
                await http.post("/x", {}, timeout=0.5)
            assert not http._idle
        finally:
            await http.close()


async def test_server_errors_are_retried(raw_server: Callable[..., Awaitable[str]]) -> None:
    """Overload, a gateway, or the server's own dependency down: a report sent again in
    its lease window is not run twice."""
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 0\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"cancel": true }',
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            await read_request(reader)
            writer.write(answers.pop(0))
            await writer.drain()

    client = WorkerClient(await raw_server(handler), None, "w")
    try:
        assert await client.renew("t1", deadline=time.monotonic() + 10) is True
    finally:
        await client.close()


# -- the command's options -------------------------------------------------------------


def test_the_command_checks_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from courtyard_queues.worker import worker_command

    for name in ("COURTYARD_URL", "RUNQY_SERVER_URL", "COURTYARD_QUEUE", "RUNQY_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    missing = runner.invoke(worker_command, ["--queue", "jobs"])
    assert missing.exit_code == 2 and "COURTYARD_URL or RUNQY_SERVER_URL" in missing.output
    bad = runner.invoke(worker_command, ["--server", "ftp://x", "--queue", "jobs"])
    assert bad.exit_code == 2 and "must be an http:// or https:// URL" in bad.output
    no_queue = runner.invoke(worker_command, ["--server", "http://127.0.0.1:1"])
    assert no_queue.exit_code == 2 and "COURTYARD_QUEUE or RUNQY_QUEUE" in no_queue.output
    zero = runner.invoke(
        worker_command, ["--server", "http://x", "--queue", "q", "--concurrency", "0"]
    )
    assert zero.exit_code == 2


# -- parsing what the server and the process say ---------------------------------------


def test_registration_and_task_parsing() -> None:
    from courtyard_queues.worker.messages import (
        Assignment,
        Outcome,
        ProtocolError,
        Registration,
    )

    seed = {  # runqy's API's example answer, as documented
        "redis": {"addr": "localhost:6379", "password": "", "db": 0},
        "queue": {"name": "inference", "priority": 6, "mode": "long_running"},
        "deployment": {
            "git_url": "https://github.com/example/repo.git",
            "branch": "main",
            "startup_cmd": "python main.py",
            "startup_timeout_secs": 300,
            "requirements_file": "requirements.txt",
            "vaults": ["api-keys"],
        },
        "vaults": {"OPENAI_API_KEY": "sk-actual-decrypted-key"},
    }
    registration = Registration.parse(seed)
    assert registration.mode == LONG_RUNNING and registration.deployment.startup_timeout == 300
    assert registration.lease_seconds == 30  # no courtyard block: the defaults
    assert Registration.parse({**seed, "queue": {"name": "q", "mode": "one_shot"}}).mode == ONE_SHOT
    for broken, problem in (
        ({**seed, "deployment": None}, "no deployment"),
        ({**seed, "deployment": {**seed["deployment"], "startup_cmd": " "}}, "startup_cmd"),
        ({**seed, "deployment": {**seed["deployment"], "mode": "forever"}}, "mode must be"),
        ({**seed, "vaults": {"A": 1}}, "vaults"),
        ({**seed, "courtyard": {"lease_seconds": "soon"}}, "lease_seconds"),
        ([], "not a JSON object"),
    ):
        with pytest.raises(ProtocolError, match=problem):
            Registration.parse(broken)

    task = Assignment.parse(
        {
            "task_id": "t",
            "type": "x",
            "payload": [1],
            "retry_count": 1,
            "max_retry": 2,
            "queue": "q.default",
            "timeout": 0,
        }
    )
    assert task.request_line() == (
        b'{"task_id":"t","type":"x","payload":[1],"retry_count":1,"max_retry":2,'
        b'"queue":"q.default"}\n'
    )
    with pytest.raises(ProtocolError, match="task_id"):
        Assignment.parse({"payload": {}})

    assert Outcome.from_response({"task_id": "t", "result": 3, "error": None}) == Outcome(3)
    assert Outcome.from_response({"task_id": "t", "result": 3, "error": ""}).ok
    assert Outcome.from_response({"task_id": "t", "error": "x", "retry": True}).retry
    assert Outcome.from_response({"task_id": "t", "error": "x", "retry": "yes"}).retry is False
    assert Outcome.from_response({"task_id": "t", "error": {"code": 1}}).error == '{"code": 1}'


async def test_a_server_that_never_answers_does_not_outlast_the_deadline(
    raw_server: Callable[..., Awaitable[str]],
) -> None:
    """A request is cut at the call's deadline, not at the 30 s request timeout: a
    stopping worker's last heartbeat cannot hold its exit."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(60)  # reads the request, never answers

    client = WorkerClient(await raw_server(silent), None, "w")
    try:
        started = time.monotonic()
        with pytest.raises(Unreachable):
            await client.renew("t1", deadline=time.monotonic() + 1)
        assert time.monotonic() - started < 3
    finally:
        await client.close()
