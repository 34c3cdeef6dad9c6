"""The pipeline on the queues plugin: each step of an operation is a task of the queue
`platform.pipeline`, and every runtime instance runs consumers that lease those tasks.

A consumer leases a task (`{"op", "step"}`), renews its lease while the step runs, and
then records the step, enqueues the next one (or finishes the operation) and completes
the task, in that order: a consumer that dies at any point leaves a leased task whose
lease expires, the queues plugin's sweeper puts it back, and the next consumer (on this
instance or another sharing the backend) runs it again. Steps are idempotent, a step
already recorded as done is only advanced, and a finished operation's tasks complete
at once, so a retry never runs anything twice to a different result.

An unexpected error fails the task with a retry (the queues plugin's backoff); a
`StepFailed` fails the operation at once. A task archived by the queues plugin (its
retries ran out, or its lease expired once too often) fails its operation through the
maintenance pass, which also hands out project locks a crash left unclaimed.

The queue is an internal one of the queues plugin (`Queues.internal`): not one of
runqy's, leased by these consumers in process, with the plugin's leases, retries and
backoff on whichever backend it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from courtyard_sdk import ApiError

from . import secrets, steps
from .artifacts import Artifacts
from .store import DONE, ERROR, FINISHED, STEP_DONE, STEP_PENDING, STEP_RUNNING, Accepted, Store

QUEUE = "platform.pipeline"
UNIQUE_TTL = 86400.0
RENDERING = ("manifestRenderer", "deployer", "promoter")
DRAIN_SECONDS = 10.0  # how long a stopping instance lets running steps finish
# How long one lease call of an idle consumer lasts. Not how often it looks: an enqueue
# wakes it at once, and the queues plugin looks again every `poll_seconds` of its own.
LEASE_WAIT_SECONDS = 30.0

Publish = Callable[[str], Awaitable[None]]
Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class Pipeline:
    """One generation's pipeline: enqueueing, consumers, waiting, maintenance."""

    def __init__(
        self,
        store: Store,
        artifacts: Artifacts,
        queues: Any,
        settings: Any,
        logger: logging.Logger,
        data_dir: Path,
        vaults: Callable[[], Any],
        publish: Publish,
        audit: Audit,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.queues = queues
        self.settings = settings
        self.log = logger
        self.data_dir = data_dir
        self.vaults = vaults
        self.publish = publish
        self.audit = audit
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: dict[str, set[asyncio.Event]] = {}
        self._busy: set[str] = set()  # consumers running a step
        self._host = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    # The queues plugin -------------------------------------------------------------------

    def queue(self) -> Any:
        """The pipeline's queue (`courtyard_queues.internal.InternalQueue`).

        :raises ApiError: 503 when the queues plugin is not started.
        """
        return self.queues.internal(QUEUE)

    async def enqueue(self, op_id: str, position: int, worker: str) -> None:
        """Enqueue one step's task (a step already queued and unfinished is not queued
        twice: its unique key is held)."""
        await self.queue().enqueue(
            {"op": op_id, "step": position},
            type=worker,
            max_retry=int(self.settings["max_retry"]),
            unique_key=f"platform:{op_id}:{position}",
            unique_ttl=UNIQUE_TTL,
        )

    async def submit(self, accepted: Accepted) -> None:
        """Start an accepted operation (one queued behind another starts later)."""
        await self.changed(accepted.op["id"])
        if accepted.started:
            await self.enqueue(accepted.op["id"], 0, accepted.op["steps"][0]["worker"])

    # Progress ----------------------------------------------------------------------------

    async def changed(self, op_id: str) -> None:
        """Tell local waiters and the event bus that an operation changed."""
        for event in self._changed.get(op_id, ()):
            event.set()
        await self.publish(op_id)

    async def wait(self, op_id: str, timeout: float) -> dict[str, Any] | None:
        """The operation once finished, or as it is after `timeout` seconds (an operation
        run by another instance is seen by polling)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._changed.setdefault(op_id, set()).add(event)
        try:
            while True:
                event.clear()
                op = await self.store.op(op_id)
                left = deadline - loop.time()
                if op is None or op["status"] in FINISHED or left <= 0 or self.stopping.is_set():
                    return op
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, self.settings["poll_seconds"]))
        finally:
            waiters = self._changed.get(op_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._changed[op_id]

    # Consumers ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start this instance's consumers and its maintenance pass."""
        for number in range(int(self.settings["workers"])):
            worker_id = f"platform-{self._host}-{number}"
            self._tasks.append(asyncio.create_task(self._consume(worker_id), name=worker_id))
        self._tasks.append(asyncio.create_task(self._maintain(), name="platform-maintenance"))

    async def close(self) -> None:
        """Stop leasing; idle consumers stop at once, a step still running gets
        `DRAIN_SECONDS` to finish (a step cut short is released, and run again by another
        consumer)."""
        self.stopping.set()
        busy = [task for task in self._tasks if task.get_name() in self._busy]
        for task in self._tasks:
            if task not in busy:
                task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=DRAIN_SECONDS)
        for task in busy:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _consume(self, worker_id: str) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                task = await self._lease(worker_id)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    self.log.error("the pipeline consumer cannot lease: %r", exc)
                failing = True
                await asyncio.sleep(self.settings["poll_seconds"])
                continue
            if task is not None:
                self._busy.add(worker_id)
                try:
                    await self.run_task(task, worker_id)
                finally:
                    self._busy.discard(worker_id)

    async def _lease(self, worker_id: str) -> Any:
        return await self.queue().lease(worker_id, LEASE_WAIT_SECONDS)

    async def run_task(self, task: Any, worker_id: str) -> None:
        """Run the step a leased task names, renewing its lease meanwhile."""
        queue = self.queue()
        renewer = asyncio.create_task(self._renew(task.id, worker_id))
        settled = False
        try:
            settled = await self._run_step(task, worker_id)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(queue.release(task.id, worker_id))
            settled = True
            raise
        except Exception as exc:  # a bug or an outage: retried by the queues plugin
            self.log.exception("platform step task %s failed", task.id)
            settled = True
            await self._attempt_failed(task, worker_id, f"{type(exc).__name__}: {exc}")
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            if not settled:
                with contextlib.suppress(ApiError):
                    await queue.complete(task.id, worker_id)

    async def _renew(self, task_id: str, worker_id: str) -> None:
        queue = self.queue()
        every = max(queue.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                await queue.renew(task_id, worker_id)
            except ApiError:  # the lease is lost: whatever this run reports is refused
                return
            except Exception as exc:
                self.log.warning("renewing the lease of %s failed: %r", task_id, exc)

    async def _attempt_failed(self, task: Any, worker_id: str, error: str) -> None:
        payload = task.payload if isinstance(task.payload, dict) else {}
        op_id, position = payload.get("op"), payload.get("step")
        try:
            after = await self.queue().fail(task.id, worker_id, error)
        except ApiError:
            return  # the lease went to another consumer: it reports
        if not isinstance(op_id, str) or not isinstance(position, int):
            return
        if after.state == "archived":
            await self._fail(op_id, position, f"gave up after {after.retry_count} retries: {error}")
        else:
            await self.store.step_retrying(op_id, position, error)
            await self.changed(op_id)

    async def _run_step(self, task: Any, worker_id: str) -> bool:
        """:return: whether the task was settled here (else the caller completes it)."""
        payload = task.payload if isinstance(task.payload, dict) else {}
        op_id, position = payload.get("op"), payload.get("step")
        if not isinstance(op_id, str) or not isinstance(position, int):
            return False  # not ours to run: complete it
        op = await self.store.op_row(op_id)
        step = await self.store.step_row(op_id, position)
        if op is None or step is None or op.status in FINISHED:
            return False
        if step.status == STEP_DONE:
            await self._advance(op, position)
            return False
        if step.status not in (STEP_PENDING, STEP_RUNNING):
            return False
        if not await self.store.step_started(op_id, position, task.id, worker_id):
            return False
        await self.changed(op_id)
        try:
            job = await self._job(op, step.worker)
            outcome = await asyncio.to_thread(steps.run, step.worker, job)
        except steps.StepFailed as exc:
            await self._fail(op_id, position, str(exc))
            return False
        try:  # a consumer that stalled past its lease reports nothing: another ran the step
            await self.queue().renew(task.id, worker_id)
        except ApiError:
            self.log.warning("lease of %s lost while %s ran: result dropped", task.id, step.worker)
            return True
        for env, record in outcome.deployments.items():
            await self.store.set_deployment(op.project_id, env, record)
        await self.store.step_done(op_id, position, outcome.message, outcome.artifacts)
        await self.changed(op_id)
        await self._advance(op, position)
        return False

    async def _job(self, op: Any, worker: str) -> steps.Job:
        params = json.loads(op.params)
        try:
            project = await self.store.project_row(op.project_id)
        except ApiError:
            raise steps.StepFailed("the project no longer exists") from None
        spec = params.get("spec") or json.loads(project.spec)
        deployments = json.loads(project.deployments)
        job = steps.Job(
            op_id=op.id,
            kind=op.kind,
            project_id=op.project_id,
            root=self.artifacts.folder(op.project_id),
            spec=spec,
            params=params,
            deployments=deployments,
            registry=self.settings["image_registry"],
            buildkit_addr=self.settings["buildkit_addr"],
            hook_url=self.hook_url(params),
        )
        if worker in RENDERING and op.kind != "delete":
            envs = [steps.DEV]
            if op.kind == "promote":
                envs = [params["to_env"]]
            elif op.kind == "update":
                envs += [env for env in deployments if env != steps.DEV]
            key = secrets.digest_key(self.data_dir)
            job.secrets = await secrets.digests(spec, envs, self.vaults(), key)
        return job

    def hook_url(self, params: dict[str, Any]) -> str:
        """Where the source repository's hook posts: `public_url`, else the address the
        operation was requested at."""
        base = self.settings["public_url"] or params.get("base_url") or "http://127.0.0.1:8000"
        return base.rstrip("/") + "/api/webhooks/source"

    async def _advance(self, op: Any, position: int) -> None:
        following = await self.store.step_row(op.id, position + 1)
        if following is not None:
            await self.enqueue(op.id, position + 1, following.worker)
            return
        await self._finish(op.id, DONE)

    async def _fail(self, op_id: str, position: int, error: str) -> None:
        await self.store.step_failed(op_id, position, error)
        await self._finish(op_id, ERROR, error)

    async def _finish(self, op_id: str, status: str, error: str = "") -> None:
        finished, following = await self.store.finish(op_id, status, error)
        if finished:
            await self.changed(op_id)
            op = await self.store.op_row(op_id)
            if op is not None:
                details = {"project_id": op.project_id, "kind": op.kind, "error": error}
                await self.audit(f"platform.op.{status}", op_id, details)
        if following is not None:
            await self._start_queued(following)

    async def _start_queued(self, op_id: str) -> None:
        op = await self.store.op(op_id)
        if op is not None:
            await self.enqueue(op_id, 0, op["steps"][0]["worker"])
            await self.changed(op_id)

    # Maintenance -------------------------------------------------------------------------

    async def _maintain(self) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                await self.maintain_once()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    self.log.error("the pipeline maintenance failed: %r", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings["maintenance_seconds"])

    async def maintain_once(self) -> None:
        """Fail operations whose step task the queues plugin archived or lost, and start
        queued operations whose project's lock nobody holds."""
        queue = self.queue()
        for step in await self.store.active_steps():
            task = await queue.get(step.task_id)
            if task is None or task.state == "archived":
                reason = "its task is gone" if task is None else (task.last_error or "archived")
                await self._fail(step.op_id, step.position, f"{step.worker} failed: {reason}")
        for op_id in await self.store.orphans():
            if await self.store.take_lock(op_id):
                await self._start_queued(op_id)
        for op_id, worker in await self.store.stalled(self.settings["maintenance_seconds"] * 5):
            await self.enqueue(op_id, 0, worker)
