"""RustCI's documented clients against a real server and a real agent process: the
Python SDK example run verbatim (open and protected mode), SSE log follow with resume,
and an agent SIGKILLed mid-job."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from runners_kit import TIMESTAMP, start_agent, stop_agent, wait_for, wait_job

# The Python SDK example of RustCI's runner API reference, character for character.
EXAMPLE = """import requests
import json

class RustCIRunnerClient:
    def __init__(self, base_url, api_key=None):
        self.base_url = base_url
        self.headers = {'Content-Type': 'application/json'}
        if api_key:
            self.headers['X-API-Key'] = api_key

    def register_runner(self, runner_config):
        response = requests.post(
            f"{self.base_url}/api/runners/register",
            headers=self.headers,
            json=runner_config
        )
        return response.json()

    def get_runner_status(self, runner_id):
        response = requests.get(
            f"{self.base_url}/api/runners/{runner_id}/status",
            headers=self.headers
        )
        return response.json()

    def submit_job(self, runner_id, job_config):
        response = requests.post(
            f"{self.base_url}/api/runners/{runner_id}/jobs",
            headers=self.headers,
            json=job_config
        )
        return response.json()

# Usage
client = RustCIRunnerClient("http://localhost:8080", "your-api-key")

# Register runner
runner_config = {
    "name": "my-docker-runner",
    "type": "docker",
    "host": "localhost",
    "port": 8081,
    "capabilities": ["docker"]
}
result = client.register_runner(runner_config)
print(f"Runner registered: {result['runner_id']}")

# Submit job
job_config = {
    "name": "test-job",
    "steps": [{"name": "test", "run": "echo Hello"}]
}
job_result = client.submit_job(result['runner_id'], job_config)
print(f"Job submitted: {job_result['job_id']}")
"""


# Its JavaScript SDK example, character for character.
JS_EXAMPLE = """class RustCIRunnerClient {
  constructor(baseUrl, apiKey = null) {
    this.baseUrl = baseUrl;
    this.headers = {
      "Content-Type": "application/json",
    };
    if (apiKey) {
      this.headers["X-API-Key"] = apiKey;
    }
  }

  async registerRunner(runnerConfig) {
    const response = await fetch(`${this.baseUrl}/api/runners/register`, {
      method: "POST",
      headers: this.headers,
      body: JSON.stringify(runnerConfig),
    });
    return await response.json();
  }

  async getRunnerStatus(runnerId) {
    const response = await fetch(
      `${this.baseUrl}/api/runners/${runnerId}/status`,
      {
        headers: this.headers,
      }
    );
    return await response.json();
  }

  async submitJob(runnerId, jobConfig) {
    const response = await fetch(
      `${this.baseUrl}/api/runners/${runnerId}/jobs`,
      {
        method: "POST",
        headers: this.headers,
        body: JSON.stringify(jobConfig),
      }
    );
    return await response.json();
  }
}

// Usage
const client = new RustCIRunnerClient("http://localhost:8080", "your-api-key");

// Register runner
const runnerConfig = {
  name: "my-docker-runner",
  type: "docker",
  host: "localhost",
  port: 8081,
  capabilities: ["docker"],
};

client
  .registerRunner(runnerConfig)
  .then((result) => {
    console.log(`Runner registered: ${result.runner_id}`);

    // Submit job
    const jobConfig = {
      name: "test-job",
      steps: [{ name: "test", run: "echo Hello" }],
    };

    return client.submitJob(result.runner_id, jobConfig);
  })
  .then((jobResult) => {
    console.log(`Job submitted: ${jobResult.job_id}`);
  })
  .catch((error) => {
    console.error("Error:", error);
  });
"""


def run_js_example(url: str, folder: Path) -> str:
    """The JavaScript SDK example with Node's fetch; its output."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node (Debian package nodejs)")
    script = folder / "rustci_example.mjs"
    script.write_text(JS_EXAMPLE.replace("http://localhost:8080", url))
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_example(url: str, api_key: str = "your-api-key") -> dict[str, Any]:
    """The SDK example as the reference prints it, with the server's URL and key."""
    source = EXAMPLE.replace("http://localhost:8080", url).replace("your-api-key", api_key)
    namespace: dict[str, Any] = {}
    exec(compile(source, "rustci_example.py", "exec"), namespace)
    return namespace


def follow_and_resume(url: str, client: httpx.Client, runner_id: str) -> None:
    """A job printing three lines, followed with `follow=true`, then resumed with
    `Last-Event-ID` from the first line: the other two, no duplicate."""
    answer = client.post(
        f"/api/runners/{runner_id}/jobs",
        json={
            "name": "count",
            "steps": [{"name": "count", "run": "for i in 1 2 3; do echo line$i; sleep 0.2; done"}],
        },
    )
    job_id = answer.json()["job_id"]
    seen: list[dict[str, Any]] = []
    ids: list[str] = []

    def follow(last: str | None = None, until: int = 3) -> None:
        headers = {"Accept": "text/event-stream"}
        if last:
            headers["Last-Event-ID"] = last
        stream = f"{url}/api/runners/{runner_id}/logs?follow=true&job_id={job_id}"
        with httpx.stream("GET", stream, headers=headers, timeout=10) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            event_id = None
            for line in answer.iter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    entry = json.loads(line[6:])
                    if entry["level"] == "info":
                        seen.append(entry)
                        ids.append(event_id or "")
                    if len(seen) >= until:
                        return

    follow(until=1)
    assert [e["message"] for e in seen] == ["line1"]
    follow(ids[0], until=3)  # resumes after line1: no duplicate, nothing lost
    assert [e["message"] for e in seen] == ["line1", "line2", "line3"]
    assert TIMESTAMP.match(seen[0]["timestamp"])
    assert seen[0]["context"] == {"job_id": job_id, "step": "count"}


def test_the_python_sdk_example_runs_verbatim_with_an_agent(courtyard_server, tmp_path) -> None:
    server = courtyard_server(
        only_plugins=["runners"],
        plugins={"runners": {"heartbeat_seconds": 0.2, "sweep_seconds": 0.1}},
    )
    names = run_example(server.url)
    runner_id, token = names["result"]["runner_id"], names["result"]["registration_token"]
    job_id = names["job_result"]["job_id"]
    assert names["job_result"]["status"] == "queued"
    # The example's runner is a docker runner; this agent runs its jobs natively.
    agent = start_agent(server.url, token, tmp_path / "w", "--executor", "native")
    try:
        with httpx.Client(base_url=server.url) as client:
            job = wait_job(client, runner_id, job_id, ("completed", "failed"))
            assert job["status"] == "completed"
            logs = client.get(f"/api/runners/{runner_id}/logs?job_id={job_id}").json()["logs"]
            assert ("info", "Hello") in [(e["level"], e["message"]) for e in logs]
            status = names["client"].get_runner_status(runner_id)
            assert status["status"] == "active" and status["runner_id"] == runner_id
            assert status["capabilities_status"]["docker"] in ("available", "unavailable")
            follow_and_resume(server.url, client, runner_id)
    finally:
        stop_agent(agent)


def test_the_javascript_sdk_example_runs_with_node(courtyard_server, tmp_path: Path) -> None:
    server = courtyard_server(only_plugins=["runners"])
    output = run_js_example(server.url, tmp_path)
    assert re.search(r"^Runner registered: runner_[0-9a-f-]{36}$", output, re.M), output
    assert re.search(r"^Job submitted: job_[0-9a-f-]{36}$", output, re.M), output


@pytest.mark.slow  # a second real server and agent (the open-mode run is in the default set)
def test_in_protected_mode_the_example_sends_its_key(courtyard_server, tmp_path: Path) -> None:
    server = courtyard_server(only_plugins=["runners"])
    key = server.create_key(permissions=["runners:manage", "runners:jobs", "runners:read"])
    wait_for(lambda: httpx.get(f"{server.url}/api/runners").status_code == 401)
    # `courtyard runner register` with a key saves the URL and token, owner-only.
    from click.testing import CliRunner
    from courtyard_runners.agent.cli import runner_command

    saved = tmp_path / "runner.toml"
    done = CliRunner().invoke(
        runner_command,
        [
            "register",
            "--url",
            server.url,
            "--name",
            "cli",
            "--type",
            "native",
            "--tag",
            "linux",
            "--api-key",
            key,
            "--config",
            str(saved),
        ],
    )
    assert done.exit_code == 0, done.output
    assert done.output.startswith("runner_")
    assert saved.stat().st_mode & 0o777 == 0o600
    assert 'token = "crt_' in saved.read_text()
    refused = CliRunner().invoke(
        runner_command,
        ["register", "--url", server.url, "--name", "cli", "--config", str(tmp_path / "x")],
    )
    assert refused.exit_code != 0 and "AUTHENTICATION_REQUIRED" in refused.output
    names = run_example(server.url, key)
    assert names["job_result"]["status"] == "queued"
    anonymous = httpx.post(
        f"{server.url}/api/runners/register", json={"name": "x", "type": "native"}
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    assert anonymous.json()["success"] is False
    reader = server.create_key(permissions=["runners:read"])
    refused = httpx.post(
        f"{server.url}/api/runners/register",
        headers={"X-API-Key": reader},
        json={"name": "x", "type": "native"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert "timestamp" in refused.json()["error"]["details"]


@pytest.mark.slow  # two agent processes and a crash: several seconds; the sweeper's logic
# is in the default suite (test_runners_status.py, a runner that stops beating)
def test_an_agent_killed_mid_job_leaves_no_job_running(live: Any, tmp_path: Path) -> None:
    env = live()
    marker = tmp_path / "first-try"
    script = f"if [ -f {marker} ]; then echo second; else touch {marker}; echo go; sleep 30; fi"
    job_id = env.submit([{"name": "s", "run": script}], retry_count=1)
    wait_for(lambda: any(e["message"] == "go" for e in env.logs(job_id=job_id)))
    os.kill(env.agent.pid, signal.SIGKILL)
    env.agent.wait()
    # The heartbeats stop: the runner goes inactive and the job back to the queue.
    job = wait_job(env.client, env.runner_id, job_id, ("queued",), timeout=10)
    assert job["attempt"] == 1
    wait_for(
        lambda: (
            env.client.get(f"/api/runners/{env.runner_id}/status").json()["status"] == "inactive"
        )
    )
    lost = [e for e in env.logs(job_id=job_id) if e["level"] == "error"]
    assert "requeued" in lost[-1]["message"]
    agent = start_agent(env.url, env.token, tmp_path / "work2")
    try:
        job = wait_job(env.client, env.runner_id, job_id, ("completed", "failed"))
        assert job["status"] == "completed" and job["attempt"] == 2
    finally:
        stop_agent(agent)  # SIGTERM: a clean exit
    assert agent.returncode == 0
