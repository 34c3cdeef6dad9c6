"""The Redis task store: tasks shared by several runtime instances through one Redis.

Every change that touches more than one key is one Lua script (`lua/`, each prefixed with
`lua/common.lua`), so it is atomic, and times come from the Redis server's clock, the
one every instance shares. The key layout is described at the top of `common.lua`; every
key starts with the `redis_prefix` setting. Enqueues publish the queue's name on
`<prefix>:notify`, which wakes waiting dequeues on every instance.

Durability is Redis's: run it with `appendonly yes` (AOF) and a restart loses nothing
that was acknowledged (with the default `appendfsync everysec`, a crash of the Redis
host itself can lose the last second). Redis Cluster is not supported: the scripts
touch keys of many queues at once.

A Redis that lost its data (restarted without persistence, flushed) is noticed: an epoch
key (`<prefix>:epoch`, a random value) is written at start, and `lost_data` finds it gone
or changed; the service then says so and writes the file-defined queues again.
"""

from __future__ import annotations

import json
import random
import uuid
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .store import (
    LEASE_EXPIRED,
    PENDING_TIMEOUT,
    STATES,
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

SWEEP_LIMIT = 1000  # items of each kind one sweep script handles, to keep it short


def _lua(name: str) -> str:
    folder = resources.files("courtyard_queues") / "lua"
    return (folder / "common.lua").read_text("utf-8") + "\n" + (folder / name).read_text("utf-8")


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _fields(text: str) -> dict[str, str]:
    """A task's hash, as the scripts return it (`task_hash` in common.lua: JSON)."""
    return dict(json.loads(text))


def _task(task_id: str, data: dict[str, str]) -> Task:
    result = data.get("result")
    return Task(
        id=task_id,
        queue=data["queue"],
        type=data.get("type", ""),
        payload=json.loads(data["payload"]),
        state=data["state"],
        timeout=float(data.get("timeout") or 0),
        max_retry=int(float(data.get("max_retry") or 0)),
        retry_count=int(float(data.get("retry_count") or 0)),
        last_error=data.get("last_error") or None,
        last_failed_at=_float(data.get("last_failed_at")),
        result=None if result is None else json.loads(result),
        has_result=result is not None,
        unique_key=data.get("unique_key") or None,
        process_at=_float(data.get("process_at")),
        lease_owner=data.get("lease_owner") or None,
        lease_expires_at=_float(data.get("lease_expires_at")),
        started_at=_float(data.get("started_at")),
        deadline=_float(data.get("deadline")),
        cancel_requested=data.get("cancel") == "1",
        created_at=float(data.get("created_at") or 0),
        updated_at=float(data.get("updated_at") or 0),
        completed_at=_float(data.get("completed_at")),
        expires_at=_float(data.get("expires_at")),
        retention=float(data.get("retention") or 0),
        archived_retention=float(data.get("archived_retention") or 0),
        pending_timeout=float(data.get("pending_timeout") or 0),
    )


class RedisTaskStore:
    """`TaskStore` on Redis; see the module docstring."""

    def __init__(self, url: str, prefix: str = "courtyard:queues") -> None:
        self.url = url
        self.prefix = prefix
        self.client: Redis = Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._scripts: dict[str, AsyncScript] = {}
        self._epoch: str | None = None

    @property
    def notify_channel(self) -> str:
        """The channel enqueues publish queue names on."""
        return f"{self.prefix}:notify"

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            # redis-py loads it with SCRIPT LOAD on first use, and again after a restart.
            script = self._scripts[name] = self.client.register_script(_lua(f"{name}.lua"))
        return script

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._script(name)(keys=[], args=[self.prefix, *args])

    async def start(self) -> None:
        """Check that Redis answers.

        :raises ConnectionError: naming the URL (without its password).
        """
        try:
            await self.client.ping()
        except Exception as exc:
            raise ConnectionError(f"cannot reach Redis at {self.where}: {exc}") from None
        self._epoch = await self._claim_epoch()

    @property
    def where(self) -> str:
        """The server's address, without the URL's password."""
        safe = self.client.connection_pool.connection_kwargs
        return f"{safe.get('host', '?')}:{safe.get('port', '?')}"

    async def _claim_epoch(self) -> str:
        """The data's epoch: the one every instance shares, written by the first."""
        key = f"{self.prefix}:epoch"
        await self.client.set(key, uuid.uuid4().hex, nx=True)
        return str(await self.client.get(key))

    async def lost_data(self) -> bool:
        """Whether the epoch key is gone or changed since the last look (then claimed
        again, so that a loss is reported once)."""
        current = await self.client.get(f"{self.prefix}:epoch")
        if current is not None and current == self._epoch:
            return False
        self._epoch = await self._claim_epoch()
        return True

    async def durability_warning(self) -> str | None:
        """A warning when this Redis persists nothing (no AOF, no RDB save points); None
        when it does, or when it does not say (CONFIG may be disabled)."""
        try:
            aof = await self.client.config_get("appendonly")
            save = await self.client.config_get("save")
        except Exception:
            return None
        if aof.get("appendonly") == "yes" or (save.get("save") or "").strip():
            return None
        return (
            f"Redis at {self.where} persists nothing (appendonly no, no save points): a "
            "restart of it loses every task and every queue defined through the API; run "
            "it with appendonly yes"
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def now(self) -> float:
        """The Redis server's clock."""
        seconds, micros = await self.client.time()
        return seconds + micros / 1e6

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}:t:{task_id}"

    def _qkey(self, queue: str, part: str) -> str:
        return f"{self.prefix}:q:{queue}:{part}"

    @staticmethod
    def _raise(outcome: str, task_id: str) -> None:
        if outcome == "notfound":
            raise TaskNotFound(task_id)
        raise LeaseLost(task_id)

    # Tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: list[NewTask]) -> list[Task | Duplicate]:
        """See `TaskStore.enqueue`: one script per batch."""
        if not tasks:
            return []
        wire = []
        for new in tasks:
            item: dict[str, Any] = {
                "id": new.id,
                "queue": new.queue,
                "type": new.type,
                "payload": json.dumps(new.payload, separators=(",", ":"), ensure_ascii=False),
                "timeout": float(new.timeout),
                "max_retry": new.max_retry,
                "unique_ttl": float(new.unique_ttl),
                "retention": float(new.retention),
                "archived_retention": float(new.archived_retention),
                "pending_timeout": float(new.pending_timeout),
            }
            if new.process_at is not None:
                item["process_at"] = float(new.process_at)
            if new.unique_key and new.unique_ttl > 0:
                item["unique_key"] = new.unique_key
            wire.append(item)
        answers = await self._run("enqueue", json.dumps(wire))
        outcomes: list[Task | Duplicate] = []
        for new, (outcome, detail, created) in zip(tasks, answers, strict=True):
            if outcome == "dup":
                outcomes.append(Duplicate(new.unique_key or "", detail or None))
                continue
            outcomes.append(
                Task(
                    id=new.id,
                    queue=new.queue,
                    type=new.type,
                    payload=new.payload,
                    state=detail,
                    timeout=float(new.timeout),
                    max_retry=new.max_retry,
                    unique_key=new.unique_key if new.unique_ttl > 0 else None,
                    process_at=new.process_at if detail == "scheduled" else None,
                    created_at=float(created),
                    updated_at=float(created),
                    retention=new.retention,
                    archived_retention=new.archived_retention,
                    pending_timeout=new.pending_timeout,
                )
            )
        return outcomes

    async def get(self, task_id: str) -> Task | None:
        """See `TaskStore.get`."""
        data = await self.client.hgetall(self._key(task_id))
        return _task(task_id, data) if data.get("state") else None

    async def dequeue(self, queues: list[str], worker_id: str, lease: float) -> Task | None:
        """See `TaskStore.dequeue`."""
        if not queues:
            return None
        answer = await self._run("dequeue", worker_id, lease, *queues)
        if not answer:
            return None
        return _task(answer[0], _fields(answer[1]))

    async def exchange(
        self,
        worker_id: str,
        reports: list[Report],
        orders: list[list[str]],
        lease: float,
        count: int,
        backoff: Backoff,
    ) -> Exchange:
        """See `TaskStore.exchange`: one script, whose answer is one JSON text."""
        wire: list[list[Any]] = []
        for report in reports:
            if report.error is None:
                text = json.dumps(report.result, separators=(",", ":"), ensure_ascii=False)
                wire.append([report.task_id, "c", text])
            else:
                wire.append([report.task_id, "f", report.error, report.retry, random.random()])
        answer = json.loads(
            await self._run(
                "batch",
                worker_id,
                lease,
                count if orders and orders[0] else 0,
                json.dumps(wire, separators=(",", ":"), ensure_ascii=False),
                backoff.base,
                backoff.cap,
                backoff.jitter,
                json.dumps(orders, separators=(",", ":"), ensure_ascii=False),
            )
        )
        settled: list[Settled | TaskNotFound | LeaseLost] = []
        for item in answer["reports"]:
            if item[1] == "notfound":
                settled.append(TaskNotFound(item[0]))
            elif item[1] == "lost":
                settled.append(LeaseLost(item[0]))
            else:
                settled.append(Settled(item[0], item[2], item[1]))
        leased = [_task(task_id, fields) for task_id, fields in answer["tasks"]]
        return Exchange(settled, leased)

    async def _with_hash(self, name: str, task_id: str, *args: Any) -> Task:
        answer = await self._run(name, task_id, *args)
        if answer[0] != "ok":
            self._raise(answer[0], task_id)
        return _task(task_id, _fields(answer[1]))

    async def renew(self, task_id: str, worker_id: str, lease: float) -> Renewal:
        """See `TaskStore.renew`."""
        answer = await self._run("renew", task_id, worker_id, lease)
        if answer[0] != "ok":
            self._raise(answer[0], task_id)
        return Renewal(lease_expires_at=float(answer[1]), cancel=answer[2] == "1")

    async def complete(self, task_id: str, worker_id: str, result: Any) -> Task:
        """See `TaskStore.complete`."""
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
        return await self._with_hash("complete", task_id, worker_id, text)

    async def fail(
        self, task_id: str, worker_id: str | None, error: str, retry: bool, backoff: Backoff
    ) -> Task:
        """See `TaskStore.fail`."""
        return await self._with_hash(
            "fail",
            task_id,
            worker_id or "",
            error,
            "1" if retry else "0",
            backoff.base,
            backoff.cap,
            backoff.jitter,
            random.random(),
        )

    async def release(self, task_id: str, worker_id: str) -> Task:
        """See `TaskStore.release`."""
        return await self._with_hash("release", task_id, worker_id)

    async def cancel(self, task_id: str) -> Task:
        """See `TaskStore.cancel`."""
        answer = await self._run("cancel", task_id)
        if answer[0] == "notfound":
            raise TaskNotFound(task_id)
        if answer[0] == "finished":
            raise TaskFinished(answer[1])
        return _task(task_id, _fields(answer[1]))

    async def delete(self, queue: str, task_id: str) -> None:
        """See `TaskStore.delete`."""
        answer = await self._run("delete", queue, task_id)
        if answer[0] == "notfound":
            raise TaskNotFound(task_id)
        if answer[0] == "active":
            raise TaskActive(task_id)

    async def list_tasks(self, queue: str, state: str, limit: int, cursor: str | None) -> Page:
        """See `TaskStore.list_tasks`; the cursor is an offset, so a page may skip or
        repeat tasks that changed state between two calls."""
        offset = int(cursor) if cursor else 0
        if state == "pending":
            # Newest on the left: the oldest `offset`-th is at index -(offset + 1).
            ids = await self.client.lrange(
                self._qkey(queue, "pending"), -(offset + limit + 1), -(offset + 1)
            )
            ids.reverse()
        else:
            ids = await self.client.zrange(self._qkey(queue, state), offset, offset + limit)
        more = len(ids) > limit
        ids = ids[:limit]
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self._key(task_id))
            hashes = await pipe.execute()
        tasks = [_task(i, h) for i, h in zip(ids, hashes, strict=True) if h.get("state")]
        return Page(tasks, str(offset + limit) if more else None)

    # Queues -----------------------------------------------------------------------------

    async def pause(self, queue: str) -> None:
        """See `TaskStore.pause`."""
        await self.client.sadd(f"{self.prefix}:paused", queue)

    async def unpause(self, queue: str) -> None:
        """See `TaskStore.unpause`."""
        await self.client.srem(f"{self.prefix}:paused", queue)
        await self.client.publish(self.notify_channel, queue)

    async def queues(self) -> list[str]:
        """See `TaskStore.queues`."""
        return sorted(await self.client.smembers(f"{self.prefix}:queues"))

    async def stats(self, queues: list[str]) -> dict[str, QueueStats]:
        """See `TaskStore.stats`: one pipelined round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(self._qkey(queue, "pending"))
                for state in STATES[1:]:
                    pipe.zcard(self._qkey(queue, state))
                pipe.sismember(f"{self.prefix}:paused", queue)
                pipe.hmget(f"{self.prefix}:counters:{queue}", "processed", "failed")
            answers = await pipe.execute()
        found: dict[str, QueueStats] = {}
        width = len(STATES) + 2
        for index, queue in enumerate(queues):
            row = answers[index * width : (index + 1) * width]
            stats = QueueStats(queue)
            for state, count in zip(STATES, row, strict=False):
                setattr(stats, state, int(count))
            stats.paused = bool(row[len(STATES)])
            processed, failed = row[len(STATES) + 1]
            stats.processed, stats.failed = int(processed or 0), int(failed or 0)
            found[queue] = stats
        return found

    async def sweep(self, backoff: Backoff, worker_ttl: float) -> Sweep:
        """See `TaskStore.sweep`: one script, called again while a kind had more items
        than one call handles."""
        done = Sweep()
        while True:
            answer = await self._run(
                "sweep",
                backoff.base,
                backoff.cap,
                backoff.jitter,
                worker_ttl,
                SWEEP_LIMIT,
                random.randrange(1, 2**31),
                LEASE_EXPIRED,
                TIMED_OUT,
                PENDING_TIMEOUT,
            )
            promoted, expired, timed_out, stale, deleted, gone, more = (int(x) for x in answer[:7])
            done.promoted += promoted
            done.expired_leases += expired
            done.timed_out += timed_out
            done.pending_timeouts += stale
            done.deleted += deleted
            done.workers_removed += gone
            done.finished += list(answer[7:])
            if not more:
                return done

    # Workers ----------------------------------------------------------------------------

    async def save_worker(self, worker: Worker) -> Worker:
        """See `TaskStore.save_worker`; `started_at` and `last_beat` are Redis's times."""
        document = {
            "queue": worker.queue,
            "status": worker.status,
            "concurrency": worker.concurrency,
            "active_tasks": worker.active_tasks,
            "hostname": worker.hostname,
            "version": worker.version,
        }
        started, beat = await self._run("worker", worker.worker_id, json.dumps(document))
        return _worker(worker.worker_id, document, float(started), float(beat))

    async def workers(self) -> list[Worker]:
        """See `TaskStore.workers`."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.prefix}:workers")
            pipe.hgetall(f"{self.prefix}:workers:started")
            pipe.zrange(f"{self.prefix}:workers:beat", 0, -1, withscores=True)
            documents, started, beats = await pipe.execute()
        last = dict(beats)
        return [
            _worker(wid, json.loads(doc), float(started.get(wid) or 0), float(last.get(wid, 0)))
            for wid, doc in sorted(documents.items())
        ]

    async def worker(self, worker_id: str) -> Worker | None:
        """See `TaskStore.worker`."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(f"{self.prefix}:workers", worker_id)
            pipe.hget(f"{self.prefix}:workers:started", worker_id)
            pipe.zscore(f"{self.prefix}:workers:beat", worker_id)
            document, started, beat = await pipe.execute()
        if document is None:
            return None
        return _worker(worker_id, json.loads(document), float(started or 0), float(beat or 0))

    # Configs ----------------------------------------------------------------------------

    async def config_version(self) -> int:
        """See `TaskStore.config_version`."""
        return int(await self.client.get(f"{self.prefix}:configs:version") or 0)

    async def configs(self) -> list[StoredConfig]:
        """See `TaskStore.configs`."""
        key = f"{self.prefix}:configs"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.hgetall(f"{key}:created")
            pipe.hgetall(f"{key}:updated")
            documents, created, updated = await pipe.execute()
        found = []
        for name, text in sorted(documents.items()):
            data = json.loads(text)
            found.append(
                StoredConfig(
                    name=name,
                    source=data["source"],
                    document=data["document"],
                    created_at=float(created.get(name) or 0),
                    updated_at=float(updated.get(name) or 0),
                )
            )
        return found

    async def put_config(self, config: StoredConfig) -> None:
        """See `TaskStore.put_config`."""
        text = json.dumps({"source": config.source, "document": config.document})
        await self._run("config", config.name, text)

    async def delete_config(self, name: str) -> bool:
        """See `TaskStore.delete_config`."""
        return bool(await self._run("config", name, ""))


def _worker(worker_id: str, document: dict[str, Any], started: float, beat: float) -> Worker:
    tasks = document.get("active_tasks")
    return Worker(
        worker_id=worker_id,
        queue=document.get("queue", ""),
        status=document.get("status", ""),
        started_at=started,
        last_beat=beat,
        concurrency=int(document.get("concurrency") or 1),
        active_tasks=list(tasks) if isinstance(tasks, list) else [],
        hostname=document.get("hostname", ""),
        version=document.get("version", ""),
    )
