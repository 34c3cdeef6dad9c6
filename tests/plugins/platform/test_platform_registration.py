"""Registration events and the pipeline they run: real git repositories, artifacts,
manifests committed per environment, one active operation per project."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import yaml
from platform_kit import SPEC, assert_done, register, spec, wait_op


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` (the tests inspect the repositories with git itself)."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def project_folder(tmp_path: Path, project_id: str) -> Path:
    return tmp_path / "data" / "plugin-data" / "platform" / "artifacts" / project_id


async def test_create_produces_real_repositories_and_manifests(
    platform: Any, tmp_path: Path
) -> None:
    rt = await platform()
    answer = await register(rt.client)
    assert set(answer) == {"project", "op", "final"}
    assert answer["op"]["status"] == "queued" and answer["op"]["kind"] == "create"
    assert_done(answer["final"])
    project = answer["project"]
    assert project["status"]["phase"] == "Ready"
    folder = project_folder(tmp_path, project["id"])

    source = folder / "repos" / "source"
    assert git(source, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(source, "log", "-1", "--format=%s").startswith("platform-sync:")
    assert set(git(source, "ls-files").split()) == {"README.md", "go.mod", "main.go"}
    assert "package main" in git(source, "show", "HEAD:main.go")
    hook = source / ".git" / "hooks" / "post-commit"
    assert hook.stat().st_mode & 0o111
    assert "/api/webhooks/source" in hook.read_text() and project["id"] in hook.read_text()
    assert git(source, "status", "--porcelain") == ""

    manifests = folder / "repos" / "manifests"
    files = set(git(manifests, "ls-files").split())
    assert {"dev/deployment.yaml", "dev/service.yaml", "dev/rendered.yaml"} <= files
    assert git(manifests, "status", "--porcelain") == ""
    objects = list(yaml.safe_load_all(git(manifests, "show", "HEAD:dev/rendered.yaml")))
    assert [o["kind"] for o in objects] == [
        "Deployment",
        "Service",
        "NetworkPolicy",
        "NetworkPolicy",
    ]
    deployment = objects[0]
    image = (folder / "build" / "image.txt").read_text().strip()
    assert deployment["apiVersion"] == "apps/v1"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image == project["deployments"]["dev"]["image"]
    assert container["env"] == [{"name": "LOG_LEVEL", "value": "info"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    service = objects[1]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    ingress, egress = objects[2], objects[3]
    assert ingress["spec"]["policyTypes"] == ["Ingress"]
    assert ingress["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert egress["spec"]["policyTypes"] == ["Egress"] and egress["spec"]["egress"] == []

    registration = yaml.safe_load((folder / "registration" / "project.yaml").read_text())
    assert registration == SPEC
    assert (folder / "build" / "Dockerfile").read_text().startswith("FROM golang:1.26")
    steps = {s["worker"]: s for s in answer["final"]["steps"]}
    assert "BuildKit" in steps["imageBuilder"]["message"]
    assert "deploy/dev/rendered.yaml" in steps["manifestRenderer"]["artifacts"]


async def test_update_rerenders_and_commits_the_change(platform: Any, tmp_path: Path) -> None:
    rt = await platform()
    created = await register(rt.client)
    project_id = created["project"]["id"]
    manifests = project_folder(tmp_path, project_id) / "repos" / "manifests"
    before = git(manifests, "rev-parse", "HEAD")

    changed = spec(environments={"dev": {"vars": {"LOG_LEVEL": "debug"}}})
    answer = await rt.client.post(
        "/api/events/registration",
        json={"action": "update", "project_id": project_id, "spec": changed},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["op"]["kind"] == "update"
    assert_done(body["final"])
    assert body["project"]["spec"] == changed
    after = git(manifests, "rev-parse", "HEAD")
    assert after != before
    assert "debug" in git(manifests, "show", "HEAD:dev/deployment.yaml")
    assert git(manifests, "rev-list", "--count", "HEAD") == "3"  # README, create, update

    # The same spec again changes nothing in the repository.
    again = await rt.client.post(
        "/api/events/registration",
        json={"action": "update", "project_id": project_id, "spec": changed},
    )
    assert_done(again.json()["final"])
    assert git(manifests, "rev-parse", "HEAD") == after


async def test_delete_removes_repositories_and_artifacts(platform: Any, tmp_path: Path) -> None:
    rt = await platform()
    created = await register(rt.client)
    project_id = created["project"]["id"]
    folder = project_folder(tmp_path, project_id)
    assert (folder / "repos" / "source" / ".git").is_dir()

    answer = await rt.client.post(
        "/api/events/registration",
        json={"action": "delete", "project_id": project_id, "spec": {"ignored": True}},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"deleted", "op", "final"} and body["deleted"] is True
    assert_done(body["final"])
    assert not folder.exists()
    assert (await rt.client.get(f"/api/projects/{project_id}")).status_code == 404
    op = (await rt.client.get(f"/api/ops/{body['op']['id']}")).json()
    assert op["status"] == "done"  # operations outlive their project


BAD_EVENTS = [
    ({"action": "rename"}, "VALIDATION_ERROR"),
    ({}, "VALIDATION_ERROR"),
    ([], "VALIDATION_ERROR"),
    ({"action": "update", "spec": SPEC}, "VALIDATION_ERROR"),
    ({"action": "delete"}, "VALIDATION_ERROR"),
    ({"action": "create"}, "INVALID_SPEC"),
    ({"action": "create", "spec": {"kind": "App"}}, "INVALID_SPEC"),
    ({"action": "update", "project_id": 5, "spec": SPEC}, "VALIDATION_ERROR"),
]


async def test_bad_registration_events(platform: Any) -> None:
    rt = await platform()
    for body, code in BAD_EVENTS:
        answer = await rt.client.post("/api/events/registration", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["code"] == code, body
    assert (await rt.client.get("/api/projects")).json() == []
    answer = await rt.client.post(
        "/api/events/registration", json={"action": "create", "spec": spec(name="X")}
    )
    assert answer.json()["error"]["violations"] == [
        {"field": "spec.name", "message": "'X' must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
    ]
    for body in (
        {"action": "update", "project_id": "nope", "spec": SPEC},
        {"action": "delete", "project_id": "nope"},
    ):
        answer = await rt.client.post("/api/events/registration", json=body)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "PROJECT_NOT_FOUND"


async def test_the_wait_is_bounded_and_the_op_goes_on(platform: Any) -> None:
    rt = await platform(wait_seconds=0)
    answer = await register(rt.client)
    assert answer["final"]["status"] in ("queued", "running")
    assert_done(await wait_op(rt.client, answer["op"]["id"]))


async def test_one_active_operation_per_project_under_concurrent_requests(
    platform: Any, database_url: str
) -> None:
    rt = await platform(wait_seconds=0, runtime={"database_url": database_url})
    created = (await rt.client.post("/api/projects", json=SPEC)).json()
    project_id = created["id"]
    assert_done(await wait_op(rt.client, created["status"]["last_op_id"]))
    # The pipeline's queue paused (through the queues plugin's API): operations stay
    # queued, holding their project's lock, for as long as the test looks.
    pause = await rt.client.post("/api/cli/queues/platform.pipeline/pause")
    assert pause.status_code == 200, pause.text

    def update(n: int) -> Any:
        body = spec(environments={"dev": {"vars": {"N": str(n)}}})
        return rt.client.post(
            "/api/events/registration",
            json={"action": "update", "project_id": project_id, "spec": body},
        )

    answers = await asyncio.gather(*(update(n) for n in range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 7, [a.text for a in answers]
    refused = [a.json() for a in answers if a.status_code == 409]
    assert {r["error"]["code"] for r in refused} == {"OP_IN_PROGRESS"}
    (winner,) = [a.json() for a in answers if a.status_code == 200]
    assert winner["final"]["status"] == "queued"
    for method, url, body in [
        ("POST", "/api/events/deployment", {"project_id": project_id}),
        ("POST", "/api/events/registration", {"action": "delete", "project_id": project_id}),
        ("PUT", f"/api/projects/{project_id}", SPEC),
        ("DELETE", f"/api/projects/{project_id}", None),
    ]:
        busy = await rt.client.request(method, url, json=body)
        assert busy.status_code == 409, (url, busy.text)
        assert winner["op"]["id"] in busy.json()["error"]["message"]
    project = (await rt.client.get(f"/api/projects/{project_id}")).json()
    assert project["spec"] == winner["project"]["spec"]  # the winner's spec, nobody else's

    await rt.client.post("/api/cli/queues/platform.pipeline/unpause")
    assert_done(await wait_op(rt.client, winner["op"]["id"]))
    again = await update(99)
    assert again.status_code == 200


async def test_creates_of_one_name_under_concurrent_requests(platform: Any) -> None:
    rt = await platform(wait_seconds=0)
    answers = await asyncio.gather(*(rt.client.post("/api/projects", json=SPEC) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    assert len((await rt.client.get("/api/projects")).json()) == 1


async def test_a_failed_step_fails_the_operation_and_later_steps_do_not_run(
    platform: Any, tmp_path: Path
) -> None:
    rt = await platform()
    # A vault reference without the vaults plugin's key: manifestRenderer cannot resolve it.
    body = spec(environments={"dev": {"vars": {"TOKEN": "secret://vaults/api/TOKEN"}}})
    answer = await register(rt.client, body)
    final = answer["final"]
    assert final["status"] == "error"
    assert "secret://vaults/api/TOKEN" in final["error"]
    assert [s["status"] for s in final["steps"]] == ["done", "done", "done", "error"]
    assert answer["project"]["status"]["phase"] == "Error"
    assert answer["project"]["status"]["message"] == final["error"]
    entries: list[Any] = []
    for _ in range(100):  # the audit log writes in the background
        audit = await rt.client.get("/api/audit/", params={"action": "platform.op.error"})
        entries = audit.json()["entries"]
        if entries:
            break
        await asyncio.sleep(0.05)
    (entry,) = entries
    assert entry["target"] == final["id"] and entry["plugin"] == "platform"
    assert entry["details"]["kind"] == "create"

    # A deployment of a project whose build is gone fails at its only step.
    other = await register(rt.client, spec(name="other"))
    folder = project_folder(tmp_path, other["project"]["id"])
    (folder / "build" / "build.json").unlink()
    deployed = await rt.client.post(
        "/api/events/deployment", json={"project_id": other["project"]["id"]}
    )
    assert deployed.status_code == 200
    assert deployed.json()["final"]["status"] == "error"
    assert "no image" in deployed.json()["final"]["steps"][0]["error"]
