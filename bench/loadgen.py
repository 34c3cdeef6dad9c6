"""A small HTTP/1.1 keep-alive load generator, for machines without `wrk`.

    python bench/loadgen.py URL --seconds S --connections C [--body JSON]

Prints {"rps", "p50_ms", "p99_ms", "errors"} as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


async def connection(
    url: str, body: str | None, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    method = "POST" if body is not None else "GET"
    payload = (body or "").encode()
    head = (
        f"{method} {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        writer.write(head + payload)
        status_line = await reader.readline()
        if not status_line:
            # The server ended the keep-alive connection (Hypercorn does after
            # keep_alive_max_requests, 1000 by default): reconnect, as clients do.
            writer.close()
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            continue
        length, chunked = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:  # a raw ASGI app's answer without Content-Length
            while size := int((await reader.readline()).split(b";")[0], 16):
                await reader.readexactly(size + 2)  # the chunk and its CRLF
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # trailers, up to the blank line
        else:
            await reader.readexactly(length)
        latencies.append((time.perf_counter() - started) * 1000)
        if not status_line.startswith(b"HTTP/1.1 2"):
            errors.append(1)
    writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body")
    args = parser.parse_args()
    latencies: list[float] = []
    errors: list[int] = []
    deadline = time.perf_counter() + args.seconds
    await asyncio.gather(
        *(
            connection(args.url, args.body, deadline, latencies, errors)
            for _ in range(args.connections)
        )
    )
    cuts = statistics.quantiles(latencies, n=100)
    print(
        json.dumps(
            {
                "rps": len(latencies) / args.seconds,
                "p50_ms": cuts[49],
                "p99_ms": cuts[98],
                "errors": len(errors),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
