"""Every bench script still runs: each once in smoke mode (bench/smoke.py), no timings
checked. Slow: about 3 minutes for all of them on 2 cores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("bench_smoke", BENCH / "smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


smoke = _smoke_module()


def test_every_bench_file_is_a_script_or_a_helper():
    files = {path.name for path in BENCH.glob("*.py")}
    assert files >= smoke.HELPERS, smoke.HELPERS - files
    assert set(smoke.scripts()) == files - smoke.HELPERS
    for script in smoke.scripts():
        text = (BENCH / script).read_text()
        assert 'if __name__ == "__main__":' in text, f"{script} is not a script"


@pytest.mark.slow
@pytest.mark.parametrize("script", smoke.scripts())
def test_bench_script_runs_in_smoke_mode(script, tmp_path):
    outcome = smoke.run(script, tmp_path)
    if outcome.status == "skipped":
        pytest.skip(f"{script}: {outcome.why}")
    assert outcome.status == "passed", f"{outcome.why}\n{outcome.output}"
    saved = list(tmp_path.glob("*.json"))
    assert saved, outcome.output
    # It printed its figures: a table header line above the saved path.
    assert len(outcome.output.strip().splitlines()) >= 3, outcome.output
