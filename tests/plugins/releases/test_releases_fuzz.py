"""Property-based tests of the release orchestrator's API with schemathesis, through the
server's own OpenAPI document: no input may give a 5xx or an answer the document does not
describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


@pytest.mark.slow
def test_no_input_breaks_the_release_api(courtyard_server, tmp_path):
    server = courtyard_server(only_plugins=["releases"])
    report = tmp_path / "report"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{server.url}/api/openapi.json",
        "--include-path-regex",
        "^/api/v1/",
        "--checks",
        CHECKS,
        "--max-examples",
        "25",
        "--seed",
        "20261204",
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
        "--header",
        "X-Courtyard-Internal: true",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "Traceback" not in server.log, server.log[-10000:]
