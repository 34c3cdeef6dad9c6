"""Deployment events (dev only) and promotion events (exactly the image the source
environment runs), and the manifests they commit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from platform_kit import assert_done, register, wait_op

DEPLOY = "/api/events/deployment"
PROMOTE = "/api/events/promotion"


def show(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def test_deploy_then_promote_carries_the_same_image(platform: Any, tmp_path: Path) -> None:
    rt = await platform()
    created = await register(rt.client)
    project_id = created["project"]["id"]
    dev_image = created["project"]["deployments"]["dev"]["image"]

    deployed = await rt.client.post(DEPLOY, json={"project_id": project_id})
    assert deployed.status_code == 200, deployed.text
    body = deployed.json()
    assert set(body) == {"project", "op", "final"}
    assert body["op"]["kind"] == "deploy" and body["op"]["params"]["environment"] == "dev"
    assert_done(body["final"])
    assert body["final"]["steps"][0]["worker"] == "deployer"
    assert body["project"]["deployments"]["dev"]["image"] == dev_image

    # A new build lands in dev only (CI); staging keeps nothing until a promotion.
    ci = await rt.client.post(
        "/api/webhooks/source", json={"project_id": project_id, "branch": "main", "commit": "c9"}
    )
    assert ci.status_code == 202

    promoted = await rt.client.post(
        PROMOTE, json={"project_id": project_id, "from_env": "dev", "to_env": "staging"}
    )
    assert promoted.status_code in (200, 409), promoted.text
    if promoted.status_code == 409:  # the CI operation still runs: wait for it
        await wait_op(rt.client, ci.json()["op"]["id"])
        promoted = await rt.client.post(
            PROMOTE, json={"project_id": project_id, "from_env": "dev", "to_env": "staging"}
        )
    body = promoted.json()
    assert_done(body["final"])
    assert body["op"]["kind"] == "promote"
    dev = body["project"]["deployments"]["dev"]
    staging = body["project"]["deployments"]["staging"]
    assert staging["image"] == dev["image"] == body["op"]["params"]["image"]
    assert staging["promoted_from"] == "dev"

    manifests = (
        tmp_path
        / "data"
        / "plugin-data"
        / "platform"
        / "artifacts"
        / project_id
        / "repos"
        / "manifests"
    )
    objects = list(yaml.safe_load_all(show(manifests, "staging/rendered.yaml")))
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == dev["image"]
    assert container["env"] == [{"name": "LOG_LEVEL", "value": "warn"}]  # staging's vars
    assert objects[0]["metadata"]["namespace"] == "demo-app-staging"
    files = (await rt.client.get(f"/api/projects/{project_id}/artifacts")).json()["files"]
    assert "promotions/dev-to-staging/rendered.yaml" in files
    assert "deploy/staging/deployment.yaml" in files


async def test_deployment_and_promotion_rules(platform: Any) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    for body, status, code in [
        ({}, 400, "VALIDATION_ERROR"),
        ({"project_id": ""}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "environment": "staging"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "environment": 3}, 400, "VALIDATION_ERROR"),
        ({"project_id": "nope"}, 404, "PROJECT_NOT_FOUND"),
    ]:
        answer = await rt.client.post(DEPLOY, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["code"] == code
    explicit = await rt.client.post(DEPLOY, json={"project_id": project_id, "environment": "dev"})
    assert explicit.status_code == 200
    assert_done(explicit.json()["final"])
    for body, status, code in [
        ({"from_env": "dev", "to_env": "staging"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "to_env": "staging"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "from_env": "dev"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "from_env": "dev", "to_env": "dev"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "from_env": "dev", "to_env": "prod"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "from_env": "qa", "to_env": "dev"}, 400, "VALIDATION_ERROR"),
        ({"project_id": project_id, "from_env": "staging", "to_env": "dev"}, 409, "NOT_DEPLOYED"),
        ({"project_id": "nope", "from_env": "dev", "to_env": "staging"}, 404, "PROJECT_NOT_FOUND"),
    ]:
        answer = await rt.client.post(PROMOTE, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["code"] == code, body
