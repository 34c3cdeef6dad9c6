"""The service other plugins use: `ctx.get_plugin("vaults").values(names)`."""

from __future__ import annotations

import pytest
from courtyard.testing import write_plugin
from vaults_kit import fill, secret, service

# What the queues plugin does at worker registration, reduced to the call.
CONSUMER = """
from courtyard_sdk import Blueprint, hookimpl, request


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("consumer", __name__)

    @bp.post("/env")
    async def env():
        names = (await request.get_json())["vaults"]
        return {"vaults": await ctx.get_plugin("vaults").values(names)}

    return bp
"""


async def _consumer(start, plugin_dir, **settings):
    write_plugin(plugin_dir, "consumer", 'dependencies = ["vaults"]\n', code=CONSUMER)
    return await start("consumer", **settings)


async def _env(rt, *names):
    return await rt.client.post("/consumer/env", json={"vaults": list(names)})


async def test_values_merges_vaults_later_wins(start, plugin_dir, master_key, database_url):
    rt = await _consumer(start, plugin_dir, database_url=database_url)
    openai, hf, shared_a, shared_b = (secret(n) for n in ("openai", "hf", "a", "b"))
    await fill(rt.client, "api-keys", {"OPENAI_API_KEY": openai, "SHARED": shared_a})
    await fill(rt.client, "more", {"HF_TOKEN": hf, "SHARED": shared_b})
    await fill(rt.client, "empty", {})
    await rt.client.post(
        "/api/vaults/more/entries", json={"key": "REGION", "value": "eu", "is_secret": False}
    )

    answer = await _env(rt, "api-keys", "more", "empty")
    assert answer.status_code == 200
    assert answer.json() == {
        "vaults": {"OPENAI_API_KEY": openai, "SHARED": shared_b, "HF_TOKEN": hf, "REGION": "eu"}
    }
    # The other order: api-keys wins now. A name given twice counts once, at its first place.
    answer = await _env(rt, "more", "api-keys", "more")
    assert answer.json()["vaults"]["SHARED"] == shared_a
    assert (await _env(rt, "empty")).json() == {"vaults": {}}
    assert (await _env(rt)).json() == {"vaults": {}}


async def test_unknown_vaults_are_named(start, plugin_dir, master_key):
    rt = await _consumer(start, plugin_dir)
    await fill(rt.client, "known", {"A": "value-a"})
    answer = await _env(rt, "known", "nope", "gone")
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "code": "VAULT_NOT_FOUND",
        "message": "vaults 'nope', 'gone' not found",
    }
    answer = await _env(rt, "bad name")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_without_a_master_key(start, plugin_dir):
    rt = await _consumer(start, plugin_dir)
    answer = await _env(rt, "api-keys")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "VAULTS_DISABLED"
    assert "RUNQY_VAULT_MASTER_KEY" in answer.json()["error"]["message"]
    # A deployment that names no vault needs no key.
    assert (await _env(rt)).json() == {"vaults": {}}


async def test_values_wants_a_list_of_names(start, master_key):
    rt = await start()
    await fill(rt.client, "api-keys", {"A": "value-a"})
    with pytest.raises(TypeError, match="list of vault names"):
        await service(rt).values("api-keys")
    assert await service(rt).values(("api-keys",)) == {"A": "value-a"}
