"""The platform services' promise: a plugin gets a database session, an identity and an
event stream in a few lines (tests/fixtures/plugins/notes), and one tenant never sees
another's rows."""

from __future__ import annotations

import json

import pytest


async def test_notes_are_kept_per_tenant_and_audited(courtyard, add_fixture_plugins, database_url):
    add_fixture_plugins("notes")
    rt = await courtyard(entry_points=False, database_url=database_url)
    acme = await rt.client_as(permissions=["notes:*"], tenant="acme")
    globex = await rt.client_as(permissions=["notes:*"], tenant="globex")
    reader = await rt.client_as(permissions=["notes:read"], tenant="acme")

    assert (await acme.post("/notes/", json={"text": "acme's"})).status_code == 201
    assert (await globex.post("/notes/", json={"text": "globex's"})).status_code == 201
    assert (await acme.get("/notes/")).json() == {"notes": ["acme's"]}
    assert (await globex.get("/notes/")).json() == {"notes": ["globex's"]}
    assert (await reader.post("/notes/", json={"text": "x"})).status_code == 403
    assert (await rt.client.get("/notes/")).status_code == 401

    await rt.dispatcher.services.audit.flush()
    assert (await rt.client.get("/api/audit/")).status_code == 401  # auth is on
    admin = await rt.client_as(roles=["admin"])
    entries = (await admin.get("/api/audit/", params={"action": "note.added"})).json()
    assert sorted(e["tenant"] for e in entries["entries"]) == ["acme", "globex"]


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_a_tenant_streams_only_its_own_events(courtyard_server, add_fixture_plugins):
    add_fixture_plugins("notes")
    server = courtyard_server(entry_points=False)
    acme = server.client_as(permissions=["notes:*"], tenant="acme")
    globex = server.client_as(permissions=["notes:*"], tenant="globex")
    with acme.stream("GET", "/notes/stream", timeout=10) as stream:
        assert stream.status_code == 200
        assert globex.post("/notes/", json={"text": "not for acme"}).status_code == 201
        assert acme.post("/notes/", json={"text": "hello"}).status_code == 201
        for line in stream.iter_lines():
            if line.startswith("data:"):
                assert json.loads(line.removeprefix("data:"))["text"] == "hello"
                break
