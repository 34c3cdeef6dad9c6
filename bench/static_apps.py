"""A static app's index.html through the runtime against a raw ASGI callable answering
the same bytes, both on granian with uvloop (the runtime's default), in one run.

    uv run python bench/static_apps.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-static. The raw callable holds the file's bytes in
memory and sends them with the same content type: the ceiling for any server of files.
Both servers run side by side and are measured in turns (even rounds one order, odd
rounds the other); each figure is the median over the rounds, with the worst round
beside it. The figure: runtime / raw requests per second (aim: at least 0.8). Writes
bench/results/static_apps.json.
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
]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send({{"type": "http.response.body", "body": BODY}})
"""


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "raw.py").write_text(RAW.format(index=str(INDEX)))
        # On the runtime's default server and loop (granian, HTTP/1.1, uvloop, one
        # process), so that the ratio is the runtime's own cost, not the server's.
        options = ["--interface", "asginl", "--http", "1", "--loop", "uvloop", "--no-log"]
        address = ["--host", "127.0.0.1", "--port", str(port)]
        raw = subprocess.Popen(
            [sys.executable, "-m", "granian", *options, *address, "raw:app"],
            cwd=tmp,
            stderr=subprocess.DEVNULL,
        )
        runtime_against(
            "static_apps",
            ("raw", raw, f"http://127.0.0.1:{port}/"),
            "/hello-static/",
            sys.argv[1:],
        )


if __name__ == "__main__":
    main()
