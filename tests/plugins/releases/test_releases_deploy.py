"""Deployments of approved promotions on targets, stickers, a failure and a rollback."""

from __future__ import annotations

import base64
import json
import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from releases_kit import (
    app_component,
    data,
    environment,
    error,
    fake_courtyard,
    finished_job,
    promote,
    upload,
    wait_job,
)

KEY = "cyk_0123456789abcdef_deploy-key-for-the-target-server"


def script_target(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)
    return str(path)


async def test_promotion_path_with_deployments(releases, tmp_path):
    alice, bob, carol = releases.user("alice"), releases.user("bob"), releases.user("carol")
    dev = await environment(alice, "dev", order=1)
    prod = await environment(alice, "prod", order=2, requiredApprovals=2, separationOfDuties=True)
    shop = await app_component(alice)
    await upload(alice, shop["id"], "1.0.0")
    release = data(await alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    release = data(
        await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})
    )
    digest = release["components"][0]["digest"]
    deploy = script_target(
        tmp_path, "deploy", f"env > {tmp_path}/env.txt\necho deployed $RELEASE_NAME\n"
    )
    with fake_courtyard() as server:
        edge = data(
            await alice.post(
                "/api/v1/targets",
                json={
                    "name": "edge",
                    "type": "courtyard",
                    "environmentId": dev["id"],
                    "connection": {"url": server.url, "apiKey": KEY},
                },
            ),
            201,
        )
        data(
            await alice.post(
                "/api/v1/targets",
                json={
                    "name": "box",
                    "type": "script",
                    "environmentId": prod["id"],
                    "connection": {"deployScript": deploy, "secrets": {"TOKEN": "s3cr3t-value"}},
                },
            ),
            201,
        )
        to_dev = data(await promote(alice, release["id"], dev["id"]), 201)
        job = await finished_job(alice, to_dev["id"])
        assert job["status"] == "succeeded", job
        [upload_body] = server.uploads
        assert b"shop" in upload_body and f"Bearer {KEY}" in server.seen_keys
        sticker = data(await alice.get(f"/api/v1/targets/{edge['id']}/sticker"))
        assert sticker["releaseId"] == release["id"] and sticker["deployedBy"] == "alice"
        assert sticker["components"][0]["digest"] == digest
        assert sticker["components"][0]["appVersion"] == "1.0.0"
        assert data(await alice.get(f"/api/v1/promotions/{to_dev['id']}"))["status"] == "deployed"
        [task] = data(await alice.get(f"/api/v1/deployment-jobs/{job['id']}/tasks"))
        logs = data(await alice.get(f"/api/v1/deployment-jobs/{job['id']}/tasks/{task['id']}/logs"))
        assert "POST /api/apps/upload answered 200" in logs["logs"] and KEY not in logs["logs"]
        [artifact] = data(await alice.get(f"/api/v1/deployment-jobs/{job['id']}/artifacts"))
        assert artifact["digest"] == digest
        one = await alice.get(f"/api/v1/deployment-jobs/{job['id']}/artifacts/{artifact['id']}")
        assert data(one)["reference"] == f"shop@{digest}"

    # The policy gate of prod now passes: deployed to dev.
    to_prod = data(await promote(alice, release["id"], prod["id"]), 201)["id"]
    await bob.post(f"/api/v1/promotions/{to_prod}/approve")
    await carol.post(f"/api/v1/promotions/{to_prod}/approve")
    job = await finished_job(alice, to_prod)
    assert job["status"] == "succeeded", job
    env = (tmp_path / "env.txt").read_text()
    assert f"COMPONENT_SHOP_REFERENCE=shop@{digest}" in env
    assert "TOKEN=s3cr3t-value" in env and "RELEASE_NAME=r1" in env
    logs = data(
        await alice.get(f"/api/v1/deployment-jobs/{job['id']}/tasks/{job['tasks'][0]['id']}/logs")
    )
    assert "deployed r1" in logs["logs"]

    # Every decided promotion and finished deployment has a signed packet.
    [key] = data(await alice.get("/api/v1/signing-keys"))
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["publicKey"]))
    packets = data(await alice.get("/api/v1/evidence-packets", params={"pageSize": 100}))
    kinds = sorted(p["kind"] for p in packets)
    assert kinds == ["deployment.deploy"] * 2 + ["promotion.decision"] * 2
    for packet in packets:
        download = data(await alice.get(f"/api/v1/evidence-packets/{packet['id']}/download"))
        public.verify(base64.b64decode(download["signature"]), download["packet"].encode())
    deployment = next(
        p for p in packets if p["kind"] == "deployment.deploy" and p["promotionId"] == to_prod
    )
    assert deployment["content"]["targets"][0]["status"] == "succeeded"
    stickers = data(await alice.get("/api/v1/version-stickers"))
    assert len(stickers) == 2
    assert data(await alice.get(f"/api/v1/version-stickers/{stickers[0]['id']}")) == stickers[0]


async def test_failed_deployment_keeps_the_sticker_and_rollback(releases, tmp_path):
    alice = releases.user("alice")
    env = await environment(alice, "dev")
    record = tmp_path / "deployed.txt"
    deploy = script_target(
        tmp_path,
        "deploy",
        f'[ "$COMPONENT_API_VERSION" = "2" ] && {{ echo broken >&2; exit 7; }}\n'
        f'echo "$RELEASE_NAME" > {record}\n',
    )
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "box",
                "type": "script",
                "environmentId": env["id"],
                "connection": {"deployScript": deploy},
            },
        ),
        201,
    )
    error(
        await alice.post("/api/v1/rollbacks", json={"environmentId": env["id"]}),
        422,
        "NO_PREVIOUS_RELEASE",
    )
    api = data(
        await alice.post(
            "/api/v1/components",
            json={"name": "api", "kind": "oci-image", "image": "registry.test/api"},
        ),
        201,
    )
    digests = {"1": "sha256:" + "1" * 64, "2": "sha256:" + "2" * 64}
    await alice.post(
        f"/api/v1/components/{api['id']}/sync-versions",
        json={"versions": [{"version": v, "digest": d} for v, d in digests.items()]},
    )
    ids = {}
    for version in ("1", "2"):
        release = data(
            await alice.post(
                "/api/v1/releases",
                json={
                    "name": f"r{version}",
                    "components": [{"componentId": api["id"], "version": version}],
                },
            ),
            201,
        )
        await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})
        ids[version] = release["id"]

    good = data(await promote(alice, ids["1"], env["id"]), 201)
    assert (await finished_job(alice, good["id"]))["status"] == "succeeded"
    assert record.read_text().strip() == "r1"
    bad = data(await promote(alice, ids["2"], env["id"]), 201)
    failed = await finished_job(alice, bad["id"])
    assert failed["status"] == "failed" and failed["tasks"][0]["status"] == "failed"
    assert "exited with 7" in failed["tasks"][0]["error"]
    logs = data(
        await alice.get(
            f"/api/v1/deployment-jobs/{failed['id']}/tasks/{failed['tasks'][0]['id']}/logs"
        )
    )
    assert "broken" in logs["logs"]
    sticker = data(await alice.get(f"/api/v1/targets/{target['id']}/sticker"))
    assert sticker["releaseName"] == "r1"
    assert data(await alice.get(f"/api/v1/promotions/{bad['id']}"))["status"] == "approved"

    rollback = data(
        await alice.post("/api/v1/rollbacks", json={"environmentId": env["id"], "reason": "r2"}),
        201,
    )
    assert rollback["kind"] == "rollback" and rollback["releaseId"] == ids["1"]
    done = await wait_job(alice, rollback["id"])
    assert done["status"] == "succeeded"
    assert (
        data(await alice.get(f"/api/v1/targets/{target['id']}/sticker"))["deploymentId"]
        == (rollback["id"])
    )
    assert [r["id"] for r in data(await alice.get("/api/v1/rollbacks"))] == [rollback["id"]]
    assert json.loads(json.dumps(done))  # plain JSON all the way


async def test_environment_without_targets_fails_its_job(releases):
    alice = releases.user()
    env = await environment(alice, "empty")
    api = data(
        await alice.post(
            "/api/v1/components",
            json={"name": "api", "kind": "oci-image", "image": "registry.test/api"},
        ),
        201,
    )
    await alice.post(
        f"/api/v1/components/{api['id']}/sync-versions",
        json={"versions": [{"version": "1", "digest": "sha256:" + "1" * 64}]},
    )
    release = data(
        await alice.post(
            "/api/v1/releases",
            json={"name": "r1", "components": [{"componentId": api["id"], "version": "1"}]},
        ),
        201,
    )
    await alice.put(f"/api/v1/releases/{release['id']}", json={"status": "finalized"})
    promotion = data(await promote(alice, release["id"], env["id"]), 201)
    job = await finished_job(alice, promotion["id"])
    assert job["status"] == "failed" and job["error"] == "the environment has no target"
    error(await alice.get("/api/v1/deployment-jobs/nope"), 404, "DEPLOYMENT_JOB_NOT_FOUND")
    error(
        await alice.get(f"/api/v1/deployment-jobs/{job['id']}/tasks/nope"),
        404,
        "DEPLOYMENT_TASK_NOT_FOUND",
    )


async def test_jobs_of_a_dead_process_are_failed_at_start(releases):
    import socket
    import subprocess

    from courtyard_releases.tables import Deployment

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    rows = {
        "dead": f"{host}:{gone.pid}",
        "live": f"{host}:{os.getpid()}",
        "elsewhere": f"another-host:{gone.pid}",
    }
    async with releases.runtime.dispatcher.services.database.session(tenant="acme") as session:
        for job_id, owner in rows.items():
            session.add(
                Deployment(
                    id=job_id,
                    tenant_id="acme",
                    promotion_id="p",
                    release_id="r",
                    environment_id="e",
                    status="running",
                    owner=owner,
                    created_at="2026-01-01T00:00:00.000000Z",
                )
            )
        await session.commit()
    operator = releases.user("op", permissions=["plugins:reload"])
    assert (await operator.post("/api/plugins/reload")).status_code == 200
    alice = releases.user()
    statuses = {
        job_id: data(await alice.get(f"/api/v1/deployment-jobs/{job_id}"))["status"]
        for job_id in rows
    }
    assert statuses == {"dead": "failed", "live": "running", "elsewhere": "running"}
