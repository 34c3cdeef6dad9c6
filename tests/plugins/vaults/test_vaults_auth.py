"""Authentication as runqy's API documents it: `Authorization: Bearer $RUNQY_API_KEY`, end to
end on a real server; and no value in the server's log."""

from __future__ import annotations

import httpx
from courtyard_vaults import generate_key
from vaults_kit import secret

API_KEY = "runqy-test-key-0123456789abcdef"


async def test_routes_need_the_api_key(start, master_key, monkeypatch):
    monkeypatch.setenv("RUNQY_API_KEY", API_KEY)
    rt = await start()
    answer = await rt.client.get("/api/vaults")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    answer = await rt.client.get("/api/vaults", headers={"Authorization": "Bearer wrong-key"})
    assert answer.status_code == 401
    assert (await rt.client.get("/vaults/")).status_code == 401
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    assert (await rt.client.get("/api/vaults", headers=bearer)).status_code == 200
    answer = await rt.client.post("/api/vaults", json={"name": "v"}, headers=bearer)
    assert answer.status_code == 201
    assert (await rt.client.get("/vaults/", headers=bearer)).status_code == 200


def test_a_real_server_with_the_api_key(courtyard_server):
    value = secret("sk")
    key = generate_key()
    server = courtyard_server(
        only_plugins=["vaults"],
        log_level="debug",
        env={"RUNQY_API_KEY": API_KEY, "RUNQY_VAULT_MASTER_KEY": key},
    )
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/api/vaults").status_code == 401
        answer = client.post(
            "/api/vaults", json={"name": "api-keys", "description": "d"}, headers=bearer
        )
        assert answer.status_code == 201, answer.text
        answer = client.post(
            "/api/vaults/api-keys/entries",
            json={"key": "OPENAI_API_KEY", "value": value},
            headers=bearer,
        )
        assert answer.status_code == 200, answer.text
        detail = client.get("/api/vaults/api-keys", headers=bearer).json()
        assert detail["entries"][0]["value"] == value[:2] + "****" + value[-2:]
        assert client.get("/vaults/", headers=bearer).status_code == 200
        answer = client.post(
            "/api/vaults/api-keys/entries", json={"key": "x-y", "value": value}, headers=bearer
        )
        assert answer.status_code == 400
    assert server.stop() == 0
    log = server.log
    assert "vaults enabled: master key" in log
    assert "/api/vaults" in log  # the log does record the requests
    assert value not in log
    assert key not in log
    assert API_KEY not in log
