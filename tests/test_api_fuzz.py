"""Property-based tests of the whole HTTP API with schemathesis: a real server with every
first-party plugin loaded, driven through its own `/api/openapi.json`, in open mode and in
protected mode with an admin key. Any 5xx, or any answer that contradicts the document
(status code, content type, body schema), fails the test.

The example budget and the seed are fixed, so a run is repeatable and stays within its
time budget; a failure prints schemathesis' report with a `curl` line per case.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)
SEED = "20261204"
EXAMPLES = "8"


def _schemathesis(url: str, report: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/api/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        EXAMPLES,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--phases",
        "examples,fuzzing",
        "--warnings",
        "off",
        "--request-timeout",
        "20",
        "--no-color",
        "--generation-database",
        "none",
        "--report-dir",
        str(report),
    ]
    for header in headers:
        command += ["--header", header]
    return subprocess.run(  # in `report`'s folder: schemathesis leaves files where it runs
        command, capture_output=True, text=True, timeout=300, cwd=report.parent
    )


@pytest.fixture
def full_server(courtyard_server, tmp_path):
    """A server with every first-party plugin (entry points) and vaults enabled."""
    key = base64.b64encode(os.urandom(32)).decode()

    def start(**settings):
        return courtyard_server(env={"COURTYARD_VAULT_MASTER_KEY": key}, **settings)

    return start


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["open", "protected"])
def test_no_input_breaks_the_api(full_server, tmp_path, mode):
    server = full_server()
    headers: list[str] = []
    if mode == "protected":
        headers.append(f"Authorization: Bearer {server.create_key(roles=['admin'])}")
    else:
        headers.append("X-Courtyard-Internal: true")
    done = _schemathesis(server.url, tmp_path / "report", *headers)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "Traceback" not in server.log, server.log[-10000:]
