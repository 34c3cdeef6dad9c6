"""Source webhooks (`POST /api/webhooks/source`): CI for main, once per commit, always
202; the source repository's post-commit hook; the optional watcher."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_kit import SPEC, assert_done, register, settings, wait_op

URL = "/api/webhooks/source"


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout.strip()


async def test_a_main_commit_runs_ci_once(platform: Any) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    event = {
        "project_id": project_id,
        "repo": "source",
        "branch": "main",
        "ref": "refs/heads/main",
        "commit": "abc123",
    }
    answer = await rt.client.post(URL, json=event)
    assert answer.status_code == 202
    body = answer.json()
    assert set(body) == {"accepted", "reason", "trigger", "project", "op", "commit"}
    assert body["accepted"] is True and body["reason"] == ""
    assert body["trigger"] == "source.main.webhook"
    assert body["project"] == project_id and body["commit"] == "abc123"
    assert body["op"]["kind"] == "ci"
    op = await wait_op(rt.client, body["op"]["id"])
    assert_done(op)
    assert [s["worker"] for s in op["steps"]] == ["imageBuilder", "manifestRenderer"]
    assert op["params"]["commit"] == "abc123"

    again = await rt.client.post(URL, json=event)
    assert again.status_code == 202
    assert again.json() == {
        "accepted": False,
        "reason": "ignored: commit already processed",
        "trigger": "source.main.webhook",
        "project": project_id,
        "op": None,
        "commit": "abc123",
    }


IGNORED = [
    ({"repo": "manifests", "branch": "main"}, "only source repo"),
    ({"branch": "develop"}, "only main branch"),
    ({"ref": "refs/heads/feature"}, "only main branch"),
    ({"branch": "main", "ref": "refs/heads/other"}, "only main branch"),
    ({}, "only main branch"),
    ({"branch": "main", "project_id": "nope"}, "project not found"),
    ({"branch": "main", "project_id": ""}, "project_id is required"),
]


async def test_other_events_are_ignored_with_202(platform: Any) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    for event, reason in IGNORED:
        answer = await rt.client.post(URL, json={"project_id": project_id, "commit": "c1", **event})
        assert answer.status_code == 202
        body = answer.json()
        assert body["accepted"] is False and body["op"] is None, event
        assert body["reason"].startswith("ignored: ") and reason in body["reason"], event
    # None of them marked the commit as processed.
    ok = await rt.client.post(
        URL, json={"project_id": project_id, "branch": "main", "commit": "c1"}
    )
    assert ok.json()["accepted"] is True
    assert_done(await wait_op(rt.client, ok.json()["op"]["id"]))


async def test_main_is_named_three_ways(platform: Any) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    for number, name in enumerate(["main", "heads/main", "refs/heads/main"]):
        key = "ref" if name.startswith("refs/") else "branch"
        answer = await rt.client.post(
            URL, json={"project_id": project_id, key: name, "commit": f"c{number}"}
        )
        assert answer.json()["accepted"] is True, name
        assert_done(await wait_op(rt.client, answer.json()["op"]["id"]))


async def test_a_malformed_webhook_body_is_400(platform: Any) -> None:
    rt = await platform()
    assert (await rt.client.post(URL, content=b"nope")).status_code == 400
    assert (await rt.client.post(URL, json=["x"])).status_code == 400
    assert (await rt.client.post(URL, json={"project_id": 1})).status_code == 400


async def test_webhooks_for_a_busy_project_queue_behind_it(platform: Any) -> None:
    rt = await platform(wait_seconds=0)
    project_id = (await register(rt.client))["project"]["id"]
    await wait_op(
        rt.client,
        (await rt.client.get(f"/api/projects/{project_id}")).json()["status"]["last_op_id"],
    )
    await rt.client.post("/api/cli/queues/platform.pipeline/pause")
    first, second = await asyncio.gather(
        rt.client.post(URL, json={"project_id": project_id, "branch": "main", "commit": "c1"}),
        rt.client.post(URL, json={"project_id": project_id, "branch": "main", "commit": "c2"}),
    )
    ops = [first.json()["op"], second.json()["op"]]
    assert all(a.status_code == 202 and a.json()["accepted"] for a in (first, second))
    project = (await rt.client.get(f"/api/projects/{project_id}")).json()
    holder = project["status"]["last_op_id"]
    assert holder in {op["id"] for op in ops}
    await rt.client.post("/api/cli/queues/platform.pipeline/unpause")
    done = [await wait_op(rt.client, op["id"]) for op in ops]
    for op in done:
        assert_done(op)
    # The queued one started once the other finished.
    first_done, second_done = sorted(done, key=lambda op: op["started"])
    assert first_done["finished"] <= second_done["started"]


async def test_a_webhook_duplicate_under_concurrent_deliveries(platform: Any) -> None:
    rt = await platform(wait_seconds=0)
    project_id = (await register(rt.client))["project"]["id"]
    event = {"project_id": project_id, "branch": "main", "commit": "same"}
    answers = await asyncio.gather(*(rt.client.post(URL, json=event) for _ in range(6)))
    accepted = [a.json() for a in answers if a.json()["accepted"]]
    assert len(accepted) == 1
    assert_done(await wait_op(rt.client, accepted[0]["op"]["id"]))


async def test_the_watcher_runs_ci_for_new_commits(platform: Any, tmp_path: Path) -> None:
    rt = await platform(watcher=True, watcher_seconds=0.1)
    project_id = (await register(rt.client))["project"]["id"]
    source = (
        tmp_path
        / "data"
        / "plugin-data"
        / "platform"
        / "artifacts"
        / project_id
        / "repos"
        / "source"
    )
    (source / "main.go").write_text("package main\n\nfunc main() {}\n")
    git(source, "commit", "-q", "--no-verify", "-am", "feat: change")
    commit = git(source, "rev-parse", "HEAD")
    op = None
    deadline = time.monotonic() + 10
    while op is None and time.monotonic() < deadline:
        ops = (await rt.client.get(f"/api/projects/{project_id}/ops")).json()["ops"]
        op = next((o for o in ops if o["kind"] == "ci"), None)
        await asyncio.sleep(0.05)
    assert op is not None
    assert op["params"] == {
        "commit": commit,
        "trigger": "source.main.watcher",
        "base_url": "http://127.0.0.1:8000",
    }
    assert_done(await wait_op(rt.client, op["id"]))
    # The webhook for the same commit is deduplicated with the watcher's.
    hook = await rt.client.post(
        URL, json={"project_id": project_id, "branch": "main", "commit": commit}
    )
    assert hook.json()["reason"] == "ignored: commit already processed"
    await asyncio.sleep(0.3)  # more watcher passes start nothing more
    ops = (await rt.client.get(f"/api/projects/{project_id}/ops")).json()["ops"]
    assert [o["kind"] for o in ops].count("ci") == 1


class Catcher(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the server the hook posts to: keeps every body."""

    bodies: list[dict[str, Any]]
    keys: list[str | None]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.keys.append(self.headers.get("Authorization"))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_the_hook_posts_main_commits_only(platform: Any, tmp_path: Path) -> None:
    Catcher.bodies, Catcher.keys = [], []
    catcher = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Catcher)
    threading.Thread(target=catcher.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{catcher.server_address[1]}"
        rt = await platform(public_url=url)
        project_id = (await register(rt.client))["project"]["id"]
        source = (
            tmp_path
            / "data"
            / "plugin-data"
            / "platform"
            / "artifacts"
            / project_id
            / "repos"
            / "source"
        )
        assert Catcher.bodies == []  # the platform's own commit posted nothing
        (source / "main.go").write_text("package main\n\nfunc main() { println(1) }\n")
        await asyncio.to_thread(
            git, source, "commit", "-q", "-am", "feat: change", env={"COURTYARD_API_KEY": "k1"}
        )
        commit = git(source, "rev-parse", "HEAD")
        git(source, "checkout", "-q", "-b", "feature")
        (source / "main.go").write_text("package main\n\nfunc main() { println(2) }\n")
        await asyncio.to_thread(git, source, "commit", "-q", "-am", "feat: on a branch")
        git(source, "checkout", "-q", "main")
        await asyncio.to_thread(
            git, source, "commit", "-q", "--allow-empty", "-m", "platform-sync: by hand"
        )
    finally:
        catcher.shutdown()
    assert Catcher.bodies == [
        {
            "project_id": project_id,
            "repo": "source",
            "branch": "main",
            "ref": "refs/heads/main",
            "commit": commit,
        }
    ]
    assert Catcher.keys == ["Bearer k1"]  # from the committer's environment, not the hook
    hook = (source / ".git" / "hooks" / "post-commit").read_text()
    assert "k1" not in hook
    # What the hook posted runs CI.
    answer = await rt.client.post(URL, json=Catcher.bodies[0], headers={"Origin": ""})
    assert answer.status_code == 202 and answer.json()["accepted"]
    assert_done(await wait_op(rt.client, answer.json()["op"]["id"]))


@pytest.mark.slow
def test_a_commit_in_the_source_repo_runs_ci_through_the_hook(
    courtyard_server: Any, tmp_path: Path
) -> None:
    server = courtyard_server(**settings())
    headers = {"Origin": server.url}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        created = client.post("/api/events/registration", json={"action": "create", "spec": SPEC})
        assert created.status_code == 200, created.text
        project_id = created.json()["project"]["id"]
        assert_done(created.json()["final"])
        source = (
            tmp_path
            / "data"
            / "plugin-data"
            / "platform"
            / "artifacts"
            / project_id
            / "repos"
            / "source"
        )
        (source / "main.go").write_text("package main\n\nfunc main() { println(1) }\n")
        git(source, "commit", "-q", "-am", "feat: local source change")  # runs the hook
        commit = git(source, "rev-parse", "HEAD")

        op = None
        deadline = time.monotonic() + 15
        while op is None and time.monotonic() < deadline:
            ops = client.get(f"/api/projects/{project_id}/ops").json()["ops"]
            op = next((o for o in ops if o["kind"] == "ci"), None)
            time.sleep(0.05)
        assert op is not None, server.log
        assert op["params"]["commit"] == commit
        assert op["params"]["trigger"] == "source.main.webhook"
        while op["status"] not in ("done", "error"):
            op = client.get(f"/api/ops/{op['id']}").json()
            time.sleep(0.05)
        assert_done(op)
        image = client.get(f"/api/projects/{project_id}/artifacts/build/build.json").json()
        assert image["source_commit"] == commit

        # The same webhook again, as a git hook would post it: ignored.
        again = httpx.post(
            f"{server.url}{URL}",
            json={"project_id": project_id, "repo": "source", "branch": "main", "commit": commit},
        )
        assert again.status_code == 202
        assert again.json()["reason"] == "ignored: commit already processed"

        # A commit on another branch runs nothing.
        git(source, "checkout", "-q", "-b", "feature")
        (source / "main.go").write_text("package main\n\nfunc main() { println(2) }\n")
        git(source, "commit", "-q", "-am", "feat: on a branch")
        time.sleep(0.5)
        ops = client.get(f"/api/projects/{project_id}/ops").json()["ops"]
        assert [o["kind"] for o in ops].count("ci") == 1
