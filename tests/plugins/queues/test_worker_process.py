"""The worker's side of runqy's stdio protocol, with real task processes (no server)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from courtyard_queues.worker.executor import CrashBackoff, LongRunningExecutor, OneShotExecutor
from courtyard_queues.worker.messages import Assignment, Outcome
from courtyard_queues.worker.process import (
    ProcessExited,
    StartupFailed,
    TaskInterrupted,
    TaskProcess,
)
from worker_kit import alive, runqy_module


def assignment(task_id: str, payload: Any = None, **extra: Any) -> Assignment:
    return Assignment(
        task_id=task_id,
        type=extra.get("type", "tasks"),
        payload=payload if payload is not None else {},
        retry_count=extra.get("retry_count", 0),
        max_retry=extra.get("max_retry", 3),
        queue=extra.get("queue", "tasks.default"),
        timeout=extra.get("timeout", 0),
    )


def script(tmp_path: Path, name: str, source: str) -> list[str]:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return [sys.executable, str(path)]


def process(argv: list[str], tmp_path: Path, **env: str) -> TaskProcess:
    return TaskProcess(argv, tmp_path, {**os.environ, **env}, label="test")


# A process that echoes each request back as its result, after optional junk lines.
ECHO = """
import json, sys
print(json.dumps({"status": "ready"}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    for junk in request["payload"].pop("junk", []):
        print(junk, flush=True)
    print(json.dumps({"task_id": request["task_id"], "result": request}), flush=True)
"""


async def test_a_runqy_module_runs_tasks_in_one_process(tmp_path: Path) -> None:
    proc = process(script(tmp_path, "tasks.py", runqy_module("long_running")), tmp_path)
    await proc.start(ready_timeout=20)
    try:
        futures = [
            await proc.submit(assignment(f"t{n}", {"id": f"t{n}", "n": n})) for n in range(5)
        ]
        outcomes = await asyncio.gather(*futures)
        assert [o.result["n"] for o in outcomes] == list(range(5))
        assert {o.result["pid"] for o in outcomes} == {proc.pid}
        assert all(o.result["loaded_by"] == proc.pid for o in outcomes)  # @load ran once, here
        failed = await (await proc.submit(assignment("bad", {"fail": "no such model"})))
        assert not failed.ok and failed.retry is False and "no such model" in (failed.error or "")
        retry = await (await proc.submit(assignment("again", {"retryable": "busy"})))
        assert retry == Outcome(error="busy", retry=True)
    finally:
        await proc.stop("test over", grace=5)
    assert proc.returncode == 0  # end-of-file on stdin ends run()'s loop


async def test_the_request_line_is_runqys(tmp_path: Path) -> None:
    proc = process(script(tmp_path, "echo.py", ECHO), tmp_path)
    await proc.start(ready_timeout=10)
    try:
        task = assignment("t1", {"a": [1, "é"]}, type="resize", retry_count=2, max_retry=5)
        outcome = await (await proc.submit(task))
    finally:
        await proc.stop("done", grace=5)
    assert outcome.result == {
        "task_id": "t1",
        "type": "resize",
        "payload": {"a": [1, "é"]},
        "retry_count": 2,
        "max_retry": 5,
        "queue": "tasks.default",
    }


async def test_malformed_stdout_lines_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    junk = [
        "plain text, not JSON",
        "[1, 2, 3]",
        json.dumps({"task_id": "someone-else", "result": 1}),
        json.dumps({"task_id": 42, "result": 1}),
        json.dumps({"status": "still loading"}),
        "x" * 5000,
        "",
    ]
    proc = TaskProcess(
        script(tmp_path, "echo.py", ECHO), tmp_path, dict(os.environ), label="test", max_line=4096
    )
    await proc.start(ready_timeout=10)
    try:
        with caplog.at_level(logging.DEBUG, logger="courtyard.worker.process"):
            outcome = await (await proc.submit(assignment("t1", {"junk": junk})))
            second = await (await proc.submit(assignment("t2", {})))
    finally:
        await proc.stop("done", grace=5)
    assert outcome.ok and outcome.result["task_id"] == "t1"
    assert second.ok and second.result["task_id"] == "t2"
    text = caplog.text
    assert "not JSON skipped: plain text" in text
    assert "not an object skipped: [1, 2, 3]" in text
    assert "a task it was not given skipped" in text and "someone-else" in text
    assert "42" in text
    assert "dropped a stdout line over 4096 bytes" in text


async def test_stderr_goes_to_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc = process(script(tmp_path, "tasks.py", runqy_module()), tmp_path)
    with caplog.at_level(logging.INFO, logger="courtyard.worker.process"):
        await proc.start(ready_timeout=20)
        await (await proc.submit(assignment("t1", {"id": "t1"})))
        await proc.stop("done", grace=5)
    assert f"test[{proc.pid}] handling t1" in caplog.text


async def test_no_ready_signal_in_time_kills_the_process(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        "slow.py",
        "import os, time\nprint('loading a big model', flush=True)\n"
        "open('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n",
    )
    proc = process(argv, tmp_path)
    started = time.monotonic()
    with pytest.raises(
        StartupFailed, match=r"no ready signal within 0.5 s \(startup_timeout_secs\)"
    ):
        await proc.start(ready_timeout=0.5)
    assert time.monotonic() - started < 5
    assert not alive(int((tmp_path / "pid").read_text()))


async def test_a_startup_error_is_reported(tmp_path: Path) -> None:
    source = "import json\nprint(json.dumps({'status': 'error', 'error': 'no GPU'}), flush=True)\n"
    proc = process(script(tmp_path, "err.py", source + "import time; time.sleep(30)\n"), tmp_path)
    with pytest.raises(StartupFailed, match="the process reported an error: no GPU"):
        await proc.start(ready_timeout=10)
    assert not proc.alive


async def test_a_load_failure_of_runqy_is_a_startup_error(tmp_path: Path) -> None:
    source = (
        "from runqy_python import load, task, run\n"
        "@load\ndef setup():\n    raise RuntimeError('weights missing')\n"
        "@task\ndef handle(payload, ctx):\n    return 1\n"
        "run()\n"
    )
    proc = process(script(tmp_path, "load.py", source), tmp_path)
    with pytest.raises(StartupFailed, match="@load failed: weights missing"):
        await proc.start(ready_timeout=20)


async def test_exiting_before_ready_is_a_startup_error(tmp_path: Path) -> None:
    proc = process(script(tmp_path, "exit.py", "import sys\nsys.exit(3)\n"), tmp_path)
    with pytest.raises(StartupFailed, match="exited with status 3 before it was ready"):
        await proc.start(ready_timeout=10)


async def test_a_command_that_does_not_exist(tmp_path: Path) -> None:
    proc = process([str(tmp_path / "missing-binary")], tmp_path)
    with pytest.raises(StartupFailed, match="cannot start"):
        await proc.start(ready_timeout=10)


async def test_a_crash_mid_task_fails_the_tasks_in_flight(tmp_path: Path) -> None:
    proc = process(script(tmp_path, "tasks.py", runqy_module()), tmp_path)
    await proc.start(ready_timeout=20)
    crash = await proc.submit(assignment("t1", {"id": "t1", "crash": True}))
    queued = await proc.submit(assignment("t2", {"id": "t2"}))
    for future in (crash, queued):
        with pytest.raises(ProcessExited, match="exited with status 3"):
            await future
    assert not proc.stopped_by_worker
    with pytest.raises(ProcessExited, match="not running"):
        await proc.submit(assignment("t3", {}))


async def test_kill_interrupts_the_tasks_in_flight_and_its_children(tmp_path: Path) -> None:
    source = """
import json, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("child", "w").write(str(child.pid))
print(json.dumps({"status": "ready"}), flush=True)
for line in sys.stdin:
    pass  # never answers
"""
    proc = process(script(tmp_path, "hang.py", source), tmp_path)
    await proc.start(ready_timeout=10)
    future = await proc.submit(assignment("t1", {}))
    await proc.kill("cancelled")
    with pytest.raises(TaskInterrupted, match="cancelled"):
        await future
    assert proc.stopped_by_worker
    child = int((tmp_path / "child").read_text())
    for _ in range(50):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child)


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    source = """
import json, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"status": "ready"}), flush=True)
sys.stdin.read()
time.sleep(60)
"""
    proc = process(script(tmp_path, "stubborn.py", source), tmp_path)
    await proc.start(ready_timeout=10)
    started = time.monotonic()
    await proc.stop("shutting down", grace=0.2, term_grace=0.3)
    assert proc.returncode == -9  # SIGTERM was ignored: SIGKILL followed
    assert time.monotonic() - started < 5


# -- executors ----------------------------------------------------------------------------


def factory(argv: list[str], tmp_path: Path, **env: str) -> Any:
    return lambda label: TaskProcess(argv, tmp_path, {**os.environ, **env}, label=label)


async def test_long_running_restarts_a_crashed_process_with_backoff(tmp_path: Path) -> None:
    argv = script(tmp_path, "tasks.py", runqy_module())
    backoff = CrashBackoff(first=0.3, cap=1.0)
    executor = LongRunningExecutor(factory(argv, tmp_path), 20, backoff=backoff)
    await executor.start()
    try:
        first = await executor.run(assignment("t1", {"id": "t1"}))
        crashed_at = time.monotonic()
        with pytest.raises(ProcessExited):
            await executor.run(assignment("t2", {"id": "t2", "crash": True}))
        await asyncio.wait_for(executor.wait_ready(), 20)
        assert time.monotonic() - crashed_at >= 0.3  # the backoff was waited out
        second = await executor.run(assignment("t3", {"id": "t3"}))
        assert executor.starts == 2
        assert second.result["pid"] != first.result["pid"]
        # Crashes in a row wait longer each time: 0.3 s, then 0.6 s.
        with pytest.raises(ProcessExited):
            await executor.run(assignment("t4", {"id": "t4", "crash": True}))
        crashed_at = time.monotonic()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(executor.wait_ready(), 20)
        assert time.monotonic() - crashed_at >= 0.6
        assert backoff.crashes == 2 and executor.starts == 3
    finally:
        await executor.close("test over", 5)


async def test_long_running_abort_restarts_at_once_and_interrupts_the_others(
    tmp_path: Path,
) -> None:
    argv = script(tmp_path, "tasks.py", runqy_module())
    executor = LongRunningExecutor(
        factory(argv, tmp_path), 20, backoff=CrashBackoff(first=30, cap=30)
    )
    await executor.start()
    try:
        slow = asyncio.create_task(executor.run(assignment("slow", {"id": "slow", "sleep": 30})))
        queued = asyncio.create_task(executor.run(assignment("next", {"id": "next"})))
        await asyncio.sleep(0.5)
        await executor.abort("slow", "timed out")
        with pytest.raises(TaskInterrupted, match="timed out"):
            await slow
        with pytest.raises(TaskInterrupted):
            await queued
        await asyncio.wait_for(executor.wait_ready(), 10)  # no 30 s crash backoff
        assert (await executor.run(assignment("t", {"id": "t"}))).ok
    finally:
        await executor.close("test over", 5)


async def test_long_running_start_failure_is_raised(tmp_path: Path) -> None:
    argv = script(tmp_path, "exit.py", "raise SystemExit(2)\n")
    executor = LongRunningExecutor(factory(argv, tmp_path), 10)
    with pytest.raises(StartupFailed, match="status 2"):
        await executor.start()


async def test_one_shot_runs_each_task_in_a_new_process(tmp_path: Path) -> None:
    argv = script(tmp_path, "tasks.py", runqy_module("one_shot"))
    executor = OneShotExecutor(factory(argv, tmp_path), 20)
    await executor.start()
    outcomes = await asyncio.gather(
        *(executor.run(assignment(f"t{n}", {"id": f"t{n}", "n": n})) for n in range(3))
    )
    pids = {o.result["pid"] for o in outcomes}
    assert len(pids) == 3 and executor.starts == 3
    assert not any(alive(pid) for pid in pids)
    failed = await executor.run(assignment("bad", {"fail": "bad input"}))
    assert failed.retry is False and "bad input" in (failed.error or "")


async def test_one_shot_crash_delays_the_next_task(tmp_path: Path) -> None:
    argv = script(tmp_path, "tasks.py", runqy_module("one_shot"))
    executor = OneShotExecutor(factory(argv, tmp_path), 20, backoff=CrashBackoff(first=0.5))
    with pytest.raises(ProcessExited, match="status 3"):
        await executor.run(assignment("t1", {"id": "t1", "crash": True}))
    started = time.monotonic()
    await executor.wait_ready()
    assert time.monotonic() - started >= 0.3
    assert (await executor.run(assignment("t2", {"id": "t2"}))).ok


async def test_one_shot_abort_kills_only_that_task(tmp_path: Path) -> None:
    argv = script(tmp_path, "tasks.py", runqy_module("one_shot"))
    executor = OneShotExecutor(factory(argv, tmp_path), 20)
    slow = asyncio.create_task(executor.run(assignment("slow", {"id": "slow", "sleep": 30})))
    other = asyncio.create_task(executor.run(assignment("quick", {"id": "quick", "sleep": 1})))
    await asyncio.sleep(0.7)
    await executor.abort("slow", "cancelled")
    with pytest.raises(TaskInterrupted, match="cancelled"):
        await slow
    assert (await other).ok


async def test_one_shot_without_a_ready_signal_is_a_failed_task(tmp_path: Path) -> None:
    argv = script(tmp_path, "silent.py", "import time\ntime.sleep(30)\n")
    executor = OneShotExecutor(factory(argv, tmp_path), 0.3, backoff=CrashBackoff(first=0.1))
    with pytest.raises(ProcessExited, match="did not start: no ready signal"):
        await executor.run(assignment("t1", {}))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_the_task_process_dies_with_a_killed_worker(tmp_path: Path) -> None:
    # A task process that ignores end-of-file and SIGTERM would outlive a crude worker.
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import json, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print(json.dumps({'status': 'ready'}), flush=True)\ntime.sleep(120)\n"
    )
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import asyncio, os, sys\n"
        "from courtyard_queues.worker.process import TaskProcess\n"
        "async def main():\n"
        f"    argv = [sys.executable, {str(stubborn)!r}]\n"
        f"    proc = TaskProcess(argv, {str(tmp_path)!r}, os.environ)\n"
        "    await proc.start(20)\n"
        "    print(proc.pid, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, str(worker), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    assert alive(child)
    parent.kill()
    await parent.wait()
    for _ in range(100):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child)
