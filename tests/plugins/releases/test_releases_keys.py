"""The sealing key: configured, or made once; values sealed under another key give clear
errors and record nothing."""

from __future__ import annotations

import httpx
from cryptography.fernet import Fernet
from releases_kit import ALL, SECRET, User, data, environment, error, pipeline, promote


async def test_another_secret_key_cannot_read_what_the_first_sealed(courtyard, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = await courtyard(
        only_plugins=["releases"],
        jwt_secret=SECRET,
        database_url=url,
        plugins={"releases": {"secret_key": Fernet.generate_key().decode()}},
    )
    alice = User(first.client, "alice", "acme", [], ALL)
    world = await pipeline(alice)
    target = data(
        await alice.post(
            "/api/v1/targets",
            json={
                "name": "t",
                "type": "courtyard",
                "environmentId": world["dev"]["id"],
                "connection": {"url": "http://127.0.0.1:9", "apiKey": "k" * 20},
            },
        ),
        201,
    )
    data(await promote(alice, world["release"]["id"], world["dev"]["id"]), 201)  # makes the key

    second = await courtyard(
        only_plugins=["releases"],
        jwt_secret=SECRET,
        database_url=url,
        data_dir=tmp_path / "other-data",
        plugins={"releases": {"secret_key": Fernet.generate_key().decode()}},
    )
    alice = User(second.client, "alice", "acme", [], ALL)
    error(
        await alice.post(f"/api/v1/targets/{target['id']}/health-check"),
        422,
        "TARGET_SECRETS_UNREADABLE",
    )
    env = await environment(alice, "qa", order=0)
    before = data(await alice.get("/api/v1/promotions"))
    error(await promote(alice, world["release"]["id"], env["id"]), 500, "SIGNING_KEY_UNREADABLE")
    assert data(await alice.get("/api/v1/promotions")) == before


async def test_heartbeat_from_a_program_without_origin(releases):
    alice = releases.user()
    agent = data(await alice.post("/api/v1/agents/register", json={"name": "a"}), 201)
    transport = httpx.ASGITransport(app=releases.runtime.dispatcher)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as bare:
        answer = await bare.post(
            f"/api/v1/agents/{agent['id']}/heartbeat",
            headers={"X-Agent-Token": agent["token"]},
            json={"load": {"cpu": 0.1}},
        )
        assert "origin" not in {k.lower() for k in answer.request.headers}
        assert data(answer)["status"] == "online"
        refused = await bare.post("/api/v1/environments", json={"name": "x"})
        error(refused, 401, "AUTHENTICATION_REQUIRED")
