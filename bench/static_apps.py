"""Static app files through the runtime against raw ASGI callables answering the same
bytes, all on granian with uvloop (the runtime's default), in one run.

    uv run python bench/static_apps.py [--seconds 3] [--rounds 3] [--only small|large]

Two files. The small one is the example apps/hello-static's index.html, which the
runtime sends from memory; the raw callable holds its bytes in memory too and sends them
with the same content type: the ceiling for any server of files. A second raw callable
sends the same headers as the runtime besides (ETag, Last-Modified, Cache-Control,
X-Request-Id): against it the ratio is the runtime's own cost, without what any server
pays for sending those. The large one (1 MiB, past what the runtime keeps in memory) is
sent by granian itself through ASGI's path-send extension; its raw callables send the
bytes from memory, and by path-send.

The servers run side by side and are measured in turns (even rounds one order, odd rounds
the other); each figure is the median over the rounds, with the worst round beside it.
The figure: runtime / raw requests per second (aim: at least 0.8). Writes
bench/results/static_apps.json and static_apps_large.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BENCH, free_port, runtime_against

INDEX = BENCH.parent / "apps" / "hello-static" / "1.0.0" / "index.html"
LARGE_SIZE = 1024 * 1024

RAW = """
from pathlib import Path

FILE = {file!r}
BODY = Path(FILE).read_bytes()
HEADERS = [
    (b"content-type", {content_type!r}),
    (b"content-length", str(len(BODY)).encode()),
    *{extra!r},
]
SEND = (
    {{"type": "http.response.pathsend", "path": FILE}}
    if {path_send!r}
    else {{"type": "http.response.body", "body": BODY}}
)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send(SEND)
"""

# What the runtime sends beside the body's type and length: the validators, the caching
# rule and the request id (as long as a generated one).
SAME_HEADERS = [
    (b"etag", b'"18ee1f99711d5325-1ff"'),
    (b"last-modified", b"Fri, 04 Dec 2026 18:14:05 GMT"),
    (b"cache-control", b"no-cache"),
    (b"x-request-id", b"0" * 32),
]


def raw_servers(
    folder: Path, file: Path, content_type: bytes, variants: dict[str, tuple[list, bool]]
) -> list[tuple[str, subprocess.Popen[bytes], str]]:
    """Start a raw callable on granian for each variant (its name: the extra headers, and
    whether it sends by path): (name, process, URL) each."""
    # On the runtime's default server and loop (granian, HTTP/1.1, uvloop, one process),
    # so that the ratio is the runtime's own cost, not the server's.
    options = ["--interface", "asginl", "--http", "1", "--loop", "uvloop", "--no-log"]
    bases = []
    for name, (extra, path_send) in variants.items():
        module = name.replace("-", "_")
        code = RAW.format(
            file=str(file), content_type=content_type, extra=extra, path_send=path_send
        )
        (folder / f"{module}.py").write_text(code)
        port = free_port()
        address = ["--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(
            [sys.executable, "-m", "granian", *options, *address, f"{module}:app"],
            cwd=folder,
            stderr=subprocess.DEVNULL,
        )
        bases.append((name, process, f"http://127.0.0.1:{port}/"))
    return bases


def small(argv: list[str]) -> None:
    """The example static app's index.html."""
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"raw": ([], False), "raw-same-headers": (SAME_HEADERS, False)}
        bases = raw_servers(Path(tmp), INDEX, b"text/html; charset=utf-8", variants)
        runtime_against("static_apps", bases, "/hello-static/", argv)


def large(argv: list[str]) -> None:
    """A 1 MiB file in an app of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        version = Path(tmp, "apps", "bench-large", "1.0.0")
        version.mkdir(parents=True)
        (version / "package.json").write_text(
            json.dumps({"name": "bench-large", "version": "1.0.0"})
        )
        (version / "index.html").write_text("<p>large.bin</p>")  # a static app has one
        file = version / "large.bin"
        file.write_bytes(bytes(range(256)) * (LARGE_SIZE // 256))
        variants = {"raw-from-memory": ([], False), "raw-path-send": ([], True)}
        bases = raw_servers(Path(tmp), file, b"application/octet-stream", variants)
        runtime_against(
            "static_apps_large", bases, "/bench-large/large.bin", argv, app_dir=file.parents[2]
        )


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--only", choices=("small", "large"))
    args, rest = parser.parse_known_args()
    for name, measure in (("small", small), ("large", large)):
        if args.only in (None, name):
            measure(rest)


if __name__ == "__main__":
    main()
