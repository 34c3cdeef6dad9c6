"""Without a valid master key every vault route answers 503; the data waits for the key."""

from __future__ import annotations

import base64
import logging

import pytest
from courtyard_vaults import VaultsDisabled, generate_key
from vaults_kit import fill, secret, service

ROUTES = [
    ("GET", "/api/vaults", None),
    ("POST", "/api/vaults", {"name": "x"}),
    ("GET", "/api/vaults/x", None),
    ("DELETE", "/api/vaults/x", None),
    ("POST", "/api/vaults/x/entries", {"key": "K", "value": "value"}),
    ("GET", "/api/vaults/x/entries", None),
    ("DELETE", "/api/vaults/x/entries/K", None),
]


async def _all_503(rt, must_name: str, must_not_contain: str | None = None) -> None:
    for method, path, body in ROUTES:
        answer = await rt.client.request(method, path, json=body)
        assert answer.status_code == 503, (method, path)
        error = answer.json()["error"]
        assert error["code"] == "VAULTS_DISABLED"
        assert must_name in error["message"]
        if must_not_contain:
            assert must_not_contain not in answer.text
    page = await rt.client.get("/vaults/")
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert must_name in page.text


async def test_every_route_is_503_without_a_master_key(start, caplog):
    caplog.set_level(logging.INFO)
    rt = await start()
    await _all_503(rt, "RUNQY_VAULT_MASTER_KEY")
    said = [r for r in caplog.records if "vaults are disabled" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]  # a fresh server's quiet default
    with pytest.raises(VaultsDisabled):
        await service(rt).values(["x"])


@pytest.mark.parametrize(
    "bad",
    [
        "definitely-not-base64!",
        base64.b64encode(b"k" * 16).decode(),  # AES-128 sized
        base64.b64encode(b"k" * 64).decode(),
    ],
)
async def test_an_invalid_master_key_is_503(start, monkeypatch, caplog, bad):
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", bad)
    rt = await start()
    await _all_503(rt, "RUNQY_VAULT_MASTER_KEY is not a valid key", must_not_contain=bad)
    said = [r for r in caplog.records if "not a valid key" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in said)  # a mistake: warned


async def test_an_invalid_read_key_is_503(start, monkeypatch, master_key):
    monkeypatch.setenv("COURTYARD_VAULT_READ_KEYS", "short")
    rt = await start()
    await _all_503(rt, "COURTYARD_VAULT_READ_KEYS")


async def test_the_courtyard_variable_is_accepted(start, monkeypatch):
    monkeypatch.setenv("COURTYARD_VAULT_MASTER_KEY", generate_key())
    rt = await start()
    assert (await rt.client.post("/api/vaults", json={"name": "x"})).status_code == 201


async def test_values_wait_for_their_key(start, monkeypatch):
    key = generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", key)
    first = await start()
    value = secret()
    await fill(first.client, "v", {"TOKEN": value})

    monkeypatch.delenv("RUNQY_VAULT_MASTER_KEY")
    without = await start()  # same data directory, same database
    assert (await without.client.get("/api/vaults")).status_code == 503

    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", generate_key())
    wrong = await start()
    answer = await wrong.client.get("/api/vaults/v")
    assert answer.status_code == 200  # the vault is shown; its entry says why it is unread
    (entry,) = answer.json()["entries"]
    assert entry["value"] is None and "COURTYARD_VAULT_READ_KEYS" in entry["error"]

    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", key)
    again = await start()
    assert await service(again).values(["v"]) == {"TOKEN": value}
