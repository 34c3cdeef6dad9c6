"""The worker's side of the worker protocol: HTTP calls to the queues server.

Every call retries on what a restart, an outage or a network blip causes (a refused or
reset connection, a timeout, any 5xx: the server's database or Redis may be down for a
moment) with exponential backoff and jitter, up to a deadline the caller chooses (a
report keeps trying for minutes: one that gets through while the task is still leased to
this worker is not run twice); an answer that retrying cannot change (401, 404, a
validation error) raises at once. `409 LEASE_LOST` becomes `LeaseLost`: the task went to
someone else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .http import Answer, HttpClient, TransportError
from .messages import Assignment, Outcome, ProtocolError, Registration

log = logging.getLogger("courtyard.worker")

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
# The largest batch sent in one request: half the server's default limit of a request
# body (16 MiB); a larger one (large results) is sent in parts.
MAX_BATCH_BYTES = 8 * 1024 * 1024


class ServerError(Exception):
    """The server refused a request: its error `code`, `message` and HTTP `status`."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class Unreachable(ServerError):
    """The server could not be reached (or kept failing) until the deadline."""


class LeaseLost(ServerError):
    """The task's lease expired and the task is no longer this worker's."""


@dataclass(frozen=True)
class Report:
    """A task's outcome to report: a completion with `result`, or a failure (`error`)."""

    task_id: str
    outcome: Outcome


@dataclass(frozen=True)
class Settlement:
    """What the server did with one report: the task's new `state`, or the refusal
    (`code`, `message` and the `status` its own route answers: 404, 409, 400)."""

    task_id: str
    state: str | None = None
    code: str | None = None
    message: str = ""
    status: int | None = None

    @property
    def recorded(self) -> bool:
        """True when the server recorded the report."""
        return self.state is not None


@dataclass
class Exchanged:
    """The answer of an exchange: a settlement per report, in order, and the tasks leased."""

    settlements: list[Settlement] = field(default_factory=list)
    tasks: list[Assignment] = field(default_factory=list)


STATUS_OF = {"TASK_NOT_FOUND": 404, "LEASE_LOST": 409}


class Backoff:
    """Exponential delays with full jitter: `first`, doubling up to `cap` seconds."""

    def __init__(self, first: float = 0.25, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt (jittered between half and all of it)."""
        delay = min(self.cap, self.first * (2**self.attempt))
        self.attempt += 1
        return delay / 2 + random.random() * delay / 2

    def reset(self) -> None:
        """Start again from `first` (after a success)."""
        self.attempt = 0


def _version() -> str:
    try:
        return metadata.version("courtyard-queues")
    except metadata.PackageNotFoundError:
        return ""


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _report_body(report: Report) -> dict[str, Any]:
    outcome = report.outcome
    if outcome.ok:
        return {"task_id": report.task_id, "result": outcome.result}
    return {"task_id": report.task_id, "error": outcome.error, "retry": outcome.retry}


def _error_of(answer: Answer) -> ServerError:
    """The error an answer carries: `{"error": {"code", "message"}}` or runqy's
    `{"error": "message"}`, else one named after the status."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], str(error.get("message", ""))
    elif isinstance(error, str):
        code, message = f"HTTP_{answer.status}", error
    else:
        text = " ".join(answer.text.split())[:200]
        code, message = f"HTTP_{answer.status}", text or answer.reason
    cls = LeaseLost if answer.status == 409 and code == "LEASE_LOST" else ServerError
    return cls(code, message, answer.status)


class WorkerClient:
    """The worker protocol's calls, for one worker id, on one keep-alive connection pool."""

    def __init__(self, server: str, api_key: str | None, worker_id: str) -> None:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"courtyard-worker/{_version() or 'dev'}",
            "X-Courtyard-Internal": "true",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.server = server.rstrip("/")
        self.worker_id = worker_id
        self.about = {"hostname": socket.gethostname()[:255], "version": _version()}
        self._http = HttpClient(self.server, headers, connect_timeout=CONNECT_TIMEOUT)
        self.batches: bool | None = None  # whether the server has /worker/batch (None: unknown)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.close()

    async def call(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        *,
        deadline: float | None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Answer:
        """POST `body` (or JSON text, as bytes) to `path`; retry transient failures until
        `deadline` (monotonic seconds, None: forever). :raises ServerError: a refusal;
        Unreachable at the deadline."""
        backoff = Backoff()
        while True:
            # One request never outlives the deadline either (a server that does not
            # answer would hold a worker's last heartbeat, and its exit, for `timeout`).
            left = timeout if deadline is None else min(timeout, deadline - time.monotonic())
            try:
                answer = await self._http.post(path, body, timeout=max(left, 0.1))
            except TransportError as exc:
                problem = Unreachable("CONNECTION_FAILED", f"{self.server}{path}: {exc}")
            else:
                if answer.status < 500:  # 5xx: retried (see the module docstring)
                    if answer.ok:
                        return answer
                    raise _error_of(answer)
                refusal = _error_of(answer)
                problem = Unreachable(refusal.code, refusal.message, refusal.status)
            delay = backoff.next()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise problem
            log.warning("%s; retrying in %.1f s", problem, delay)
            await asyncio.sleep(delay)

    def _json(self, answer: Answer, path: str) -> Any:
        try:
            return answer.json()
        except ValueError:
            raise ServerError(
                "BAD_RESPONSE", f"{self.server}{path} answered {answer.status} without JSON"
            ) from None

    async def register(
        self, queue: str, concurrency: int, *, deadline: float | None
    ) -> Registration:
        """`POST /worker/register`: this worker's queue, deployment and vault values."""
        body = {"worker_id": self.worker_id, "queue": queue, "concurrency": concurrency}
        answer = await self.call("/worker/register", {**body, **self.about}, deadline=deadline)
        return Registration.parse(self._json(answer, "/worker/register"))

    async def dequeue(
        self, queue: str, wait: float, *, deadline: float | None
    ) -> Assignment | None:
        """`POST /worker/dequeue`: a leased task, or None when none came within `wait`."""
        answer = await self.call(
            "/worker/dequeue",
            {"worker_id": self.worker_id, "queue": queue, "wait": wait},
            deadline=deadline,
            timeout=wait + REQUEST_TIMEOUT,
        )
        if answer.status == 204:
            return None
        body = self._json(answer, "/worker/dequeue")
        return Assignment.parse(body.get("task") if isinstance(body, dict) else None)

    async def exchange(
        self,
        queue: str,
        reports: list[Report],
        lease: int,
        wait: float,
        *,
        deadline: float | None,
    ) -> Exchanged:
        """`POST /worker/batch`: record `reports` and lease up to `lease` tasks (waiting up
        to `wait` seconds when none is ready), in one request.

        A server without the route (404, 405: an older one) is asked one request per
        report from then on, and leases one task per exchange (`/worker/dequeue`). A
        batch over `MAX_BATCH_BYTES` (large results) is sent in parts. A batch
        the server refuses as a whole (400: a result it cannot store; 404: the queue went
        away) is sent again one report at a time, so that each report gets its own answer
        (that of its own route).

        :raises ServerError: the lease was refused (QUEUE_NOT_FOUND, ...) with nothing to
            report; Unreachable at the deadline.
        """
        if self.batches is not False:
            body = _encode(
                {
                    "worker_id": self.worker_id,
                    "queue": queue,
                    "reports": [_report_body(report) for report in reports],
                    "lease": lease,
                    "wait": wait,
                }
            )
            if len(body) > MAX_BATCH_BYTES and len(reports) > 1:  # large results: in parts
                half = len(reports) // 2
                first = await self.exchange(queue, reports[:half], 0, 0.0, deadline=deadline)
                rest = await self.exchange(queue, reports[half:], lease, wait, deadline=deadline)
                return Exchanged(first.settlements + rest.settlements, rest.tasks)
            try:
                answer = await self.call(
                    "/worker/batch", body, deadline=deadline, timeout=wait + REQUEST_TIMEOUT
                )
            except Unreachable:
                raise
            except ServerError as exc:
                if exc.status in (404, 405) and exc.code != "QUEUE_NOT_FOUND":
                    log.info("the server has no /worker/batch: one request per task")
                    self.batches = False
                elif not reports:
                    raise
                else:  # refused as a whole: each report on its own, then the lease
                    settlements = [await self._report_alone(r, deadline) for r in reports]
                    tasks: list[Assignment] = []
                    if lease and exc.code != "QUEUE_NOT_FOUND":
                        tasks = (
                            await self.exchange(queue, [], lease, 0.0, deadline=deadline)
                        ).tasks
                    return Exchanged(settlements, tasks)
            else:
                self.batches = True
                return self._exchanged(answer, reports)
        settlements = [await self._report_alone(report, deadline) for report in reports]
        tasks = []
        if lease:
            leased = await self.dequeue(queue, 0.0 if reports else wait, deadline=deadline)
            tasks = [] if leased is None else [leased]
        return Exchanged(settlements, tasks)

    def _exchanged(self, answer: Answer, reports: list[Report]) -> Exchanged:
        data = self._json(answer, "/worker/batch")
        outcomes = data.get("reports") if isinstance(data, dict) else None
        leased = data.get("tasks") if isinstance(data, dict) else None
        if not isinstance(outcomes, list) or not isinstance(leased, list):
            raise ProtocolError("the batch answer has no reports or tasks array")
        if len(outcomes) != len(reports):
            raise ProtocolError(f"{len(outcomes)} outcomes for {len(reports)} reports")
        settlements = []
        for report, outcome in zip(reports, outcomes, strict=True):
            if not isinstance(outcome, dict):
                raise ProtocolError("a report's outcome is not an object")
            error = outcome.get("error")
            if isinstance(error, dict):
                code = str(error.get("code") or "HTTP_500")
                settlements.append(
                    Settlement(
                        report.task_id,
                        code=code,
                        message=str(error.get("message") or ""),
                        status=STATUS_OF.get(code),
                    )
                )
            else:
                settlements.append(Settlement(report.task_id, state=str(outcome.get("state"))))
        tasks = []
        for item in leased:
            try:
                tasks.append(Assignment.parse(item))
            except ProtocolError as exc:  # it comes back when its lease expires
                log.error("a leased task is unreadable: %s", exc)
        return Exchanged(settlements, tasks)

    async def _report_alone(self, report: Report, deadline: float | None) -> Settlement:
        """One report through its own route (`complete` or `fail`)."""
        outcome = report.outcome
        try:
            if outcome.ok:
                await self.complete(report.task_id, outcome.result, deadline=deadline)
                return Settlement(report.task_id, state="completed")
            assert outcome.error is not None
            state = await self.fail(report.task_id, outcome.error, outcome.retry, deadline=deadline)
            return Settlement(report.task_id, state=state or "?")
        except Unreachable:
            raise
        except ServerError as exc:
            return Settlement(report.task_id, code=exc.code, message=exc.message, status=exc.status)

    async def renew(self, task_id: str, *, deadline: float | None) -> bool:
        """Extend the task's lease; True when the server asks to cancel the task.

        :raises LeaseLost: the task is no longer this worker's.
        """
        answer = await self.call(
            f"/worker/tasks/{task_id}/renew", {"worker_id": self.worker_id}, deadline=deadline
        )
        body = self._json(answer, f"/worker/tasks/{task_id}/renew")
        return isinstance(body, dict) and body.get("cancel") is True

    async def complete(
        self, task_id: str, result: Any, *, deadline: float | None, next_queue: str | None = None
    ) -> Assignment | None:
        """Report success with the task's result; with `next_queue`, the next task of that
        queue comes leased in the same answer (None when none was ready)."""
        path = f"/worker/tasks/{task_id}/complete"
        body: dict[str, Any] = {"worker_id": self.worker_id, "result": result}
        if next_queue is not None:
            body["next_queue"] = next_queue
        answer = await self.call(path, body, deadline=deadline)
        if next_queue is None:
            return None
        data = self._json(answer, path)
        leased = data.get("next") if isinstance(data, dict) else None
        return None if leased is None else Assignment.parse(leased)

    async def fail(self, task_id: str, error: str, retry: bool, *, deadline: float | None) -> str:
        """Report failure; returns the task's new state (`retry` or `archived`)."""
        answer = await self.call(
            f"/worker/tasks/{task_id}/fail",
            {"worker_id": self.worker_id, "error": error, "retry": retry},
            deadline=deadline,
        )
        body = self._json(answer, f"/worker/tasks/{task_id}/fail")
        return str(body.get("state", "")) if isinstance(body, dict) else ""

    async def release(self, task_id: str, *, deadline: float | None) -> None:
        """Hand the task back untouched (pending again, its retry count unchanged)."""
        await self.call(
            f"/worker/tasks/{task_id}/release", {"worker_id": self.worker_id}, deadline=deadline
        )

    async def heartbeat(
        self,
        queue: str,
        status: str,
        active: list[str],
        concurrency: int,
        *,
        deadline: float | None,
    ) -> None:
        """Tell the server this worker is alive, its status and the tasks it runs."""
        body = {
            "worker_id": self.worker_id,
            "queue": queue,
            "status": status,
            "active_tasks": active,
            "concurrency": concurrency,
            **self.about,
        }
        await self.call("/worker/heartbeat", body, deadline=deadline)
