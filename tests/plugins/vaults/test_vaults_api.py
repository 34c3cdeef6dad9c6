"""The vault endpoints of runqy's API: bodies, key order, status codes and errors."""

from __future__ import annotations

import asyncio

import pytest
from vaults_kit import TIMESTAMP, fill, secret


async def test_the_documented_flow(start, master_key, database_url):
    rt = await start(database_url=database_url)
    client = rt.client

    answer = await client.get("/api/vaults")
    assert answer.status_code == 200
    assert answer.json() == {"vaults": [], "count": 0}

    answer = await client.post(
        "/api/vaults", json={"name": "api-keys", "description": "API keys for external services"}
    )
    assert answer.status_code == 201
    assert answer.json() == {
        "message": "vault created successfully",
        "vault": {"name": "api-keys", "description": "API keys for external services"},
    }
    assert list(answer.json()) == ["message", "vault"]

    answer = await client.post(
        "/api/vaults/api-keys/entries",
        json={"key": "OPENAI_API_KEY", "value": "sk-your-key-here", "is_secret": True},
    )
    assert answer.status_code == 200
    assert answer.json() == {"message": "entry set successfully"}
    answer = await client.post(
        "/api/vaults/api-keys/entries",
        json={"key": "REGION", "value": "eu-west-1", "is_secret": False},
    )
    assert answer.status_code == 200
    # is_secret defaults to true.
    answer = await client.post("/api/vaults/api-keys/entries", json={"key": "HF", "value": "hf12"})
    assert answer.status_code == 200

    answer = await client.get("/api/vaults")
    assert answer.json() == {
        "vaults": [
            {
                "name": "api-keys",
                "description": "API keys for external services",
                "entry_count": 3,
            }
        ],
        "count": 1,
    }
    assert list(answer.json()["vaults"][0]) == ["name", "description", "entry_count"]

    detail = (await client.get("/api/vaults/api-keys")).json()
    assert list(detail) == ["name", "description", "entries", "created_at", "updated_at"]
    assert detail["name"] == "api-keys"
    assert detail["description"] == "API keys for external services"
    assert TIMESTAMP.match(detail["created_at"]) and TIMESTAMP.match(detail["updated_at"])
    assert [(e["key"], e["value"], e["is_secret"]) for e in detail["entries"]] == [
        ("HF", "****", True),
        ("OPENAI_API_KEY", "sk****re", True),
        ("REGION", "eu-west-1", False),
    ]
    for entry in detail["entries"]:
        assert list(entry) == ["key", "value", "is_secret", "created_at", "updated_at"]
        assert TIMESTAMP.match(entry["created_at"]) and TIMESTAMP.match(entry["updated_at"])

    answer = await client.get("/api/vaults/api-keys/entries")
    assert answer.status_code == 200
    assert answer.json() == {"entries": detail["entries"], "count": 3}
    assert list(answer.json()) == ["entries", "count"]

    answer = await client.delete("/api/vaults/api-keys/entries/HF")
    assert answer.status_code == 200
    assert answer.json() == {"message": "entry deleted successfully"}
    assert (await client.get("/api/vaults/api-keys/entries")).json()["count"] == 2

    answer = await client.delete("/api/vaults/api-keys")
    assert answer.status_code == 200
    assert answer.json() == {"message": "vault deleted successfully"}
    assert (await client.get("/api/vaults")).json() == {"vaults": [], "count": 0}
    assert (await client.get("/api/vaults/api-keys")).status_code == 404


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("sk-your-key-here", "sk****re"),
        ("abcde", "ab****de"),
        ("abcd", "****"),
        ("abc", "****"),
        ("a", "****"),
        ("ééééxü", "éé****xü"),
    ],
)
async def test_secret_values_are_masked(start, master_key, value, shown):
    rt = await start()
    await fill(rt.client, "v", {"K": value})
    entries = (await rt.client.get("/api/vaults/v/entries")).json()["entries"]
    assert entries[0]["value"] == shown
    assert (await rt.client.get("/api/vaults/v")).json()["entries"][0]["value"] == shown


async def test_setting_an_entry_again_replaces_it(start, master_key, database_url):
    rt = await start(database_url=database_url)
    await fill(rt.client, "v", {"TOKEN": "first-value"})
    before = (await rt.client.get("/api/vaults/v/entries")).json()["entries"][0]
    answer = await rt.client.post(
        "/api/vaults/v/entries", json={"key": "TOKEN", "value": "second", "is_secret": False}
    )
    assert answer.status_code == 200
    after = (await rt.client.get("/api/vaults/v/entries")).json()
    assert after["count"] == 1
    assert after["entries"][0]["value"] == "second"
    assert after["entries"][0]["is_secret"] is False
    assert after["entries"][0]["created_at"] == before["created_at"]


async def test_conflicts_and_unknown_names(start, master_key, database_url):
    rt = await start(database_url=database_url)
    client = rt.client
    await fill(client, "v", {"A": "value-a"})

    answer = await client.post("/api/vaults", json={"name": "v"})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "VAULT_EXISTS"

    for method, path, body in [
        ("GET", "/api/vaults/nope", None),
        ("DELETE", "/api/vaults/nope", None),
        ("GET", "/api/vaults/nope/entries", None),
        ("POST", "/api/vaults/nope/entries", {"key": "A", "value": "x"}),
        ("DELETE", "/api/vaults/nope/entries/A", None),
    ]:
        answer = await client.request(method, path, json=body)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"] == {
            "code": "VAULT_NOT_FOUND",
            "message": "vault 'nope' not found",
        }

    answer = await client.delete("/api/vaults/v/entries/MISSING")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "ENTRY_NOT_FOUND"
    assert "MISSING" in answer.json()["error"]["message"]


async def test_bad_bodies_and_names_are_400(start, master_key):
    rt = await start()
    client = rt.client
    await fill(client, "v", {})
    value = secret()
    cases = [
        ("/api/vaults", b"not json"),
        ("/api/vaults", b"[1, 2]"),
        ("/api/vaults", {}),
        ("/api/vaults", {"name": ""}),
        ("/api/vaults", {"name": "has space"}),
        ("/api/vaults", {"name": "a/b"}),
        ("/api/vaults", {"name": "-leading-dash"}),
        ("/api/vaults", {"name": "x" * 65}),
        ("/api/vaults", {"name": 7}),
        ("/api/vaults", {"name": "ok", "description": 3}),
        ("/api/vaults", {"name": "ok", "description": "d" * 1001}),
        ("/api/vaults/v/entries", b"{"),
        ("/api/vaults/v/entries", {"value": value}),
        ("/api/vaults/v/entries", {"key": "1ABC", "value": value}),
        ("/api/vaults/v/entries", {"key": "WITH-DASH", "value": value}),
        ("/api/vaults/v/entries", {"key": "K" * 129, "value": value}),
        ("/api/vaults/v/entries", {"key": "K"}),
        ("/api/vaults/v/entries", {"key": "K", "value": ""}),
        ("/api/vaults/v/entries", {"key": "K", "value": 12}),
        ("/api/vaults/v/entries", {"key": "K", "value": value + "\x00"}),
        ("/api/vaults/v/entries", {"key": "K", "value": "x" * (64 * 1024 + 1)}),
        ("/api/vaults/v/entries", {"key": "K", "value": value, "is_secret": "yes"}),
        ("/api/vaults/bad%20name/entries", {"key": "K", "value": value}),
    ]
    for path, body in cases:
        if isinstance(body, bytes):
            answer = await client.post(path, content=body)
        else:
            answer = await client.post(path, json=body)
        assert answer.status_code == 400, (path, body, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert value not in error["message"]
    assert (await client.get("/api/vaults")).json()["count"] == 1
    assert (await client.get("/api/vaults/v/entries")).json()["count"] == 0
    answer = await client.delete("/api/vaults/v/entries/1BAD")
    assert answer.status_code == 400


async def test_a_body_without_content_type_is_read(start, master_key):
    rt = await start()
    answer = await rt.client.post("/api/vaults", content=b'{"name": "plain"}')
    assert answer.status_code == 201
    # curl -d sends a form type: read as JSON all the same.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = await rt.client.post("/api/vaults", content=b'{"name": "form"}', headers=form)
    assert answer.status_code == 201
    # text/plain is what a form on another site posts without a preflight: refused.
    answer = await rt.client.post(
        "/api/vaults", content=b'{"name": "text"}', headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    assert (await rt.client.get("/api/vaults")).json()["count"] == 2


async def test_concurrent_writers(start, master_key, database_url):
    rt = await start(database_url=database_url)
    client = rt.client
    creates = await asyncio.gather(
        *(client.post("/api/vaults", json={"name": "race"}) for _ in range(8))
    )
    assert sorted(a.status_code for a in creates) == [201] + [409] * 7

    sets = await asyncio.gather(
        *(
            client.post("/api/vaults/race/entries", json={"key": "K", "value": f"value-{i}"})
            for i in range(10)
        )
    )
    assert [a.status_code for a in sets] == [200] * 10
    assert (await client.get("/api/vaults/race/entries")).json()["count"] == 1
    service_values = await rt.dispatcher.current.record("vaults").service.values(["race"])
    assert service_values["K"] in {f"value-{i}" for i in range(10)}


async def test_deleting_a_vault_removes_its_entries(start, master_key, database_url):
    rt = await start(database_url=database_url)
    await fill(rt.client, "gone", {"A": "value-a", "B": "value-b"})
    await fill(rt.client, "kept", {"A": "value-c"})
    assert (await rt.client.delete("/api/vaults/gone")).status_code == 200
    # Recreated under the same name, the vault starts empty.
    assert (await rt.client.post("/api/vaults", json={"name": "gone"})).status_code == 201
    assert (await rt.client.get("/api/vaults/gone")).json()["entries"] == []
    listing = (await rt.client.get("/api/vaults")).json()
    assert [(v["name"], v["entry_count"]) for v in listing["vaults"]] == [("gone", 0), ("kept", 1)]


async def test_the_routes_are_in_the_openapi_document(start, master_key):
    rt = await start()
    document = (await rt.client.get("/api/openapi.json")).json()
    paths = document["paths"]
    expected = {
        "/api/vaults": {"get", "post"},
        "/api/vaults/{name}": {"get", "delete"},
        "/api/vaults/{name}/entries": {"get", "post"},
        "/api/vaults/{name}/entries/{key}": {"delete"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
        for method in methods:
            assert "vaults" in paths[path][method]["tags"]
