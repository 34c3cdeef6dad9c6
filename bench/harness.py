"""What every benchmark shares: starting a server, generating load, saving figures.

Load comes from a separate process: Debian's `wrk` when installed, else `loadgen.py`
(an asyncio HTTP/1.1 keep-alive client).

Smoke mode (`COURTYARD_BENCH_SMOKE=1`, see bench/smoke.py): every script runs once with
the smallest rounds, durations and sizes that still go through all of it (`smoke()`
picks them; each load lasts `SMOKE_LOAD_SECONDS`, from loadgen.py, since wrk counts
whole seconds), and writes its JSON to a temporary folder (`COURTYARD_BENCH_RESULTS`, else
`courtyard-bench-smoke` in the system's temporary folder), never to bench/results/. The
figures it prints mean nothing; it only proves the scripts still run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from courtyard.testing import free_port

BENCH = Path(__file__).parent
SMOKE = os.environ.get("COURTYARD_BENCH_SMOKE", "").strip().lower() in ("1", "true", "yes")
SMOKE_LOAD_SECONDS = 0.25
RESULTS = Path(
    os.environ.get("COURTYARD_BENCH_RESULTS")
    or (Path(tempfile.gettempdir(), "courtyard-bench-smoke") if SMOKE else BENCH / "results")
)
ECHO_BODY = json.dumps({"items": ["x" * 90] * 10})  # about 1 KB
T = TypeVar("T")


def smoke(full: T, small: T) -> T:
    """`small` in smoke mode, else `full`: a script's rounds, durations and sizes."""
    return small if SMOKE else full


def require(binary: str, package: str) -> str:
    """The path of `binary`; without it, print why the script is skipped and exit 0."""
    path = shutil.which(binary)
    if path is None:
        print(f"skipped: {binary} is not installed (Debian package {package})")
        sys.exit(0)
    return path


@dataclass
class Server:
    """A server under test."""

    process: subprocess.Popen[bytes]
    url: str
    startup_seconds: float = 0.0

    @property
    def rss_mb(self) -> float:
        """Resident memory of the server process, in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def wait_for(
    url: str, timeout: float = 60, process: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll `url` until it answers 200; return the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(url)


@contextmanager
def serving(
    kind: str, trivial_plugins: int = 0, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Serve the bench routes (and `trivial_plugins` more plugins) until the block ends.

    `kind` is "raw", "quart" or "courtyard" (servers.py, all on one Hypercorn set-up), or
    "courtyard-cli": the real `courtyard serve` command. `env`: more environment variables.
    """
    from servers import write_bench_plugins

    with tempfile.TemporaryDirectory() as tmp:
        plugin_dir, data_dir = Path(tmp, "plugins"), Path(tmp, "data")
        write_bench_plugins(plugin_dir, trivial_plugins)
        port = free_port()
        if kind == "courtyard-cli":
            command = [
                sys.executable,
                "-m",
                "courtyard",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            ready = "/api/health/ready"
        else:
            command = [sys.executable, str(BENCH / "servers.py"), kind, "--port", str(port)]
            ready = "/bench/noop"
        command += ["--plugin-dir", str(plugin_dir), "--data-dir", str(data_dir)]
        started = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, **(env or {})})
        server = Server(process, f"http://127.0.0.1:{port}")
        try:
            wait_for(server.url + ready, process=process)
            server.startup_seconds = time.perf_counter() - started
            yield server
        finally:
            process.terminate()
            process.wait(30)


def load(
    url: str, seconds: float, connections: int, body: str | None = None, hold: bool = False
) -> dict[str, float]:
    """Drive `url` for `seconds` with `connections` keep-alive connections (in smoke mode
    `SMOKE_LOAD_SECONDS`, unless `hold`: a load that must last while something else runs).

    :return: requests per second, p50 and p99 latency in ms, and errors.
    """
    if SMOKE and not hold:
        seconds = min(seconds, SMOKE_LOAD_SECONDS)
    elif shutil.which("wrk"):
        return _wrk(url, seconds, connections, body)
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        url,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    if body is not None:
        command += ["--body", body]
    return json.loads(subprocess.run(command, check=True, capture_output=True).stdout)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, seconds: float, connections: int, body: str | None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(
                'wrk.method = "POST"\n'
                f"wrk.body = {json.dumps(body)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(script.name)

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match[1]) * _UNITS[match[2]]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": (int(errors[1]) if errors else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
    }


def save(name: str, data: object) -> Path:
    """Write `data` to bench/results/<name>.json (in smoke mode, to the smoke folder),
    with when and where it was measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_generator": "wrk" if shutil.which("wrk") and not SMOKE else "loadgen.py",
        "smoke": SMOKE,
        "results": data,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def table(rows: list[dict[str, object]]) -> str:
    """Format rows (same keys) as an aligned text table."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def side_by_side(
    urls: dict[str, str], rounds: int, seconds: float, connections: int = 32
) -> dict[str, list[dict[str, float]]]:
    """Load each URL in turns, `rounds` times (the order alternates each round; the first
    round starts with a 1 s warm-up of each): the samples, by name."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for round_ in range(rounds):
        order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
        for name in order:
            if round_ == 0:
                load(urls[name], 1, connections)  # warm up (an app's worker starts)
            samples[name].append(load(urls[name], seconds, connections))
    return samples


def median_rows(
    samples: dict[str, list[dict[str, float]]], label: str = "server"
) -> list[dict[str, object]]:
    """A row per measured target (named under `label`): each figure the median over its
    rounds, the errors summed."""
    return [
        {
            label: name,
            "rps": statistics.median(s["rps"] for s in runs),
            "p50_ms": statistics.median(s["p50_ms"] for s in runs),
            "p99_ms": statistics.median(s["p99_ms"] for s in runs),
            "errors": int(sum(s["errors"] for s in runs)),
        }
        for name, runs in samples.items()
    ]


def compare(
    samples: dict[str, list[dict[str, float]]], ours: str, base: str
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """A row per server (each figure the median over the rounds), and `ours` / `base`
    requests per second: the median of the rounds' ratios and the worst round's."""
    rows = median_rows(samples)
    ratios = [o["rps"] / b["rps"] for o, b in zip(samples[ours], samples[base], strict=True)]
    summary = {f"{ours}/{base} rps": statistics.median(ratios), "worst round": min(ratios)}
    return rows, summary


def runtime_against(
    name: str,
    bases: Sequence[tuple[str, subprocess.Popen[bytes], str]],
    app_path: str,
    argv: list[str],
    app_dir: Path = BENCH.parent / "apps",
) -> None:
    """Serve `app_dir` (the example apps) with `courtyard serve` beside the `bases`
    servers (each its name, process and URL), measure them all side by side (`--seconds`,
    `--rounds` from `argv`), print the table and the ratio of the runtime's rate to each
    base's, and save them as `name`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=smoke(3, 1))
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        serve = ["serve", "--port", str(port), "--app-dir", str(app_dir), "--data-dir", data]
        runtime = subprocess.Popen(
            [sys.executable, "-m", "courtyard", *serve, "--log-level", "warning"]
        )
        servers = [*bases, ("runtime", runtime, f"http://127.0.0.1:{port}{app_path}")]
        try:
            for _, process, url in servers:
                wait_for(url, process=process)
            urls = {server_name: url for server_name, _, url in servers}
            samples = side_by_side(urls, args.rounds, args.seconds)
        finally:
            for _, process, _ in servers:
                process.terminate()
                process.wait(30)
    rows = median_rows(samples)
    summary = [compare(samples, "runtime", base_name)[1] for base_name, _, _ in bases]
    print(table(rows))
    print()
    for line in summary:
        print(table([line]))
    print(f"\nsaved {save(name, {'runs': rows, 'summary': summary})}")
