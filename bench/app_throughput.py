"""A warm ASGI app through the runtime (worker processes) against the same app served
directly by Hypercorn and by granian, in one run; and a raw-ASGI no-op app through the
runtime.

    uv run python bench/app_throughput.py [--seconds 3] [--rounds 3]

The app is the example apps/hello-quart (a Quart JSON route), served by `courtyard serve`
on its default server (granian) and directly, from its folder, by `python -m hypercorn
app:app` and by granian as the app's worker runs it (HTTP/1.1, uvloop, one process). The
no-op app (no framework: one ASGI function answering "ok") is written to the run's
temporary folder beside a link to hello-quart, and served by the same runtime. The three
are measured in turns; each figure is the median over the rounds. The figures: runtime /
direct requests per second for hello-quart (aim: at least 0.85), against each direct
server, the median of the rounds' ratios and the worst round's; the no-op app's requests
per second are printed beside. Writes bench/results/app_throughput.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BENCH, compare, free_port, save, side_by_side, smoke, table, wait_for

APPS = BENCH.parent / "apps"
APP = APPS / "hello-quart" / "1.0.0"

NOOP_APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})
"""
# Warm means no recycling during the run: a worker serves every request of it.
NOOP_MANIFEST = 'name = "noop"\nversion = "1.0.0"\nentry = "app:app"\nmax_requests = 100000000\n'


def write_apps(folder: Path) -> Path:
    """An app folder with hello-quart (linked) and the raw-ASGI no-op app."""
    apps = folder / "apps"
    (apps / "noop" / "1.0.0").mkdir(parents=True)
    (apps / "hello-quart").symlink_to(APPS / "hello-quart", target_is_directory=True)
    (apps / "noop" / "1.0.0" / "app.py").write_text(NOOP_APP)
    (apps / "noop" / "1.0.0" / "app.toml").write_text(NOOP_MANIFEST)
    return apps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=smoke(3, 1))
    args = parser.parse_args()
    direct_port, granian_port, port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        apps = write_apps(Path(tmp))
        data = Path(tmp, "data")
        serve = ["serve", "--port", str(port), "--app-dir", str(apps), "--data-dir", str(data)]
        direct = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{direct_port}", "app:app"],
            cwd=APP,
            stderr=subprocess.DEVNULL,
        )
        granian_options = ["--interface", "asgi", "--http", "1", "--loop", "uvloop", "--no-log"]
        granian_options += ["--host", "127.0.0.1", "--port", str(granian_port)]
        granian = subprocess.Popen(
            [sys.executable, "-m", "granian", *granian_options, "app:app"],
            cwd=APP,
            stderr=subprocess.DEVNULL,
        )
        runtime = subprocess.Popen(
            [sys.executable, "-m", "courtyard", *serve, "--log-level", "warning"]
        )
        urls = {
            "direct": f"http://127.0.0.1:{direct_port}/",
            "direct-granian": f"http://127.0.0.1:{granian_port}/",
            "runtime": f"http://127.0.0.1:{port}/hello-quart/",
            "runtime-noop": f"http://127.0.0.1:{port}/noop/",
        }
        try:
            wait_for(urls["direct"], process=direct)
            wait_for(urls["direct-granian"], process=granian)
            for name in ("runtime", "runtime-noop"):
                wait_for(urls[name], process=runtime)
            samples = side_by_side(urls, args.rounds, args.seconds)
        finally:
            for process in (direct, granian, runtime):
                process.terminate()
                process.wait(30)
    rows, summary = compare(samples, "runtime", "direct")
    _, on_granian = compare(samples, "runtime", "direct-granian")
    print(table(rows))
    print()
    print(table([{"direct on": "hypercorn", **summary}]))
    print(table([{"direct on": "granian", **on_granian}]))
    saved = {"runs": rows, "summary": summary, "summary_granian": on_granian}
    print(f"\nsaved {save('app_throughput', saved)}")


if __name__ == "__main__":
    main()
