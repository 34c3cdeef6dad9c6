"""Wake-ups for long polls and log streams, in process; other instances' changes arrive
through the event bus (`Service.listen`). Waiters look again every second anyway, so a
lost wake-up costs latency, never a job or a log line."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator


class Notifier:
    """Events keyed by runner id: `work` (jobs, cancels, control, configuration for the
    agent) and `logs` (new log lines for followers)."""

    def __init__(self) -> None:
        self._work: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._logs: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.closed = False

    @contextlib.contextmanager
    def _listen(
        self, table: defaultdict[str, set[asyncio.Event]], key: str
    ) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        if self.closed:
            event.set()
        table[key].add(event)
        try:
            yield event
        finally:
            waiting = table.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del table[key]

    def listen_work(self, runner_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when there is something new for the runner's agent."""
        return self._listen(self._work, runner_id)

    def listen_logs(self, runner_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when the runner has new log lines."""
        return self._listen(self._logs, runner_id)

    def work(self, runner_id: str) -> None:
        """Something new for the agent of `runner_id`."""
        for event in self._work.get(runner_id, ()):
            event.set()

    def logs(self, runner_id: str) -> None:
        """New log lines of `runner_id`."""
        for event in self._logs.get(runner_id, ()):
            event.set()

    def close(self) -> None:
        """Wake everyone (the generation retires) and let no one wait any more."""
        self.closed = True
        for table in (self._work, self._logs):
            for waiting in table.values():
                for event in waiting:
                    event.set()
