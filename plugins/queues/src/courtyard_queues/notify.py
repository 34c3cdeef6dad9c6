"""Wake-ups for long polls: a dequeue waiting for a task, a status request waiting for
a task to finish. In process; the Redis backend also relays enqueues made on other
instances (`RedisRelay`). Waiters look again every `poll_seconds` anyway, so a lost
wake-up costs at most that much latency, never a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis  # redis-py is loaded by the Redis store, when used


class Notifier:
    """Events keyed by queue name (ready tasks) and by task id (finished tasks)."""

    def __init__(self) -> None:
        self._queues: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._tasks: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.closed = False

    def listen(self, queues: Iterable[str]) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when a task becomes ready in one of `queues`. Listen before
        looking, so that a task enqueued in between is not missed."""
        return self._listen(self._queues, list(queues))

    def listen_task(self, task_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when task `task_id` finishes here."""
        return self._listen(self._tasks, [task_id])

    @contextlib.contextmanager
    def _listen(
        self, table: defaultdict[str, set[asyncio.Event]], keys: list[str]
    ) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        if self.closed:
            event.set()
        for key in keys:
            table[key].add(event)
        try:
            yield event
        finally:
            for key in keys:
                waiting = table.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del table[key]

    def ready(self, queue: str) -> None:
        """A task became ready in `queue`."""
        for event in self._queues.get(queue, ()):
            event.set()

    def ready_anywhere(self) -> None:
        """Tasks became ready, in queues not known: wake every waiting dequeue."""
        for waiting in self._queues.values():
            for event in waiting:
                event.set()

    def finished(self, task_id: str) -> None:
        """Task `task_id` completed or was archived."""
        for event in self._tasks.get(task_id, ()):
            event.set()

    def close(self) -> None:
        """Wake everyone (the server is stopping) and let no one wait any more."""
        self.closed = True
        self.ready_anywhere()
        for waiting in self._tasks.values():
            for event in waiting:
                event.set()


class RedisRelay:
    """One subscription per instance to the Redis store's notify channel, relayed to the
    local notifier. Reconnects after an error, with a growing pause.

    It stops when asked (`close`), between two reads, rather than by cancellation: a
    pubsub cancelled in the middle of a read may take its socket timeout to close. `close`
    wakes the read at once with a message on a channel of this relay's own.
    """

    POLL_SECONDS = 0.5  # how long a read waits before the stop flag is looked at again

    def __init__(
        self, client: Redis, channel: str, notifier: Notifier, logger: logging.Logger
    ) -> None:
        self.client = client
        self.channel = channel
        self.notifier = notifier
        self.log = logger
        self._stopping = asyncio.Event()
        self._wake = f"{channel}:wake:{uuid.uuid4().hex}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Relay in a background task until `close`."""
        self._task = asyncio.create_task(self.run(), name="queues-relay")

    async def close(self) -> None:
        """Stop relaying: `run` returns after its current read, which the wake message
        ends (or, if Redis is unreachable, `POLL_SECONDS` does)."""
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self.client.publish(self._wake, "")
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        """Relay until stopped."""
        pause = 0.1
        while not self._stopping.is_set():
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel, self._wake)
                    pause = 0.1
                    # After a reconnect, tasks may have arrived unannounced.
                    self.notifier.ready_anywhere()
                    while not self._stopping.is_set():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.POLL_SECONDS
                        )
                        if (
                            message is not None
                            and message.get("type") == "message"
                            and message.get("channel") != self._wake
                        ):
                            self.notifier.ready(str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("queue notifications from Redis interrupted: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                pause = min(pause * 2, 5.0)
