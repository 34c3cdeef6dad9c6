"""A static app's index.html through the runtime against a raw ASGI callable answering
the same bytes, both on Hypercorn, in one run.

    uv run python bench/static_apps.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-static. The raw callable holds the file's bytes in
memory and sends them with the same content type: the ceiling for any server of files.
Both servers run side by side and are measured in turns (even rounds one order, odd
rounds the other); each figure is the median over the rounds, with the worst round
beside it. The figure: runtime / raw requests per second (aim: at least 0.8). Writes
bench/results/static_apps.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BENCH, compare, free_port, save, side_by_side, table, wait_for

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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raw_port, runtime_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "raw.py").write_text(RAW.format(index=str(INDEX)))
        hypercorn = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{raw_port}"]
        servers = [
            subprocess.Popen([*hypercorn, "raw:app"], cwd=tmp, stderr=subprocess.DEVNULL),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "courtyard",
                    "serve",
                    "--port",
                    str(runtime_port),
                    "--app-dir",
                    str(APPS),
                    "--data-dir",
                    str(Path(tmp, "data")),
                    "--log-level",
                    "warning",
                ],
            ),
        ]
        urls = {
            "raw": f"http://127.0.0.1:{raw_port}/",
            "runtime": f"http://127.0.0.1:{runtime_port}/hello-static/",
        }
        try:
            for url, server in zip(urls.values(), servers, strict=True):
                wait_for(url, process=server)
            samples = side_by_side(urls, args.rounds, args.seconds)
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
    rows, summary = compare(samples, "runtime", "raw")
    print(table(rows))
    print()
    print(table([summary]))
    print(f"\nsaved {save('static_apps', {'runs': rows, 'summary': summary})}")


if __name__ == "__main__":
    main()
