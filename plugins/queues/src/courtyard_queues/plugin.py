"""The queues plugin's hooks.

Each generation gets its own queue service (`service.QueueService`): `courtyard_startup`
opens the task store (the runtime's database, or Redis), loads the queue configuration
files and starts this instance's sweeper; `courtyard_shutdown` wakes every long poll and
closes it all. Routes are built before startup and reach the service through the
generation's `State`, kept in the plugin context (`ctx.state[State]`). The
`courtyard worker` command comes from `worker/`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from courtyard_sdk import ApiError, Blueprint, PluginContext, SettingsError, hookimpl

from . import errors
from .internal import InternalQueue
from .limits import check_json
from .notify import Notifier, RedisRelay
from .pages import page_routes, swagger_routes
from .registry import Registry
from .routes import cli_routes, queue_routes
from .service import Options, QueueService, Request
from .store import Backoff, Task, TaskStore
from .worker_routes import VaultValues, worker_routes


@dataclass(eq=False)
class State:
    """One generation's service, and the relay of other instances' enqueues (Redis)."""

    service: QueueService | None = None
    relay: RedisRelay | None = None


def _state(ctx: PluginContext) -> State:
    """The generation's `State`, made by the first hook that asks (`courtyard_provides`)."""
    return ctx.state.setdefault(State, State())


def options(settings: Any) -> Options:
    """The service's options from the plugin's settings."""
    return Options(
        lease_seconds=settings["lease_seconds"],
        heartbeat_seconds=settings["heartbeat_seconds"],
        poll_seconds=settings["poll_seconds"],
        sweep_seconds=settings["sweep_seconds"],
        max_retry=settings["max_retry"],
        retention_seconds=settings["retention_seconds"],
        archived_retention_seconds=settings["archived_retention_seconds"],
        backoff=Backoff(settings["retry_base_seconds"], settings["retry_max_seconds"]),
        max_batch=settings["max_batch"],
    )


def make_store(ctx: PluginContext) -> TaskStore:
    """The task store the settings ask for.

    :raises SettingsError: `backend = "redis"` without `redis_url`.
    """
    if ctx.settings["backend"] == "redis":
        from .redis_store import RedisTaskStore

        url = ctx.settings.get("redis_url")
        if not url:
            raise SettingsError('plugin queues: backend = "redis" needs redis_url')
        return RedisTaskStore(url, ctx.settings["redis_prefix"])
    from .sql_store import SqlTaskStore

    return SqlTaskStore(ctx.db)


class Queues:
    """What the plugin offers other plugins (`ctx.get_plugin("queues")`): enqueue tasks
    and read them, with the same rules as `POST /queue/add` and `GET /queue/{id}`."""

    def __init__(self, state: State) -> None:
        self._state = state

    def _service(self) -> QueueService:
        if self._state.service is None:
            raise RuntimeError("the queues plugin has not started")
        return self._state.service

    async def enqueue(self, queue: str, payload: Any, **task_options: Any) -> Task:
        """Enqueue one task; `task_options` are those of `POST /queue/add` (`timeout`,
        `type`, `max_retry`, `process_at`, `process_in`, `unique_key`, `unique`,
        `unique_ttl`, `retention`).

        :raises ApiError: as the endpoint would answer (404 unknown queue, 400, 409); a
            payload the endpoint could not have received (NaN, too deeply nested) is 400.
        """
        try:
            check_json(payload)
        except ValueError as exc:
            raise errors.invalid(str(exc)) from None
        return await self._service().enqueue(queue, payload, Request(**task_options))

    async def get(self, task_id: str) -> Task | None:
        """A task, or None."""
        return await self._service().store.get(task_id)

    def internal(self, name: str) -> InternalQueue:
        """A queue of the calling plugin's own, leased by its consumers in process
        (internal.py); name it `<plugin>.<queue>`.

        :raises ApiError: 503 while the plugin is not started.
        :raises ValueError: for a name that is not `<plugin>.<queue>`.
        """
        try:
            return InternalQueue(self._service(), name)
        except RuntimeError:
            raise ApiError(503, "QUEUES_UNAVAILABLE", "the queues plugin is not started") from None


@hookimpl
def courtyard_provides(ctx: PluginContext) -> Queues:
    """Other plugins enqueue through `ctx.get_plugin("queues")`."""
    return Queues(_state(ctx))


@hookimpl
def courtyard_routes(ctx: PluginContext) -> list[Blueprint]:
    """runqy's API routes, the worker protocol, the page and Swagger UI."""
    state = _state(ctx)
    settings = ctx.settings

    def service() -> QueueService:
        if state.service is None:
            raise ApiError(503, "QUEUES_UNAVAILABLE", "the queues plugin is not started")
        return state.service

    def vault_values() -> VaultValues | None:
        vaults = ctx.get_plugin("vaults")
        return None if vaults is None else vaults.values

    redis_url = settings.get("redis_url") if settings["backend"] == "redis" else None
    return [
        page_routes(service),
        queue_routes(service, settings["public_task_status"]),
        cli_routes(service),
        worker_routes(service, vault_values, redis_url),
        swagger_routes(settings["swagger_script"], settings["swagger_css"]),
    ]


@hookimpl
async def courtyard_startup(ctx: PluginContext) -> None:
    """Open the store, load the configuration files, start the sweeper (and, on Redis,
    the relay of other instances' enqueues)."""
    state = _state(ctx)
    store = make_store(ctx)
    notifier = Notifier()
    registry = Registry(store, list(ctx.settings["config_files"]), ctx.logger)
    service = QueueService(store, registry, options(ctx.settings), ctx.logger, notifier)
    try:
        await service.start()
    except BaseException:
        await service.close()
        raise
    # Only a Redis store needs the relay; redis-py (about 7 MiB resident) stays unloaded
    # unless make_store imported the Redis store.
    redis_store = sys.modules.get(f"{__package__}.redis_store")
    if redis_store is not None and isinstance(store, redis_store.RedisTaskStore):
        state.relay = RedisRelay(store.client, store.notify_channel, notifier, ctx.logger)
        state.relay.start()
    events = _event_bus(ctx)
    if events is not None:
        service.on_finished.append(_publisher(events))
    state.service = service
    ctx.logger.info(
        "%s backend, %d queue(s) configured",
        ctx.settings["backend"],
        len(await registry.entries()),
    )


@hookimpl
async def courtyard_shutdown(ctx: PluginContext) -> None:
    """Wake every long poll, stop the relay, close the store."""
    state = ctx.state.pop(State, None)
    if state is None:
        return
    if state.relay is not None:
        await state.relay.close()
    if state.service is not None:
        await state.service.close()


@hookimpl
def courtyard_commands(ctx: PluginContext) -> Any:
    """`courtyard worker`: run the tasks of a queue."""
    from .worker.cli import worker_command

    return worker_command


def _event_bus(ctx: PluginContext) -> Any:
    """The runtime's event bus, or None where the runtime gives none."""
    try:
        return ctx.events if callable(ctx.events.publish) else None
    except RuntimeError:
        return None


def _publisher(events: Any) -> Any:
    async def publish(task: Task) -> None:
        await events.publish(
            f"queues.task.{task.state}",
            {"task_id": task.id, "queue": task.queue, "state": task.state},
        )

    return publish
