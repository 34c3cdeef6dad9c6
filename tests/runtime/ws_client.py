"""A minimal WebSocket client for tests: wsproto over an asyncio TCP connection."""

from __future__ import annotations

import asyncio
from collections import deque

import wsproto
import wsproto.events as ws_events


class WebSocketClient:
    """A minimal WebSocket client: wsproto over an asyncio TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: deque[ws_events.Event] = deque()

    @classmethod
    async def connect(
        cls, port: int, target: str, subprotocols: list[str] | None = None
    ) -> tuple[WebSocketClient, ws_events.Event]:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        request = ws_events.Request(
            host=f"127.0.0.1:{port}", target=target, subprotocols=subprotocols or []
        )
        await client.send(request)
        return client, await client.next()

    async def send(self, event: ws_events.Event) -> None:
        self.writer.write(self.ws.send(event))
        await self.writer.drain()

    async def next(self) -> ws_events.Event:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    def close(self) -> None:
        self.writer.close()
