"""The full path over HTTP: `courtyard serve` as the orchestrator, a second Courtyard
server as the target, and `courtyard releases-agent` deploying."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from releases_kit import ALL, SECRET, archive, token

DONE = ("succeeded", "failed")


def _client(url: str, user: str) -> httpx.Client:
    bearer = token(user, "acme", [], ALL)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bearer}"}, timeout=30)


def _ok(answer: httpx.Response, status: int = 200) -> dict:
    assert answer.status_code == status, answer.text
    return answer.json()["data"]


def _agent(url: str, agent: dict) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("courtyard")),
            "releases-agent",
            "--server",
            url,
            "--agent-id",
            agent["id"],
            "--once",
        ],
        env={"RELEASES_AGENT_TOKEN": agent["token"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _job(client: httpx.Client, promotion: str, states: tuple[str, ...]) -> dict:
    """The promotion's deployment job once it is in one of `states`."""
    deadline = time.monotonic() + 30
    while True:
        jobs = _ok(
            client.get(
                "/api/v1/deployment-jobs", params={"filter": f'{{"promotionId": "{promotion}"}}'}
            )
        )
        if jobs and jobs[0]["status"] in states:
            return jobs[0]
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)


@pytest.mark.slow
def test_release_to_prod_through_an_agent(courtyard_server):
    orchestrator = courtyard_server(only_plugins=["releases"], jwt_secret=SECRET)
    target_server = courtyard_server(only_plugins=[])
    key = target_server.create_key(roles=["editor"])
    alice, bob, carol = (_client(orchestrator.url, u) for u in ("alice", "bob", "carol"))

    dev = _ok(alice.post("/api/v1/environments", json={"name": "dev", "order": 1}), 201)
    prod = _ok(
        alice.post(
            "/api/v1/environments",
            json={"name": "prod", "order": 2, "requiredApprovals": 2, "separationOfDuties": True},
        ),
        201,
    )
    agent = _ok(alice.post("/api/v1/agents/register", json={"name": "edge"}), 201)
    for env in (dev, prod):
        _ok(
            alice.post(
                "/api/v1/targets",
                json={
                    "name": f"edge-{env['name']}",
                    "type": "courtyard",
                    "environmentId": env["id"],
                    "agentId": agent["id"],
                    "connection": {"url": target_server.url, "apiKey": key},
                },
            ),
            201,
        )
    shop = _ok(
        alice.post("/api/v1/components", json={"name": "shop", "kind": "courtyard-app"}), 201
    )
    _ok(
        alice.post(
            f"/api/v1/components/{shop['id']}/sync-versions",
            data={"version": "1.0.0"},
            files={"file": ("shop.tgz", archive("hello prod"), "application/gzip")},
        )
    )
    release = _ok(alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    _ok(alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"}))

    to_dev = _ok(
        alice.post(
            "/api/v1/promotions", json={"releaseId": release["id"], "environmentId": dev["id"]}
        ),
        201,
    )
    _job(alice, to_dev["id"], ("running",))  # its task waits for the agent
    _agent(orchestrator.url, agent)
    assert _job(alice, to_dev["id"], DONE)["status"] == "succeeded"
    assert "hello prod" in httpx.get(f"{target_server.url}/shop/").text

    to_prod = _ok(
        alice.post(
            "/api/v1/promotions", json={"releaseId": release["id"], "environmentId": prod["id"]}
        ),
        201,
    )["id"]
    _ok(bob.post(f"/api/v1/promotions/{to_prod}/approve"))
    _ok(carol.post(f"/api/v1/promotions/{to_prod}/approve"))
    _job(alice, to_prod, ("running",))
    _agent(orchestrator.url, agent)
    assert _job(alice, to_prod, DONE)["status"] == "succeeded"

    [public] = _ok(alice.get("/api/v1/signing-keys"))
    key_obj = Ed25519PublicKey.from_public_bytes(base64.b64decode(public["publicKey"]))
    packet = _ok(alice.get(f"/api/v1/promotions/{to_prod}/evidence"))
    download = _ok(alice.get(f"/api/v1/evidence-packets/{packet['id']}/download"))
    key_obj.verify(base64.b64decode(download["signature"]), download["packet"].encode())
    assert [a["approver"] for a in packet["content"]["approvals"]] == ["bob", "carol"]
    assert "Traceback" not in orchestrator.log
