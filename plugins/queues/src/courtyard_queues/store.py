"""The task store: one interface, two backends (`sql_store.SqlTaskStore` on the
runtime's database, `redis_store.RedisTaskStore` on Redis), and the types they share.

Task states are runqy's (asynq's): `pending` (ready to run), `scheduled` (waiting for
its `process_at`), `active` (leased to a worker), `retry` (failed, waiting for its next
attempt), `completed` and `archived` (failed for good, or cancelled before it ran).

Every change of state is atomic in the store: a conditional update on SQL, one Lua
script on Redis. A task is never handed to two workers at once; a worker that lost its
lease (it expired and the task went back) gets `LeaseLost` for anything it reports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

PENDING = "pending"
SCHEDULED = "scheduled"
ACTIVE = "active"
RETRY = "retry"
COMPLETED = "completed"
ARCHIVED = "archived"
STATES = (PENDING, ACTIVE, SCHEDULED, RETRY, ARCHIVED, COMPLETED)
FINISHED = (COMPLETED, ARCHIVED)

CANCELLED = "cancelled"  # the last_error of a task archived by a cancel
LEASE_EXPIRED = "lease expired: the worker stopped renewing it"
TIMED_OUT = "timeout: the task ran longer than its timeout"
PENDING_TIMEOUT = "pending timeout: no worker took the task in time"


class StoreError(Exception):
    """Base class of the store's refusals."""


class TaskNotFound(StoreError):
    """No task has that id (or it was deleted, or its retention ran out)."""


class LeaseLost(StoreError):
    """The task is not active under this worker's lease any more."""


class TaskActive(StoreError):
    """The operation is not allowed while a worker runs the task."""


class TaskFinished(StoreError):
    """The task is completed or archived already."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


@dataclass(frozen=True)
class Backoff:
    """Delays before retries: `base * 2**(n-1)` for the n-th retry, capped at `cap`,
    with `jitter` (a fraction) either way so that retries of a burst spread out."""

    base: float = 5.0
    cap: float = 600.0
    jitter: float = 0.1

    def delay(self, retry: int, rand: float | None = None) -> float:
        """Seconds before retry number `retry` (1 for the first)."""
        raw = min(self.cap, self.base * 2 ** max(0, retry - 1))
        spread = (2 * (random.random() if rand is None else rand) - 1) * self.jitter
        return max(0.0, raw * (1 + spread))


@dataclass(frozen=True)
class NewTask:
    """A task to enqueue, with every lifecycle value resolved (see `service`).

    :ivar queue: the full sub-queue name (`inference.high`).
    :ivar timeout: seconds a run may take (0: no limit).
    :ivar process_at: Unix time before which it does not run (None: now).
    :ivar unique_key: with `unique_ttl`, refuse another task with this key while this
        one is not finished, for at most `unique_ttl` seconds.
    :ivar retention: seconds a completed task is kept (0: forever).
    :ivar archived_retention: seconds an archived task is kept (0: forever).
    :ivar pending_timeout: seconds it may wait in `pending` before it is archived
        (0: forever).
    """

    id: str
    queue: str
    type: str
    payload: Any
    timeout: float = 0.0
    max_retry: int = 3
    process_at: float | None = None
    unique_key: str | None = None
    unique_ttl: float = 0.0
    retention: float = 86400.0
    archived_retention: float = 259200.0
    pending_timeout: float = 0.0


@dataclass
class Task:
    """A stored task. Times are Unix seconds."""

    id: str
    queue: str
    type: str
    payload: Any
    state: str
    timeout: float = 0.0
    max_retry: int = 3
    retry_count: int = 0
    last_error: str | None = None
    last_failed_at: float | None = None
    result: Any = None
    has_result: bool = False
    unique_key: str | None = None
    process_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    started_at: float | None = None
    deadline: float | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    completed_at: float | None = None
    expires_at: float | None = None
    retention: float = 86400.0
    archived_retention: float = 259200.0
    pending_timeout: float = 0.0


@dataclass(frozen=True)
class Report:
    """A worker's report on a task it ran: a completion with `result`, or a failure when
    `error` is not None (retried after the backoff when `retry` and retries remain)."""

    task_id: str
    result: Any = None
    error: str | None = None
    retry: bool = True


@dataclass(frozen=True)
class Settled:
    """A report the store recorded: the task, its queue and its new state."""

    id: str
    queue: str
    state: str


@dataclass
class Exchange:
    """What one `TaskStore.exchange` did: an outcome per report, in order (`Settled`, or
    the refusal: `TaskNotFound`, `LeaseLost`), and the tasks it leased, oldest first."""

    settled: list[Settled | TaskNotFound | LeaseLost]
    leased: list[Task]


@dataclass(frozen=True)
class Duplicate:
    """An enqueue refused because a task with the same unique key is still live."""

    unique_key: str
    task_id: str | None = None


@dataclass(frozen=True)
class Renewal:
    """A renewed lease: until when, and whether the task was cancelled meanwhile."""

    lease_expires_at: float
    cancel: bool


@dataclass
class QueueStats:
    """Counts of one queue's tasks by state, whether it is paused, and its counters of
    attempts that ended (`processed`) and of those that failed (`failed`)."""

    queue: str
    pending: int = 0
    active: int = 0
    scheduled: int = 0
    retry: int = 0
    archived: int = 0
    completed: int = 0
    paused: bool = False
    processed: int = 0
    failed: int = 0

    @property
    def size(self) -> int:
        """Every task the queue holds but its completed ones, as asynq counts it."""
        return self.pending + self.active + self.scheduled + self.retry + self.archived


@dataclass
class Worker:
    """A worker as the registry knows it. Times are Unix seconds."""

    worker_id: str
    queue: str
    status: str = "registered"
    started_at: float = 0.0
    last_beat: float = 0.0
    concurrency: int = 1
    active_tasks: list[str] = field(default_factory=list)
    hostname: str = ""
    version: str = ""


@dataclass(frozen=True)
class StoredConfig:
    """A queue configuration the store keeps: `source` is `api` (created through the API)
    or the path of the YAML file it was read from; `document` is the queue's YAML entry."""

    name: str
    source: str
    document: dict[str, Any]
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class Sweep:
    """What one maintenance pass did."""

    promoted: int = 0
    expired_leases: int = 0
    timed_out: int = 0
    pending_timeouts: int = 0
    deleted: int = 0
    workers_removed: int = 0
    finished: list[str] = field(default_factory=list)  # tasks that ended in this pass

    @property
    def ready(self) -> bool:
        """Whether tasks became pending (waiting dequeues should look)."""
        return bool(self.promoted or self.expired_leases)


@dataclass(frozen=True)
class Page:
    """One page of a task listing; `cursor` continues it (None: the last page)."""

    tasks: list[Task]
    cursor: str | None


class TaskStore(Protocol):
    """What the queue service needs from a backend. Every method is safe to call from
    several runtime instances at once."""

    async def start(self) -> None:
        """Connect (and check the connection)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def durability_warning(self) -> str | None:
        """Why an acknowledged task could be lost to a restart of the backend, if it could
        (said at start)."""
        ...

    async def lost_data(self) -> bool:
        """Whether the backend lost its data since the last look (a Redis restarted
        without persistence, or flushed); a loss is reported once."""
        ...

    # Tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: list[NewTask]) -> list[Task | Duplicate]:
        """Store `tasks` (pending, or scheduled when `process_at` is in the future), each
        with its own outcome: a unique key still held gives a `Duplicate`."""
        ...

    async def get(self, task_id: str) -> Task | None:
        """The task, or None."""
        ...

    async def dequeue(self, queues: list[str], worker_id: str, lease: float) -> Task | None:
        """Lease the oldest pending task of the first queue of `queues` (in that order)
        that has one and is not paused, to `worker_id` for `lease` seconds."""
        ...

    async def exchange(
        self,
        worker_id: str,
        reports: list[Report],
        orders: list[list[str]],
        lease: float,
        count: int,
        backoff: Backoff,
    ) -> Exchange:
        """Record `reports` (each as `complete` or `fail` would, each on its own: a lost
        lease refuses that report only), then lease up to `count` tasks to `worker_id`,
        each as one `dequeue` would: the k-th tries the queues of `orders[k]` (of the
        last order when there are fewer), in that order. One round trip (Redis) or one
        transaction (SQL) for the whole exchange."""
        ...

    async def renew(self, task_id: str, worker_id: str, lease: float) -> Renewal:
        """Extend the lease. :raises LeaseLost: :raises TaskNotFound:"""
        ...

    async def complete(self, task_id: str, worker_id: str, result: Any) -> Task:
        """Record the result. :raises LeaseLost: :raises TaskNotFound:"""
        ...

    async def fail(
        self, task_id: str, worker_id: str | None, error: str, retry: bool, backoff: Backoff
    ) -> Task:
        """Record a failed attempt: `retry` with a backoff while retries remain, else
        `archived` (always archived when it was cancelled). `worker_id` None: the server
        fails it itself (a timeout). :raises LeaseLost: :raises TaskNotFound:"""
        ...

    async def release(self, task_id: str, worker_id: str) -> Task:
        """Hand the task back unrun: pending again, at the head of its queue, its retry
        count unchanged. :raises LeaseLost: :raises TaskNotFound:"""
        ...

    async def cancel(self, task_id: str) -> Task:
        """Archive a waiting task with the error `cancelled`; flag an active one so the
        worker's next renewal tells it to stop. :raises TaskNotFound: :raises TaskFinished:"""
        ...

    async def delete(self, queue: str, task_id: str) -> None:
        """Delete a task that is not active. :raises TaskNotFound: :raises TaskActive:"""
        ...

    async def list_tasks(self, queue: str, state: str, limit: int, cursor: str | None) -> Page:
        """One page of the tasks of `queue` in `state`, oldest first."""
        ...

    # Queues -----------------------------------------------------------------------------

    async def pause(self, queue: str) -> None:
        """Stop dequeues from `queue` (at once: dequeue checks it atomically)."""
        ...

    async def unpause(self, queue: str) -> None:
        """Let dequeues from `queue` go on."""
        ...

    async def queues(self) -> list[str]:
        """Every queue that ever held a task, configured or not."""
        ...

    async def stats(self, queues: list[str]) -> dict[str, QueueStats]:
        """Counts of each queue's tasks by state, paused flags and counters."""
        ...

    async def sweep(self, backoff: Backoff, worker_ttl: float) -> Sweep:
        """One maintenance pass: promote due tasks, put back tasks whose lease expired,
        fail timed-out ones, archive stale pending ones, delete finished tasks whose
        retention ran out and workers not heard from for `worker_ttl` seconds."""
        ...

    # Workers ----------------------------------------------------------------------------

    async def save_worker(self, worker: Worker) -> Worker:
        """Record a registration or a heartbeat (`started_at` is kept from the first)."""
        ...

    async def workers(self) -> list[Worker]:
        """Every worker not yet removed, by id."""
        ...

    async def worker(self, worker_id: str) -> Worker | None:
        """One worker, or None."""
        ...

    # Configs ----------------------------------------------------------------------------

    async def config_version(self) -> int:
        """A number that changes whenever a stored configuration does."""
        ...

    async def configs(self) -> list[StoredConfig]:
        """Every stored queue configuration, by name."""
        ...

    async def put_config(self, config: StoredConfig) -> None:
        """Create or replace one configuration."""
        ...

    async def delete_config(self, name: str) -> bool:
        """Delete one configuration; False when there was none."""
        ...

    async def now(self) -> float:
        """The store's clock (Unix seconds): the one leases are measured with."""
        ...
