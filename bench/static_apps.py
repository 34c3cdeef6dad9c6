"""A static app's index.html through the runtime against a raw ASGI callable answering
the same bytes, both on granian with uvloop (the runtime's default), in one run.

    uv run python bench/static_apps.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-static. The raw callable holds the file's bytes in
memory and sends them with the same content type: the ceiling for any server of files.
A second raw callable sends the same headers as the runtime besides (ETag,
Last-Modified, Cache-Control, X-Request-Id): against it the ratio is the runtime's own
cost, without what any server pays for sending those. The servers run side by side and
are measured in turns (even rounds one order, odd rounds the other); each figure is the
median over the rounds, with the worst round beside it. The figure: runtime / raw
requests per second (aim: at least 0.8). Writes bench/results/static_apps.json.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BENCH, free_port, runtime_against

APPS = BENCH.parent / "apps"
INDEX = APPS / "hello-static" / "1.0.0" / "index.html"

RAW = """
from pathlib import Path

BODY = Path({index!r}).read_bytes()
HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(BODY)).encode()),
    *{extra!r},
]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send({{"type": "http.response.body", "body": BODY}})
"""


# What the runtime sends beside the body's type and length: the validators, the caching
# rule and the request id (as long as a generated one).
SAME_HEADERS = [
    (b"etag", b'"18ee1f99711d5325-1ff"'),
    (b"last-modified", b"Fri, 04 Dec 2026 18:14:05 GMT"),
    (b"cache-control", b"no-cache"),
    (b"x-request-id", b"0" * 32),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bases = []
        # On the runtime's default server and loop (granian, HTTP/1.1, uvloop, one
        # process), so that the ratio is the runtime's own cost, not the server's.
        options = ["--interface", "asginl", "--http", "1", "--loop", "uvloop", "--no-log"]
        for name, extra in (("raw", []), ("raw-same-headers", SAME_HEADERS)):
            module = name.replace("-", "_")
            Path(tmp, f"{module}.py").write_text(RAW.format(index=str(INDEX), extra=extra))
            port = free_port()
            address = ["--host", "127.0.0.1", "--port", str(port)]
            process = subprocess.Popen(
                [sys.executable, "-m", "granian", *options, *address, f"{module}:app"],
                cwd=tmp,
                stderr=subprocess.DEVNULL,
            )
            bases.append((name, process, f"http://127.0.0.1:{port}/"))
        runtime_against("static_apps", bases, "/hello-static/", sys.argv[1:])


if __name__ == "__main__":
    main()
