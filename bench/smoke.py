"""Run every bench script once in smoke mode, so that none of them rots unnoticed.

    uv run python bench/smoke.py [SCRIPT ...]

Each script in bench/ (the helpers aside) runs in a process of its own with
`COURTYARD_BENCH_SMOKE=1` (see harness.py): the smallest rounds, durations and sizes that
still go through the whole script, its JSON written to a temporary folder, never to
bench/results/. A script passes when it exits 0 and prints the path of the figures it
saved there; one whose tool is missing (redis-server, bwrap, arq, ...) prints
`skipped: ...` naming the package and counts as skipped. Timings are not checked: the
figures of a smoke run mean nothing. Exits 1 if any script failed.
`tests/test_bench_smoke.py` (a slow test) runs the same, one test per script.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Modules the scripts use, not benchmarks of their own (each is run by one that is).
HELPERS = frozenset({"harness.py", "servers.py", "loadgen.py", "queues_arq.py", "smoke.py"})
TIMEOUT = 300  # seconds one script may take in smoke mode before it counts as failed
SAVED = re.compile(r"^saved (\S+\.json)", re.MULTILINE)


def scripts() -> list[str]:
    """The bench scripts, by file name."""
    return sorted(path.name for path in BENCH.glob("*.py") if path.name not in HELPERS)


@dataclass
class Outcome:
    """How one script's smoke run went."""

    script: str
    status: str  # "passed", "skipped" or "failed"
    seconds: float
    output: str
    why: str = ""


def run(script: str, results: Path) -> Outcome:
    """Run `script` in smoke mode, its JSON in `results`."""
    env = {
        **os.environ,
        "COURTYARD_BENCH_SMOKE": "1",
        "COURTYARD_BENCH_RESULTS": str(results),
        "PYTHONUNBUFFERED": "1",
    }
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH / script)],
            cwd=BENCH.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode()
        took = time.perf_counter() - started
        return Outcome(script, "failed", took, output, f"took more than {TIMEOUT} s")
    took = time.perf_counter() - started
    output = done.stdout
    if done.returncode != 0:
        return Outcome(script, "failed", took, output, f"exit status {done.returncode}")
    skipped = re.search(r"^skipped: (.*)$", output, re.MULTILINE)
    if skipped:
        return Outcome(script, "skipped", took, output, skipped[1])
    saved = SAVED.search(output)
    if saved is None:
        return Outcome(script, "failed", took, output, "printed no 'saved <file>.json'")
    path = Path(saved[1])
    if path.parent.resolve() != results.resolve() or not path.is_file():
        return Outcome(script, "failed", took, output, f"saved {path}, not in {results}")
    return Outcome(script, "passed", took, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("script", nargs="*", help="the scripts to run (default: all)")
    args = parser.parse_args()
    chosen = args.script or scripts()
    unknown = set(chosen) - set(scripts())
    if unknown:
        parser.error(f"not bench scripts: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="courtyard-bench-smoke-") as tmp:
        for script in chosen:
            print(f"{script} ...", flush=True)
            outcome = run(script, Path(tmp))
            outcomes.append(outcome)
            if outcome.status == "failed":
                print(outcome.output)
            print(f"  {outcome.status} in {outcome.seconds:.1f} s {outcome.why}".rstrip())
    total = time.perf_counter() - started
    counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "skipped", "failed")}
    print(f"\n{', '.join(f'{n} {s}' for s, n in counts.items())} in {total:.0f} s")
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
