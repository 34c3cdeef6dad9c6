"""The supervisor's relay of events between its server processes (`courtyard serve
--workers N` with `event_bus = "memory"`): each process's bus (services/events_hub.py,
which says the wire) publishes here, and the hub numbers each event, keeps the last
`event_history`, and sends it to every process, so that all see the same events with the
same ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from typing import Any

log = logging.getLogger("courtyard.supervisor")

LINE_LIMIT = 4 * 1024 * 1024  # the longest hub message (events_hub.LINE_LIMIT and more)
MAX_BACKLOG = 64 * 1024 * 1024  # bytes of events a process may leave unread


class Hub:
    """The events of every server process (services/events_hub.py says the wire): it
    numbers each event published, keeps the last `history`, and sends each to every
    process.

    :param stuck: called with a process's index when it leaves too much unread.
    """

    def __init__(self, history: int, stuck: Any) -> None:
        self._held: deque[tuple[tuple[int, int], bytes]] = deque(maxlen=history)
        # As MemoryEventBus: every id after the floor is held; at first, the start.
        self._floor = (time.time_ns() // 1_000_000, 0)
        self._last = self._floor
        self._peers: dict[int, asyncio.StreamWriter] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._stuck = stuck

    async def attach(self, index: int, sock: socket.socket) -> None:
        """Greet worker `index` on its new connection, with what is held, and follow it."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        hello = {
            "t": "hello",
            "floor": _id(self._floor),
            "last": _id(self._last),
            "held": len(self._held),
        }
        writer.write(json.dumps(hello).encode() + b"\n")
        writer.writelines(line + b"\n" for _, line in self._held)
        self._peers[index] = writer
        self._readers[index] = asyncio.create_task(self._follow(index, reader, writer))

    def detach(self, index: int) -> None:
        """Forget worker `index` (it exited)."""
        writer = self._peers.pop(index, None)
        if writer is not None:
            writer.close()
        reader = self._readers.pop(index, None)
        if reader is not None:
            reader.cancel()

    def close(self) -> None:
        """Forget every worker."""
        for index in list(self._peers):
            self.detach(index)

    async def _follow(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("t") == "publish":
                    self._publish(index, message)
        except OSError:
            return  # it died: the supervisor detaches it
        except (ValueError, KeyError, TypeError) as exc:
            log.error("worker %d sent what the event hub cannot read: %r", index, exc)
            writer.close()  # it finds out, and refuses to serve events alone

    def _publish(self, publisher: int, message: dict[str, Any]) -> None:
        now = time.time_ns() // 1_000_000
        key = self._last = (now, 0) if now > self._last[0] else (self._last[0], self._last[1] + 1)
        event = {
            "t": "event",
            "id": _id(key),
            "topic": message["topic"],
            "data": message["data"],
            "time": time.time(),
            "tenant": message.get("tenant"),
        }
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        if self._held.maxlen == 0:
            self._floor = key
        else:
            if len(self._held) == self._held.maxlen:
                self._floor = self._held[0][0]  # about to leave the history
            self._held.append((key, line))
        for index, writer in list(self._peers.items()):
            if index == publisher:  # its own copy says which publish it answers
                writer.write(line[:-1] + b',"ref":%d}\n' % int(message["ref"]))
            else:
                writer.write(line + b"\n")
            if writer.transport.get_write_buffer_size() > MAX_BACKLOG:
                self.detach(index)
                self._stuck(index)


def _id(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"
