"""The queue service: what the routes do, over a task store and the configurations.

It resolves queue names (a bare name is `<name>.default` for clients; workers name a
parent queue to serve all its sub-queues), stamps each new task with its lifecycle
values (request, else the queue's `deployment.limits`, else the plugin's settings),
orders sub-queues for a dequeue (strictly by priority, or weighted by it), waits for
tasks in long polls, and runs the sweeper of this instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from courtyard_sdk import ApiError

from . import errors
from .config import ConfigError, normalize, split_name
from .limits import MAX_EXCHANGE, MAX_RETRY, MAX_SECONDS, MAX_UNIX, check_seconds, is_finite_number
from .notify import Notifier
from .registry import Entry, Registry
from .schemas import PayloadError, apply_input
from .store import (
    ARCHIVED,
    FINISHED,
    Backoff,
    Duplicate,
    Exchange,
    LeaseLost,
    NewTask,
    Renewal,
    Report,
    Settled,
    Task,
    TaskNotFound,
    TaskStore,
    Worker,
)

MAX_WAIT = 30.0  # seconds a long poll may last
DEFAULT_UNIQUE_TTL = 86400.0


@dataclass(frozen=True)
class Options:
    """The plugin's settings the service works with (see plugin.toml)."""

    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    sweep_seconds: float = 1.0
    max_retry: int = 3
    retention_seconds: float = 86400.0
    archived_retention_seconds: float = 259200.0
    backoff: Backoff = field(default_factory=Backoff)
    max_batch: int = 10000

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a worker is shown as stale."""
        return 3 * self.heartbeat_seconds

    @property
    def forget_after(self) -> float:
        """Seconds without a heartbeat after which a worker is removed from the list."""
        return 10 * self.heartbeat_seconds


@dataclass(frozen=True)
class Request:
    """What a client asks for one task, beyond its queue and payload (all optional)."""

    timeout: float | None = None
    type: str | None = None
    max_retry: int | None = None
    process_at: float | None = None
    process_in: float | None = None
    unique_key: str | None = None
    unique: bool = False
    unique_ttl: float | None = None
    retention: float | None = None


def weighted_order(queues: list[tuple[str, int]], rand: random.Random | None = None) -> list[str]:
    """Sub-queues in a random order where each comes first with a chance proportional to
    its priority (asynq's weighted priority: a queue of priority 6 beside one of 3 is
    served first two times in three)."""
    pick = rand or random
    left = list(queues)
    order: list[str] = []
    while left:
        point = pick.random() * sum(weight for _, weight in left)
        for index, (name, weight) in enumerate(left):
            point -= weight
            if point < 0 or index == len(left) - 1:
                order.append(name)
                del left[index]
                break
    return order


class QueueService:
    """See the module docstring."""

    def __init__(
        self,
        store: TaskStore,
        registry: Registry,
        options: Options,
        logger: logging.Logger,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.options = options
        self.log = logger
        self.notifier = notifier or Notifier()
        # Callables told of completed and archived tasks: given a `Task`, or a `Settled`
        # (its id, queue and state) for a report of `exchange`.
        self.on_finished: list[Any] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()  # set by close(): the sweeper ends

    async def start(self) -> None:
        """Connect, load the configuration files, start the sweeper.

        :raises ConfigError: when a configuration file cannot be used (its name and key
            in the message): a broken configuration refuses the start.
        """
        await self.store.start()
        if warning := await self.store.durability_warning():
            self.log.warning("%s", warning)
        report = await self.registry.load_files()
        if report.errors:
            raise ConfigError("; ".join(report.errors))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="queues-sweeper")

    async def close(self) -> None:
        """Stop the sweeper, wake every long poll, close the store."""
        self.notifier.close()
        self._closing.set()
        if self._sweeper is not None:
            # Cancelling ends a sweep in progress; the flag ends the loop even where a
            # client library swallowed the cancellation (redis-py's may, when it closes a
            # connection mid-command), which left the sweeper asleep for a whole interval.
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.store.close()

    # Queue names ------------------------------------------------------------------------

    async def client_queue(self, name: str) -> tuple[str, Entry]:
        """The full sub-queue a client names (a bare name is `<name>.default`).

        :raises ApiError: 400 for an empty name, 404 QUEUE_NOT_FOUND.
        """
        if not name:
            raise errors.invalid("queue is required")
        full = normalize(name)
        entry = await self.registry.sub_queue(full)
        if entry is None:
            raise errors.queue_not_found(name, full)
        return full, entry

    async def worker_queues(self, name: str) -> tuple[list[str], Entry]:
        """The sub-queues a worker serves: all of a parent's, or the one it names.

        :raises ApiError: 400 for an empty name, 404 QUEUE_NOT_FOUND.
        """
        if not name:
            raise errors.invalid("queue is required")
        parent, sub = split_name(name)
        entry = await self.registry.get(parent)
        if entry is not None and sub is None:
            return entry.config.full_names, entry
        if entry is not None and name in entry.config.full_names:
            return [name], entry
        raise errors.queue_not_found(name, normalize(name) if sub is None else None)

    def dequeue_order(self, queues: list[str], entry: Entry) -> list[str]:
        """`queues` in the order a dequeue tries them (see `weighted_order`)."""
        if len(queues) == 1:
            return queues
        config = entry.config
        weights = [(q, config.priority_of(q)) for q in queues]
        if config.strict_priority:
            return [q for q, _ in sorted(weights, key=lambda item: -item[1])]
        return weighted_order(weights)

    # Enqueueing -------------------------------------------------------------------------

    async def new_task(self, full: str, entry: Entry, payload: Any, request: Request) -> NewTask:
        """A task for `full` with every lifecycle value resolved.

        :raises ApiError: 400 INVALID_PAYLOAD when the payload does not match the queue's
            input fields, 400 for a bad option.
        """
        try:
            check_request(request)
        except ValueError as exc:
            raise errors.invalid(str(exc)) from None
        try:
            payload = apply_input(payload, entry.config.input)
        except PayloadError as exc:
            raise errors.invalid(str(exc), "INVALID_PAYLOAD") from None
        limits = entry.config.deployment.limits
        timeout = request.timeout if request.timeout else (limits.active_timeout or 0.0)
        process_at = request.process_at
        if request.process_in is not None:
            if process_at is not None:
                raise errors.invalid("give process_at or process_in, not both")
            process_at = await self.store.now() + request.process_in
        elif process_at is not None and process_at > await self.store.now() + MAX_SECONDS:
            raise errors.invalid(
                f"process_at must be at most {MAX_SECONDS} seconds (365 days) ahead"
            )
        unique_key = request.unique_key
        if unique_key is None and request.unique:
            unique_key = _unique_key(full, request.type, payload)
        unique_ttl = 0.0
        if unique_key is not None:
            unique_ttl = request.unique_ttl or DEFAULT_UNIQUE_TTL
        return NewTask(
            id=str(uuid.uuid4()),
            queue=full,
            type=request.type or split_name(full)[0],
            payload=payload,
            timeout=float(timeout),
            max_retry=_first(request.max_retry, limits.max_retry, self.options.max_retry),
            process_at=process_at,
            unique_key=unique_key,
            unique_ttl=unique_ttl,
            retention=_first(
                request.retention, limits.ttl_completed, self.options.retention_seconds
            ),
            archived_retention=_first(limits.ttl_archived, self.options.archived_retention_seconds),
            pending_timeout=limits.pending_timeout or 0.0,
        )

    async def enqueue(self, queue: str, payload: Any, request: Request) -> Task:
        """Enqueue one task. :raises ApiError: 404, 400, 409 DUPLICATE_TASK."""
        full, entry = await self.client_queue(queue)
        new = await self.new_task(full, entry, payload, request)
        (outcome,) = await self.store.enqueue([new])
        if isinstance(outcome, Duplicate):
            raise errors.conflict(
                "DUPLICATE_TASK",
                f"a task with unique key '{outcome.unique_key}' is already queued"
                + (f" ({outcome.task_id})" if outcome.task_id else ""),
            )
        self.notifier.ready(full)
        return outcome

    async def enqueue_batch(
        self, queue: str, jobs: list[tuple[Any, Request]]
    ) -> tuple[list[str], list[str]]:
        """Enqueue many tasks in one store call; a job that cannot be enqueued is reported
        in the errors and the others go on. :return: (task ids, errors)."""
        if not jobs:
            raise errors.invalid("jobs array cannot be empty")
        if len(jobs) > self.options.max_batch:
            raise errors.invalid(
                f"{len(jobs)} jobs: at most {self.options.max_batch} per batch", "BATCH_TOO_LARGE"
            )
        full, entry = await self.client_queue(queue)
        tasks: list[NewTask] = []
        problems: list[str] = []
        for index, (payload, request) in enumerate(jobs):
            try:
                tasks.append(await self.new_task(full, entry, payload, request))
            except ApiError as exc:
                problems.append(f"job {index}: {exc.message}")
        ids: list[str] = []
        for outcome in await self.store.enqueue(tasks):
            if isinstance(outcome, Duplicate):
                problems.append(f"unique key '{outcome.unique_key}' is already queued")
            else:
                ids.append(outcome.id)
        if ids:
            self.notifier.ready(full)
        return ids, problems

    async def get(self, task_id: str) -> Task:
        """A task. :raises ApiError: 404."""
        task = await self.store.get(task_id)
        if task is None:
            raise errors.task_not_found(task_id)
        return task

    async def wait_finished(
        self, task_id: str, timeout: float = MAX_WAIT, stop: asyncio.Event | None = None
    ) -> Task | None:
        """The task once completed or archived, or None after `timeout` seconds (or
        once `stop` is set: the generation serving the request retires).

        :raises ApiError: 404 when there is no such task.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.notifier.listen_task(task_id) as finished:
                task = await self.get(task_id)
                left = deadline - loop.time()
                if task.state in FINISHED or left <= 0 or self._stopping(stop):
                    return task if task.state in FINISHED else None
                await _wait(finished, stop, min(left, self.options.poll_seconds))

    def _stopping(self, stop: asyncio.Event | None) -> bool:
        return self.notifier.closed or (stop is not None and stop.is_set())

    # The worker protocol ----------------------------------------------------------------

    async def dequeue(
        self, worker_id: str, queue: str, wait: float, stop: asyncio.Event | None = None
    ) -> Task | None:
        """Lease a task to `worker_id`, waiting up to `wait` seconds for one (less when
        `stop` is set: the generation serving the request retires, and the worker should
        ask the next one)."""
        queues, entry = await self.worker_queues(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            with self.notifier.listen(queues) as ready:
                task = await self.store.dequeue(
                    self.dequeue_order(queues, entry), worker_id, self.options.lease_seconds
                )
                left = deadline - loop.time()
                if task is not None or left <= 0 or self._stopping(stop):
                    return task
                await _wait(ready, stop, min(left, self.options.poll_seconds))

    def lease_orders(self, queues: list[str], entry: Entry, count: int) -> list[list[str]]:
        """The order each of `count` leases tries `queues` in: one order when it is the
        same for all (one sub-queue, strict priorities), else one drawn for each lease."""
        if len(queues) == 1 or entry.config.strict_priority or count <= 1:
            return [self.dequeue_order(queues, entry)]
        return [self.dequeue_order(queues, entry) for _ in range(count)]

    async def exchange(
        self,
        worker_id: str,
        queue: str,
        reports: list[Report],
        count: int,
        wait: float = 0.0,
        stop: asyncio.Event | None = None,
    ) -> Exchange:
        """Record a worker's reports and lease it up to `count` tasks, in one store call;
        when none could be leased at once, wait up to `wait` seconds for one (as
        `dequeue` does) and lease what is there then. The reports are recorded first,
        whatever the leases give.

        :raises ApiError: 404 QUEUE_NOT_FOUND (before any report is recorded).
        """
        queues, entry = await self.worker_queues(queue)
        count = min(max(count, 0), MAX_EXCHANGE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT)
        settled: list[Settled | TaskNotFound | LeaseLost] | None = None
        while True:
            with self.notifier.listen(queues) as ready:
                done = await self.store.exchange(
                    worker_id,
                    reports if settled is None else [],
                    self.lease_orders(queues, entry, count),
                    self.options.lease_seconds,
                    count,
                    self.options.backoff,
                )
                if settled is None:
                    settled = done.settled
                    await self._after_reports(settled)
                left = deadline - loop.time()
                if done.leased or count == 0 or left <= 0 or self._stopping(stop):
                    return Exchange(settled, done.leased)
                await _wait(ready, stop, min(left, self.options.poll_seconds))

    async def _after_reports(self, settled: list[Settled | TaskNotFound | LeaseLost]) -> None:
        """What follows recorded reports: the events of finished tasks, and wake-ups for
        tasks that are pending again."""
        for outcome in settled:
            if isinstance(outcome, Settled):
                if outcome.state in FINISHED:
                    await self._finished(outcome)
                else:
                    self.notifier.ready(outcome.queue)

    async def renew(self, task_id: str, worker_id: str) -> Renewal:
        """Extend a lease. :raises ApiError: 404, 409 LEASE_LOST."""
        with _leased(task_id):
            return await self.store.renew(task_id, worker_id, self.options.lease_seconds)

    async def complete(self, task_id: str, worker_id: str, result: Any) -> Task:
        """Record a result. :raises ApiError: 404, 409 LEASE_LOST."""
        with _leased(task_id):
            task = await self.store.complete(task_id, worker_id, result)
        await self._finished(task)
        return task

    async def fail(self, task_id: str, worker_id: str, error: str, retry: bool) -> Task:
        """Record a failed run. :raises ApiError: 404, 409 LEASE_LOST."""
        with _leased(task_id):
            task = await self.store.fail(task_id, worker_id, error, retry, self.options.backoff)
        await self._settled(task)
        return task

    async def release(self, task_id: str, worker_id: str) -> Task:
        """Hand a task back unrun. :raises ApiError: 404, 409 LEASE_LOST."""
        with _leased(task_id):
            task = await self.store.release(task_id, worker_id)
        await self._settled(task)
        return task

    async def _settled(self, task: Task) -> None:
        """After a run ended without a result: archived, or ready again for a worker."""
        if task.state == ARCHIVED:
            await self._finished(task)
        else:
            self.notifier.ready(task.queue)

    async def save_worker(self, worker: Worker) -> Worker:
        """Record a registration or a heartbeat, stamped with the store's clock (a
        heartbeat that names no queue keeps the one registered)."""
        if not worker.queue:
            known = await self.store.worker(worker.worker_id)
            worker.queue = known.queue if known is not None else ""
        worker.started_at = worker.last_beat = await self.store.now()
        return await self.store.save_worker(worker)

    async def _finished(self, task: Task | Settled) -> None:
        self.notifier.finished(task.id)
        for listener in self.on_finished:
            try:
                await listener(task)
            except Exception:
                self.log.exception("a listener of finished tasks failed")

    # Maintenance ------------------------------------------------------------------------

    async def sweep_once(self) -> None:
        """One maintenance pass, and the wake-ups it calls for."""
        if await self.store.lost_data():
            await self._recover_from_loss()
        done = await self.store.sweep(self.options.backoff, self.options.forget_after)
        if done.ready:
            self.notifier.ready_anywhere()
        for task_id in done.finished:
            self.notifier.finished(task_id)
        if done.expired_leases or done.timed_out or done.pending_timeouts:
            self.log.info(
                "swept: %d lease(s) expired, %d timed out, %d pending too long",
                done.expired_leases,
                done.timed_out,
                done.pending_timeouts,
            )

    async def _recover_from_loss(self) -> None:
        """Say what a data loss of the backend took, and write the file-defined queues
        again at once (workers would otherwise meet QUEUE_NOT_FOUND)."""
        self.log.error(
            "the queues' Redis lost its data (restarted without persistence, or flushed): "
            "every task it held, their results and the queues defined through the API are "
            "gone; writing the queues of the configuration files again"
        )
        report = await self.registry.load_files()
        for problem in report.errors:
            self.log.error("after the loss: %s", problem)
        self.notifier.ready_anywhere()

    async def _sweep_forever(self) -> None:
        failing = False
        while not self._closing.is_set():
            try:
                await self.sweep_once()
                if failing:
                    self.log.info("the queue sweeper works again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # once per outage, not once per second
                    self.log.error("the queue sweeper failed: %r", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.options.sweep_seconds)


def check_request(request: Request) -> None:
    """Refuse task options out of their bounds (docs/queues.md, "Limits"), whoever asks:
    a route's body or another plugin calling `Queues.enqueue`.

    :raises ValueError: naming the option.
    """
    for name in ("timeout", "process_in", "retention"):
        value = getattr(request, name)
        if value is not None:
            check_seconds(name, value)
    if request.unique_ttl is not None:
        check_seconds("unique_ttl", request.unique_ttl, allow_zero=False)
    if request.process_at is not None and not (
        is_finite_number(request.process_at) and 0 <= request.process_at <= MAX_UNIX
    ):
        raise ValueError("process_at must be Unix seconds between 1970 and 9999")
    if request.max_retry is not None and (
        isinstance(request.max_retry, bool)
        or not isinstance(request.max_retry, int)
        or not 0 <= request.max_retry <= MAX_RETRY
    ):
        raise ValueError(f"max_retry must be an integer from 0 to {MAX_RETRY}")


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def _unique_key(queue: str, task_type: str | None, payload: Any) -> str:
    """asynq's automatic unique key: the queue, the type and a digest of the payload."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{queue}:{task_type or ''}:{digest}"


async def _wait(event: asyncio.Event, stop: asyncio.Event | None, seconds: float) -> None:
    """Until `event` or `stop` is set, or `seconds` have passed."""
    if stop is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


@contextlib.contextmanager
def _leased(task_id: str) -> Iterator[None]:
    """Answer a worker's call on a task it leased: 404 for an unknown task, 409
    LEASE_LOST for one whose lease went to someone else."""
    try:
        yield
    except TaskNotFound:
        raise errors.task_not_found(task_id) from None
    except LeaseLost:
        raise errors.lease_lost(task_id) from None
