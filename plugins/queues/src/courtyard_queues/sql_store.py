"""The SQL task store: tasks in the runtime's database (SQLite by default, or PostgreSQL).

Every change of a task's state is a conditional `UPDATE ... RETURNING` (the condition is
the state it changes from, and for a worker's report the lease owner), so it is atomic
on both databases without reading first. Dequeue picks the oldest pending task with a
sub-select; on PostgreSQL the sub-select is `FOR UPDATE SKIP LOCKED`, so concurrent
dequeuers on several instances skip each other's rows instead of waiting. SQLite has
one writer at a time: every write transaction here starts with its write (SQLite then
takes its lock at once, so a transaction never reads a state that another writer
changes before it commits), and this process queues its own writers on an asyncio lock
rather than letting them spin on the database lock.

The clock is this process's: instances sharing a PostgreSQL database need synchronized
clocks (NTP), as leases are measured in seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from courtyard_sdk.services import Database
from sqlalchemy import and_, case, delete, exists, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .store import (
    ACTIVE,
    ARCHIVED,
    CANCELLED,
    COMPLETED,
    FINISHED,
    LEASE_EXPIRED,
    PENDING,
    PENDING_TIMEOUT,
    RETRY,
    SCHEDULED,
    TIMED_OUT,
    Backoff,
    Duplicate,
    Exchange,
    LeaseLost,
    NewTask,
    Page,
    QueueStats,
    Renewal,
    Report,
    Settled,
    StoredConfig,
    Sweep,
    Task,
    TaskActive,
    TaskFinished,
    TaskNotFound,
    Worker,
)
from .tables import CONFIGS, COUNTERS, META, PAUSED, TASKS, UNIQUE, WORKERS

T = TASKS.c
WAITING = (PENDING, SCHEDULED, RETRY)


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _task(row: Any) -> Task:
    data = row._mapping
    return Task(
        id=data["id"],
        queue=data["queue"],
        type=data["type"],
        payload=json.loads(data["payload"]),
        state=data["state"],
        timeout=data["timeout"],
        max_retry=data["max_retry"],
        retry_count=data["retry_count"],
        last_error=data["last_error"],
        last_failed_at=data["last_failed_at"],
        result=None if data["result"] is None else json.loads(data["result"]),
        has_result=data["result"] is not None,
        unique_key=data["unique_key"],
        process_at=data["process_at"],
        lease_owner=data["lease_owner"],
        lease_expires_at=data["lease_expires_at"],
        started_at=data["started_at"],
        deadline=data["deadline"],
        cancel_requested=bool(data["cancel_requested"]),
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        completed_at=data["completed_at"],
        expires_at=data["expires_at"],
        retention=data["retention"],
        archived_retention=data["archived_retention"],
        pending_timeout=data["pending_timeout"],
    )


def _until(now: float, seconds: Any) -> Any:
    """SQL for `now + seconds`, NULL (never) when `seconds` is 0."""
    return case((seconds > 0, literal(now) + seconds), else_=None)


class SqlTaskStore:
    """`TaskStore` on the runtime's database; see the module docstring."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.postgres = db.dialect == "postgresql"
        self._lock = None if self.postgres else asyncio.Lock()
        self._insert = postgresql.insert if self.postgres else sqlite.insert

    async def start(self) -> None:
        """Check that the tables are there (the migrations made them)."""
        async with self.db.engine.connect() as conn:
            await conn.execute(select(func.count()).select_from(META))

    async def close(self) -> None:
        """Nothing to release: the engine is the runtime's."""

    async def durability_warning(self) -> str | None:
        """None: the database's own durability holds (a commit is on disk)."""
        return None

    async def lost_data(self) -> bool:
        """False: a database does not lose committed rows by restarting."""
        return False

    async def now(self) -> float:
        """This process's clock."""
        return self.clock()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._lock is None:
            async with self.db.engine.begin() as conn:
                yield conn
            return
        async with self._lock, self.db.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.engine.connect() as conn:
            yield conn

    # Tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: list[NewTask]) -> list[Task | Duplicate]:
        """See `TaskStore.enqueue`: one transaction for the whole batch."""
        now = self.clock()
        outcomes: list[Task | Duplicate] = []
        rows: list[dict[str, Any]] = []
        async with self._write() as conn:
            for new in tasks:
                if new.unique_key and new.unique_ttl > 0:
                    holder = await self._hold_unique(conn, new, now)
                    if holder is not None:
                        outcomes.append(Duplicate(new.unique_key, holder))
                        continue
                row = self._new_row(new, now)
                rows.append(row)
                outcomes.append(_task_from_new(row, new))
            if rows:
                await conn.execute(insert(TASKS), rows)
                # A counters row per queue that ever held a task: the list of known queues
                # (DO NOTHING takes no lock on an existing row).
                for queue in sorted({row["queue"] for row in rows}):
                    await conn.execute(
                        self._insert(COUNTERS)
                        .values(queue=queue, processed=0, failed=0)
                        .on_conflict_do_nothing(index_elements=["queue"])
                    )
        return outcomes

    async def _hold_unique(self, conn: AsyncConnection, new: NewTask, now: float) -> str | None:
        """Take `new`'s unique key; the id of the task holding it when it is taken."""
        assert new.unique_key is not None
        await conn.execute(
            delete(UNIQUE).where(UNIQUE.c.key == new.unique_key, UNIQUE.c.expires_at <= now)
        )
        taken = await conn.execute(
            self._insert(UNIQUE)
            .values(key=new.unique_key, task_id=new.id, expires_at=now + new.unique_ttl)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        if taken.rowcount:
            return None
        holder = await conn.scalar(select(UNIQUE.c.task_id).where(UNIQUE.c.key == new.unique_key))
        return holder or ""

    def _new_row(self, new: NewTask, now: float) -> dict[str, Any]:
        scheduled = new.process_at is not None and new.process_at > now
        return {
            "id": new.id,
            "queue": new.queue,
            "type": new.type,
            "payload": dumps(new.payload),
            "state": SCHEDULED if scheduled else PENDING,
            "timeout": float(new.timeout),
            "max_retry": new.max_retry,
            "retry_count": 0,
            "last_error": None,
            "last_failed_at": None,
            "result": None,
            "unique_key": new.unique_key if new.unique_ttl > 0 else None,
            "process_at": new.process_at if scheduled else None,
            "ready_at": None if scheduled else now,
            "lease_owner": None,
            "lease_expires_at": None,
            "started_at": None,
            "deadline": None,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
            "expires_at": None,
            "retention": float(new.retention),
            "archived_retention": float(new.archived_retention),
            "pending_timeout": float(new.pending_timeout),
            "pending_deadline": (
                now + new.pending_timeout if new.pending_timeout > 0 and not scheduled else None
            ),
        }

    async def get(self, task_id: str) -> Task | None:
        """See `TaskStore.get`."""
        async with self._read() as conn:
            row = (await conn.execute(select(TASKS).where(T.id == task_id))).first()
        return None if row is None else _task(row)

    async def dequeue(self, queues: list[str], worker_id: str, lease: float) -> Task | None:
        """See `TaskStore.dequeue`."""
        if not queues:
            return None
        now = self.clock()
        async with self._write() as conn:
            for queue in queues:
                leased = await self._lease(conn, queue, worker_id, lease, now, 1)
                if leased:
                    return leased[0]
        return None

    async def _lease(
        self,
        conn: AsyncConnection,
        queue: str,
        worker_id: str,
        lease: float,
        now: float,
        limit: int,
    ) -> list[Task]:
        """Lease the `limit` oldest pending tasks of `queue` (none while it is paused) in
        one statement; oldest first."""
        oldest = (
            select(T.seq)
            .where(
                T.queue == queue,
                T.state == PENDING,
                ~exists().where(PAUSED.c.queue == queue),
            )
            .order_by(T.ready_at, T.seq)
            .limit(limit)
        )
        if self.postgres:
            oldest = oldest.with_for_update(skip_locked=True)
        if limit == 1:
            condition = T.seq == oldest.scalar_subquery()
        elif self.postgres:
            # A materialized CTE: PostgreSQL may run an `IN (...)` sub-select more than
            # once, and with SKIP LOCKED each run can pick other rows (and lease more).
            picked = oldest.cte("picked").prefix_with("MATERIALIZED")
            condition = T.seq == picked.c.seq
        else:
            condition = T.seq.in_(oldest)
        rows = (
            await conn.execute(
                update(TASKS)
                .where(condition, T.state == PENDING)
                .values(
                    state=ACTIVE,
                    lease_owner=worker_id,
                    lease_expires_at=now + lease,
                    started_at=now,
                    deadline=_until(now, T.timeout),
                    pending_deadline=None,
                    cancel_requested=False,
                    updated_at=now,
                )
                .returning(*TASKS.c)
            )
        ).all()
        # RETURNING follows no order: hand them over oldest first, as they were queued.
        rows.sort(key=lambda row: (row.ready_at or 0.0, row.seq))
        return [_task(row) for row in rows]

    async def exchange(
        self,
        worker_id: str,
        reports: list[Report],
        orders: list[list[str]],
        lease: float,
        count: int,
        backoff: Backoff,
    ) -> Exchange:
        """See `TaskStore.exchange`: one transaction; a queue's tasks are leased by one
        statement when one order serves every lease (one queue, or strict priorities)."""
        settled: list[Settled | TaskNotFound | LeaseLost] = []
        leased: list[Task] = []
        now = self.clock()
        async with self._write() as conn:
            processed: Counter[str] = Counter()
            for report in reports:
                outcome: Settled | None
                if report.error is None:
                    task = await self._complete(conn, report.task_id, worker_id, report.result, now)
                    if task is not None:
                        processed[task.queue] += 1
                else:
                    task = await self._fail(
                        conn, report.task_id, worker_id, report.error, report.retry, backoff
                    )
                outcome = None if task is None else Settled(task.id, task.queue, task.state)
                if outcome is None:
                    lost = await self._lost(conn, report.task_id)
                    assert isinstance(lost, TaskNotFound | LeaseLost)
                    settled.append(lost)
                else:
                    settled.append(outcome)
            if processed:
                await self._count(conn, processed, Counter())
            if count > 0 and orders and orders[0]:
                leased = await self._lease_many(conn, orders, worker_id, lease, now, count)
        return Exchange(settled, leased)

    async def _complete(
        self, conn: AsyncConnection, task_id: str, worker_id: str, result: Any, now: float
    ) -> Task | None:
        """Record `result` for a task `worker_id` holds, and free its unique key; None when
        it holds no such task (the caller counts it as processed)."""
        row = (
            await conn.execute(
                update(TASKS)
                .where(self._owned(task_id, worker_id))
                .values(
                    state=COMPLETED,
                    result=dumps(result),
                    completed_at=now,
                    expires_at=_until(now, T.retention),
                    lease_expires_at=None,
                    deadline=None,
                    updated_at=now,
                )
                .returning(*TASKS.c)
            )
        ).first()
        if row is None:
            return None
        task = _task(row)
        await self._release_unique(conn, [task])
        return task

    async def _lease_many(
        self,
        conn: AsyncConnection,
        orders: list[list[str]],
        worker_id: str,
        lease: float,
        now: float,
        count: int,
    ) -> list[Task]:
        leased: list[Task] = []
        if len(orders) == 1:
            for queue in orders[0]:
                if len(leased) >= count:
                    break
                leased += await self._lease(conn, queue, worker_id, lease, now, count - len(leased))
            return leased
        empty: set[str] = set()
        for k in range(count):
            found: list[Task] = []
            for queue in orders[min(k, len(orders) - 1)]:
                if queue in empty:
                    continue
                found = await self._lease(conn, queue, worker_id, lease, now, 1)
                if found:
                    break
                empty.add(queue)
            if not found:
                break  # every queue is empty or paused
            leased += found
        return leased

    async def _lost(self, conn: AsyncConnection, task_id: str) -> Exception:
        known = await conn.scalar(select(T.state).where(T.id == task_id))
        return TaskNotFound(task_id) if known is None else LeaseLost(task_id)

    def _owned(self, task_id: str, worker_id: str | None) -> Any:
        condition = and_(T.id == task_id, T.state == ACTIVE)
        return condition if worker_id is None else and_(condition, T.lease_owner == worker_id)

    async def renew(self, task_id: str, worker_id: str, lease: float) -> Renewal:
        """See `TaskStore.renew`."""
        now = self.clock()
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(TASKS)
                    .where(self._owned(task_id, worker_id))
                    .values(lease_expires_at=now + lease, updated_at=now)
                    .returning(T.lease_expires_at, T.cancel_requested)
                )
            ).first()
            if row is None:
                raise await self._lost(conn, task_id)
        return Renewal(lease_expires_at=row[0], cancel=bool(row[1]))

    async def complete(self, task_id: str, worker_id: str, result: Any) -> Task:
        """See `TaskStore.complete`."""
        async with self._write() as conn:
            task = await self._complete(conn, task_id, worker_id, result, self.clock())
            if task is None:
                raise await self._lost(conn, task_id)
            await self._count(conn, Counter({task.queue: 1}), Counter())
        return task

    async def fail(
        self, task_id: str, worker_id: str | None, error: str, retry: bool, backoff: Backoff
    ) -> Task:
        """See `TaskStore.fail`."""
        async with self._write() as conn:
            task = await self._fail(conn, task_id, worker_id, error, retry, backoff)
            if task is None:
                raise await self._lost(conn, task_id)
        return task

    async def _fail(
        self,
        conn: AsyncConnection,
        task_id: str,
        worker_id: str | None,
        error: str,
        retry: bool,
        backoff: Backoff,
    ) -> Task | None:
        now = self.clock()
        # A write that changes nothing takes the row (PostgreSQL) or the database (SQLite)
        # before the retry count is read.
        locked = (
            await conn.execute(
                update(TASKS)
                .where(self._owned(task_id, worker_id))
                .values(updated_at=now)
                .returning(T.retry_count, T.max_retry, T.cancel_requested)
            )
        ).first()
        if locked is None:
            return None
        retry_count, max_retry, cancelled = locked
        done = {"lease_expires_at": None, "deadline": None, "last_failed_at": now}
        if retry and not cancelled and retry_count < max_retry:
            delay = backoff.delay(retry_count + 1)
            values = {
                **done,
                "retry_count": retry_count + 1,
                "last_error": error,
                "started_at": None,
                **self._waiting_values(now, delay),
            }
        else:
            values = {
                **done,
                "state": ARCHIVED,
                "last_error": CANCELLED if cancelled else error,
                "expires_at": _until(now, T.archived_retention),
            }
        row = (
            await conn.execute(
                update(TASKS).where(T.id == task_id).values(**values).returning(*TASKS.c)
            )
        ).first()
        task = _task(row)
        if task.state == ARCHIVED:
            await self._release_unique(conn, [task])
        await self._count(conn, Counter({task.queue: 1}), Counter({task.queue: 1}))
        return task

    @staticmethod
    def _waiting_values(now: float, delay: float) -> dict[str, Any]:
        """A retry: pending at once without a delay, else `retry` until it is due."""
        if delay <= 0:
            return {
                "state": PENDING,
                "process_at": None,
                "ready_at": now,
                "pending_deadline": _until(now, T.pending_timeout),
            }
        return {"state": RETRY, "process_at": now + delay, "ready_at": None}

    async def release(self, task_id: str, worker_id: str) -> Task:
        """See `TaskStore.release`: back to the head of its queue (its old `ready_at`)."""
        now = self.clock()
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(TASKS)
                    .where(self._owned(task_id, worker_id), ~T.cancel_requested)
                    .values(
                        state=PENDING,
                        lease_owner=None,
                        lease_expires_at=None,
                        started_at=None,
                        deadline=None,
                        pending_deadline=_until(now, T.pending_timeout),
                        updated_at=now,
                    )
                    .returning(*TASKS.c)
                )
            ).first()
            if row is not None:
                return _task(row)
            # A cancelled task is not handed back: it ends as cancelled.
            row = (
                await conn.execute(
                    update(TASKS)
                    .where(self._owned(task_id, worker_id))
                    .values(**self._cancelled_values(now))
                    .returning(*TASKS.c)
                )
            ).first()
            if row is None:
                raise await self._lost(conn, task_id)
            task = _task(row)
            await self._release_unique(conn, [task])
        return task

    @staticmethod
    def _cancelled_values(now: float) -> dict[str, Any]:
        return {
            "state": ARCHIVED,
            "last_error": CANCELLED,
            "last_failed_at": now,
            "lease_expires_at": None,
            "deadline": None,
            "process_at": None,
            "pending_deadline": None,
            "expires_at": _until(now, T.archived_retention),
            "updated_at": now,
        }

    async def cancel(self, task_id: str) -> Task:
        """See `TaskStore.cancel`."""
        now = self.clock()
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(TASKS)
                    .where(T.id == task_id, T.state.in_(WAITING))
                    .values(**self._cancelled_values(now))
                    .returning(*TASKS.c)
                )
            ).first()
            if row is not None:
                task = _task(row)
                await self._release_unique(conn, [task])
                return task
            row = (
                await conn.execute(
                    update(TASKS)
                    .where(T.id == task_id, T.state == ACTIVE)
                    .values(cancel_requested=True, updated_at=now)
                    .returning(*TASKS.c)
                )
            ).first()
            if row is not None:
                return _task(row)
            state = await conn.scalar(select(T.state).where(T.id == task_id))
        if state is None:
            raise TaskNotFound(task_id)
        raise TaskFinished(state)

    async def delete(self, queue: str, task_id: str) -> None:
        """See `TaskStore.delete`."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    delete(TASKS)
                    .where(T.id == task_id, T.queue == queue, T.state != ACTIVE)
                    .returning(*TASKS.c)
                )
            ).first()
            if row is not None:
                await self._release_unique(conn, [_task(row)])
                return
            state = await conn.scalar(select(T.state).where(T.id == task_id, T.queue == queue))
        if state is None:
            raise TaskNotFound(task_id)
        raise TaskActive(task_id)

    async def list_tasks(self, queue: str, state: str, limit: int, cursor: str | None) -> Page:
        """See `TaskStore.list_tasks`; the cursor is the last task's `seq`."""
        after = int(cursor) if cursor else 0
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(TASKS)
                    .where(T.queue == queue, T.state == state, T.seq > after)
                    .order_by(T.seq)
                    .limit(limit + 1)
                )
            ).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_task(r) for r in rows], str(rows[-1].seq) if more else None)

    async def _release_unique(self, conn: AsyncConnection, tasks: Iterable[Task]) -> None:
        for task in tasks:
            if task.unique_key:
                await conn.execute(
                    delete(UNIQUE).where(
                        UNIQUE.c.key == task.unique_key, UNIQUE.c.task_id == task.id
                    )
                )

    async def _count(self, conn: AsyncConnection, processed: Counter, failed: Counter) -> None:
        for queue in sorted(processed.keys() | failed.keys()):  # one lock order: no deadlock
            stmt = self._insert(COUNTERS).values(
                queue=queue, processed=processed[queue], failed=failed[queue]
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["queue"],
                    set_={
                        "processed": COUNTERS.c.processed + stmt.excluded.processed,
                        "failed": COUNTERS.c.failed + stmt.excluded.failed,
                    },
                )
            )

    # Queues -----------------------------------------------------------------------------

    async def pause(self, queue: str) -> None:
        """See `TaskStore.pause`."""
        async with self._write() as conn:
            await conn.execute(
                self._insert(PAUSED)
                .values(queue=queue, paused_at=self.clock())
                .on_conflict_do_nothing(index_elements=["queue"])
            )

    async def unpause(self, queue: str) -> None:
        """See `TaskStore.unpause`."""
        async with self._write() as conn:
            await conn.execute(delete(PAUSED).where(PAUSED.c.queue == queue))

    async def queues(self) -> list[str]:
        """See `TaskStore.queues`: the queues with a counters row (made at enqueue)."""
        async with self._read() as conn:
            return list(await conn.scalars(select(COUNTERS.c.queue).order_by(COUNTERS.c.queue)))

    async def stats(self, queues: list[str]) -> dict[str, QueueStats]:
        """See `TaskStore.stats`."""
        found = {queue: QueueStats(queue) for queue in queues}
        async with self._read() as conn:
            counts = await conn.execute(
                select(T.queue, T.state, func.count())
                .where(T.queue.in_(queues))
                .group_by(T.queue, T.state)
            )
            for queue, state, count in counts:
                setattr(found[queue], state, count)
            for (queue,) in await conn.execute(
                select(PAUSED.c.queue).where(PAUSED.c.queue.in_(queues))
            ):
                found[queue].paused = True
            for queue, processed, failed in await conn.execute(
                select(COUNTERS.c.queue, COUNTERS.c.processed, COUNTERS.c.failed).where(
                    COUNTERS.c.queue.in_(queues)
                )
            ):
                found[queue].processed, found[queue].failed = processed, failed
        return found

    async def sweep(self, backoff: Backoff, worker_ttl: float) -> Sweep:
        """See `TaskStore.sweep`."""
        now = self.clock()
        done = Sweep()
        if not await self._sweep_due(now, worker_ttl):
            return done
        async with self._write() as conn:
            promoted = await conn.execute(
                update(TASKS)
                .where(T.state.in_((SCHEDULED, RETRY)), T.process_at <= now)
                .values(
                    state=PENDING,
                    ready_at=T.process_at,
                    process_at=None,
                    pending_deadline=_until(now, T.pending_timeout),
                    updated_at=now,
                )
            )
            done.promoted = promoted.rowcount or 0
            await self._expire_leases(conn, now, done)
            timed_out = (
                await conn.execute(
                    select(T.id).where(T.state == ACTIVE, T.deadline.is_not(None), T.deadline < now)
                )
            ).all()
            for (task_id,) in timed_out:
                task = await self._fail(conn, task_id, None, TIMED_OUT, True, backoff)
                if task is not None:
                    done.timed_out += 1
                    if task.state == ARCHIVED:
                        done.finished.append(task.id)
            stale = [
                _task(row)
                for row in await conn.execute(
                    update(TASKS)
                    .where(T.state == PENDING, T.pending_deadline <= now)
                    .values(
                        **self._cancelled_values(now),
                    )
                    .values(last_error=PENDING_TIMEOUT)
                    .returning(*TASKS.c)
                )
            ]
            done.pending_timeouts = len(stale)
            done.finished += [task.id for task in stale]
            await self._release_unique(conn, stale)
            deleted = await conn.execute(
                delete(TASKS).where(T.state.in_(FINISHED), T.expires_at <= now)
            )
            done.deleted = deleted.rowcount or 0
            await conn.execute(delete(UNIQUE).where(UNIQUE.c.expires_at <= now))
            gone = await conn.execute(delete(WORKERS).where(WORKERS.c.last_beat < now - worker_ttl))
            done.workers_removed = gone.rowcount or 0
        return done

    async def _sweep_due(self, now: float, worker_ttl: float) -> bool:
        """Whether a sweep has anything to do: a read, so an idle sweep writes nothing."""
        checks = [
            exists().where(T.state.in_((SCHEDULED, RETRY)), T.process_at <= now),
            exists().where(T.state == ACTIVE, T.lease_expires_at < now),
            exists().where(T.state == ACTIVE, T.deadline < now),
            exists().where(T.pending_deadline <= now, T.state == PENDING),
            exists().where(T.expires_at <= now),
            exists().where(UNIQUE.c.expires_at <= now),
            exists().where(WORKERS.c.last_beat < now - worker_ttl),
        ]
        async with self._read() as conn:
            row = (
                await conn.execute(select(*[c.label(f"c{i}") for i, c in enumerate(checks)]))
            ).one()
        return any(row)

    async def _expire_leases(self, conn: AsyncConnection, now: float, done: Sweep) -> None:
        """Put back the tasks whose worker stopped renewing: archived when cancelled or
        out of retries, else pending at once (a crash is rarely the task's fault, but it
        counts as a retry, so that a task that kills its worker ends archived)."""
        expired = and_(T.state == ACTIVE, T.lease_expires_at < now)
        finished: list[Task] = []
        for condition, error in (
            (T.cancel_requested, CANCELLED),
            (T.retry_count >= T.max_retry, LEASE_EXPIRED),
        ):
            finished += [
                _task(row)
                for row in await conn.execute(
                    update(TASKS)
                    .where(expired, condition)
                    .values(**self._cancelled_values(now))
                    .values(last_error=error)
                    .returning(*TASKS.c)
                )
            ]
        back = [
            _task(row)
            for row in await conn.execute(
                update(TASKS)
                .where(expired)
                .values(
                    state=PENDING,
                    retry_count=T.retry_count + 1,
                    last_error=LEASE_EXPIRED,
                    last_failed_at=now,
                    lease_expires_at=None,
                    started_at=None,
                    deadline=None,
                    ready_at=now,
                    pending_deadline=_until(now, T.pending_timeout),
                    updated_at=now,
                )
                .returning(*TASKS.c)
            )
        ]
        await self._release_unique(conn, finished)
        every = Counter(task.queue for task in finished + back)
        await self._count(conn, every, every)
        done.expired_leases = len(finished) + len(back)
        done.finished += [task.id for task in finished]

    # Workers ----------------------------------------------------------------------------

    async def save_worker(self, worker: Worker) -> Worker:
        """See `TaskStore.save_worker`."""
        values = {
            "worker_id": worker.worker_id,
            "queue": worker.queue,
            "status": worker.status,
            "started_at": worker.started_at,
            "last_beat": worker.last_beat,
            "concurrency": worker.concurrency,
            "active_tasks": dumps(worker.active_tasks),
            "hostname": worker.hostname,
            "version": worker.version,
        }
        stmt = self._insert(WORKERS).values(**values)
        async with self._write() as conn:
            row = (
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["worker_id"],
                        set_={k: stmt.excluded[k] for k in values if k != "started_at"},
                    ).returning(*WORKERS.c)
                )
            ).one()
        return _worker(row)

    async def workers(self) -> list[Worker]:
        """See `TaskStore.workers`."""
        async with self._read() as conn:
            rows = await conn.execute(select(WORKERS).order_by(WORKERS.c.worker_id))
            return [_worker(row) for row in rows]

    async def worker(self, worker_id: str) -> Worker | None:
        """See `TaskStore.worker`."""
        async with self._read() as conn:
            row = (
                await conn.execute(select(WORKERS).where(WORKERS.c.worker_id == worker_id))
            ).first()
        return None if row is None else _worker(row)

    # Configs ----------------------------------------------------------------------------

    async def config_version(self) -> int:
        """See `TaskStore.config_version`."""
        async with self._read() as conn:
            value = await conn.scalar(select(META.c.value).where(META.c.key == "config_version"))
        return int(value or 0)

    async def configs(self) -> list[StoredConfig]:
        """See `TaskStore.configs`."""
        async with self._read() as conn:
            rows = await conn.execute(select(CONFIGS).order_by(CONFIGS.c.name))
            return [
                StoredConfig(
                    name=row.name,
                    source=row.source,
                    document=json.loads(row.document),
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                )
                for row in rows
            ]

    async def put_config(self, config: StoredConfig) -> None:
        """See `TaskStore.put_config`."""
        now = self.clock()
        stmt = self._insert(CONFIGS).values(
            name=config.name,
            source=config.source,
            document=dumps(config.document),
            created_at=now,
            updated_at=now,
        )
        async with self._write() as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={
                        "source": stmt.excluded.source,
                        "document": stmt.excluded.document,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
            )
            await self._bump(conn)

    async def delete_config(self, name: str) -> bool:
        """See `TaskStore.delete_config`."""
        async with self._write() as conn:
            gone = await conn.execute(delete(CONFIGS).where(CONFIGS.c.name == name))
            if not gone.rowcount:
                return False
            await self._bump(conn)
        return True

    async def _bump(self, conn: AsyncConnection) -> None:
        stmt = self._insert(META).values(key="config_version", value=1)
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["key"], set_={"value": META.c.value + 1})
        )


def _task_from_new(row: dict[str, Any], new: NewTask) -> Task:
    return Task(
        id=new.id,
        queue=new.queue,
        type=new.type,
        payload=new.payload,
        state=row["state"],
        timeout=row["timeout"],
        max_retry=new.max_retry,
        unique_key=row["unique_key"],
        process_at=row["process_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        retention=new.retention,
        archived_retention=new.archived_retention,
        pending_timeout=new.pending_timeout,
    )


def _worker(row: Any) -> Worker:
    return Worker(
        worker_id=row.worker_id,
        queue=row.queue,
        status=row.status,
        started_at=row.started_at,
        last_beat=row.last_beat,
        concurrency=row.concurrency,
        active_tasks=json.loads(row.active_tasks),
        hostname=row.hostname,
        version=row.version,
    )
