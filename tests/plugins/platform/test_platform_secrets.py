"""Secret references resolved through the vaults plugin at render time: the value is
never written to a repository, an artifact, an answer or the log."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from courtyard_vaults import generate_key
from platform_kit import assert_done, register, spec

VALUE = "s3cr3t-value-never-written-9f2c"


@pytest.fixture
def vault_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COURTYARD_VAULT_MASTER_KEY", "COURTYARD_VAULT_READ_KEYS", "RUNQY_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", generate_key())


def everything_under(folder: Path) -> bytes:
    """Every file's bytes, git objects decompressed by git itself included."""
    out = b""
    for path in folder.rglob("*"):
        if path.is_file():
            out += path.read_bytes()
    for repo in folder.glob("repos/*"):
        log = subprocess.run(
            ["git", "-C", str(repo), "log", "-p", "--all"], capture_output=True, check=True
        )
        out += log.stdout
    return out


async def test_vault_references_are_resolved_never_written(
    platform: Any, vault_key: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = await platform(vaults=True)
    assert (await rt.client.post("/api/vaults", json={"name": "api-keys"})).status_code == 201
    entry = {"key": "TOKEN", "value": VALUE}
    assert (await rt.client.post("/api/vaults/api-keys/entries", json=entry)).status_code < 300

    env = {"TOKEN": "secret://vaults/api-keys/TOKEN", "OLD": "secret://delinea/42"}
    with caplog.at_level(logging.DEBUG):
        answer = await register(rt.client, spec(environments={"dev": {"vars": env}}))
    assert_done(answer["final"])
    project_id = answer["project"]["id"]
    folder = tmp_path / "data" / "plugin-data" / "platform" / "artifacts" / project_id
    rendered = yaml.safe_load((folder / "deploy" / "dev" / "deployment.yaml").read_text())
    template = rendered["spec"]["template"]
    assert template["spec"]["containers"][0]["env"] == [
        {
            "name": "OLD",
            "valueFrom": {"secretKeyRef": {"name": "demo-app-dev-secrets", "key": "OLD"}},
        },
        {
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "demo-app-dev-secrets", "key": "TOKEN"}},
        },
    ]
    digest = template["metadata"]["annotations"]["platform.example.com/secrets-digest"]
    assert len(digest) == 64

    assert VALUE.encode() not in everything_under(folder)
    assert VALUE not in caplog.text
    for url in (
        f"/api/projects/{project_id}",
        f"/api/ops/{answer['op']['id']}",
        f"/api/projects/{project_id}/ops",
        "/api/projects",
    ):
        assert VALUE not in (await rt.client.get(url)).text

    # A new value changes the digest (so the pods roll), still without being written.
    entry["value"] = VALUE + "-rotated"
    await rt.client.post("/api/vaults/api-keys/entries", json=entry)
    deployed = await rt.client.post("/api/events/deployment", json={"project_id": project_id})
    assert_done(deployed.json()["final"])
    rendered = yaml.safe_load((folder / "deploy" / "dev" / "deployment.yaml").read_text())
    annotations = rendered["spec"]["template"]["metadata"]["annotations"]
    assert annotations["platform.example.com/secrets-digest"] not in ("", digest)
    assert VALUE.encode() not in everything_under(folder)


async def test_a_missing_vault_or_key_fails_the_render(platform: Any, vault_key: None) -> None:
    rt = await platform(vaults=True)
    await rt.client.post("/api/vaults", json={"name": "api-keys"})
    for ref, problem in [
        ("secret://vaults/api-keys/MISSING", "has no such key"),
        ("secret://vaults/nope/TOKEN", "VaultNotFound"),
    ]:
        body = spec(name=f"app-{len(problem)}", environments={"dev": {"vars": {"T": ref}}})
        final = (await register(rt.client, body))["final"]
        assert final["status"] == "error"
        assert ref in final["error"] and problem in final["error"]
        assert final["steps"][-1]["worker"] == "manifestRenderer"
