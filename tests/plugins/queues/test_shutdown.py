"""Stopping the queues service is prompt, whatever its store does with a cancellation."""

import asyncio
import contextlib
import logging
import time

from courtyard_queues.registry import Registry
from courtyard_queues.service import Options, QueueService
from courtyard_queues.store import Sweep


class SwallowingStore:
    """A store whose sweep swallows its cancellation, as a client library closing a
    connection in the middle of a command can (redis-py's shielded close does)."""

    def __init__(self) -> None:
        self.sweeps = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def durability_warning(self) -> None:
        return None

    async def lost_data(self) -> bool:
        return False

    async def configs(self) -> list:
        return []

    async def sweep(self, backoff: object, forget_after: float) -> Sweep:
        self.sweeps += 1
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: the sweep returns
            await asyncio.sleep(10)
        return Sweep()


async def test_close_ends_the_sweeper_even_when_a_sweep_swallows_the_cancel():
    store = SwallowingStore()
    log = logging.getLogger("test")
    service = QueueService(store, Registry(store, [], log), Options(sweep_seconds=60), log)
    await service.start()
    await asyncio.sleep(0.05)  # the first sweep is under way
    started = time.monotonic()
    await asyncio.wait_for(service.close(), 5)
    assert time.monotonic() - started < 1  # not a whole sweep interval (60 s)
    assert store.sweeps == 1
