"""Key rotation: every value moves to the new key; an interruption loses nothing."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from courtyard.cli import main
from courtyard_vaults import Keyring, MasterKey, Vaults, generate_key
from courtyard_vaults.crypto import Sealed
from courtyard_vaults.models import ENTRIES, VAULTS, utcnow
from courtyard_vaults.rotation import key_usage, rotate
from sqlalchemy import insert, select
from vaults_kit import fill, secret, service


class Interrupted(Exception):
    pass


def _key(text: str) -> MasterKey:
    return MasterKey.parse(text, "test")


async def _seed(rt, vaults: int = 3, per_vault: int = 4) -> dict[str, dict[str, str]]:
    values = {}
    for v in range(vaults):
        entries = {f"KEY_{i}": secret(f"v{v}k{i}") for i in range(per_vault)}
        await fill(rt.client, f"vault-{v}", entries)
        values[f"vault-{v}"] = entries
    return values


async def _all_values(vaults: Vaults, names) -> dict[str, dict[str, str]]:
    return {name: await vaults.values([name]) for name in names}


async def test_an_interrupted_rotation_loses_nothing(start, monkeypatch, database_url):
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", old)
    first = await start(database_url=database_url)
    values = await _seed(first)
    db = service(first).db
    ring = Keyring.of(_key(new), [_key(old)])

    calls = []

    def interrupt(done: int) -> None:
        calls.append(done)
        raise Interrupted  # as a crash right after the first batch committed

    with pytest.raises(Interrupted):
        await rotate(db, ring, batch_size=5, progress=interrupt)
    assert calls == [5]
    assert await key_usage(db) == {_key(new).id: 5, _key(old).id: 7}

    # A server that only knows the old key cannot read the moved values, says why for
    # each, and serves the rest.
    answer = await first.client.get("/api/vaults/vault-0")
    assert answer.status_code == 200
    unread = [e for e in answer.json()["entries"] if e["value"] is None]
    assert unread and all("COURTYARD_VAULT_READ_KEYS" in e["error"] for e in unread)

    # The procedure: new master key, old one kept readable. Every value reads back.
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", new)
    monkeypatch.setenv("COURTYARD_VAULT_READ_KEYS", old)
    both = await start(database_url=database_url)
    assert await _all_values(service(both), values) == values
    # Writes during the rotation go under the new key.
    await both.client.post("/api/vaults/vault-2/entries", json={"key": "LATE", "value": "late!"})
    values["vault-2"]["LATE"] = "late!"

    result = await rotate(db, ring, batch_size=5)
    assert (result.rotated, result.remaining, result.unreadable) == (7, 0, {})
    assert await key_usage(db) == {_key(new).id: 13}
    result = await rotate(db, ring, batch_size=5)  # nothing left to do
    assert (result.rotated, result.remaining) == (0, 0)

    monkeypatch.delenv("COURTYARD_VAULT_READ_KEYS")
    only_new = await start(database_url=database_url)
    assert await _all_values(service(only_new), values) == values


async def test_a_value_written_during_a_batch_is_not_overwritten(start, monkeypatch, tmp_path):
    path = tmp_path / "race.db"
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", old)
    rt = await start(database_url=f"sqlite:///{path}")
    await fill(rt.client, "v", {"A": "a-before", "B": "b-before"})

    class Meddling(Keyring):
        """Opens values like a keyring, but a server writes B between the read of the
        batch and its write-back."""

        def open(self, vault, key, is_secret, sealed):
            if key == "B" and not written:
                fresh = _key(old).seal(vault, "B", True, "b-during")
                with sqlite3.connect(path) as conn:
                    conn.execute(
                        "UPDATE vaults_entry SET key_id = ?, nonce = ?, ciphertext = ? "
                        "WHERE key = 'B'",
                        (fresh.key_id, fresh.nonce, fresh.ciphertext),
                    )
                written.append(True)
            return super().open(vault, key, is_secret, sealed)

    written: list[bool] = []
    ring = Meddling.of(_key(new), [_key(old)])
    result = await rotate(service(rt).db, ring, batch_size=10)
    assert written
    # B's stale re-encryption was skipped; the next sweep moved the value written meanwhile.
    assert (result.rotated, result.remaining) == (2, 0)
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", new)
    after = await start(database_url=f"sqlite:///{path}")
    assert await service(after).values(["v"]) == {"A": "a-before", "B": "b-during"}


def _cli_env(tmp_path: Path, plugin_dir: Path, database_url: str, **keys: str) -> dict[str, str]:
    return {
        "COURTYARD_DATA_DIR": str(tmp_path / "data"),
        "COURTYARD_PLUGIN_DIRS": str(plugin_dir),
        "COURTYARD_DATABASE_URL": database_url,
        "COURTYARD_ONLY_PLUGINS": "vaults",
        "COURTYARD_CONFIG": "",
        "RUNQY_VAULT_MASTER_KEY": "",
        "COURTYARD_VAULT_MASTER_KEY": "",
        "COURTYARD_VAULT_READ_KEYS": "",
        **keys,
    }


async def _cli(env: dict[str, str], *args: str):
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)
    return result


async def test_the_rotate_key_command(start, monkeypatch, tmp_path, plugin_dir, database_url):
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", old)
    rt = await start(database_url=database_url)
    values = await _seed(rt, vaults=2, per_vault=3)
    old_id, new_id = _key(old).id, _key(new).id

    env = _cli_env(tmp_path, plugin_dir, database_url, RUNQY_VAULT_MASTER_KEY=old)
    status = await _cli(env, "vaults", "status")
    assert status.exit_code == 0, status.output
    assert f"values under {old_id}: 6 (master key)" in status.output

    # No key named anywhere: refused, and nothing changes.
    refused = await _cli({**env, "RUNQY_VAULT_MASTER_KEY": ""}, "vaults", "rotate-key")
    assert refused.exit_code == 1
    assert "RUNQY_VAULT_MASTER_KEY" in refused.output
    refused = await _cli(env, "vaults", "rotate-key", "--new-key-env", "NEW_VAULT_KEY")
    assert refused.exit_code == 1 and "NEW_VAULT_KEY is not set" in refused.output
    bad = base64.b64encode(b"short").decode()
    refused = await _cli(
        {**env, "NEW_VAULT_KEY": bad}, "vaults", "rotate-key", "--new-key-env", "NEW_VAULT_KEY"
    )
    assert refused.exit_code == 1 and "NEW_VAULT_KEY is not a valid key" in refused.output
    assert bad not in refused.output

    done = await _cli(
        {**env, "NEW_VAULT_KEY": new},
        "vaults",
        "rotate-key",
        "--new-key-env",
        "NEW_VAULT_KEY",
        "--batch-size",
        "4",
    )
    assert done.exit_code == 0, done.output
    assert f"done: 6 value(s) re-encrypted under key {new_id}" in done.output
    assert "re-encrypted 4 value(s)" in done.output
    for text in (old, new, *(v for vault in values.values() for v in vault.values())):
        assert text not in done.output

    env = _cli_env(tmp_path, plugin_dir, database_url, RUNQY_VAULT_MASTER_KEY=new)
    status = await _cli(env, "vaults", "status")
    assert f"values under {new_id}: 6 (master key)" in status.output
    assert old_id not in status.output

    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", new)
    after = await start(database_url=database_url)
    assert await _all_values(service(after), values) == values


async def test_values_under_an_unknown_key_are_left_alone(start, monkeypatch, tmp_path, plugin_dir):
    lost, current = generate_key(), generate_key()
    database_url = f"sqlite:///{tmp_path / 'data' / 'courtyard.db'}"
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", lost)
    rt = await start()
    await fill(rt.client, "v", {"UNDER_LOST": "value-under-lost"})

    env = _cli_env(tmp_path, plugin_dir, database_url, RUNQY_VAULT_MASTER_KEY=current)
    result = await _cli(env, "vaults", "rotate-key")
    assert result.exit_code == 1
    assert "left as it is: entry UNDER_LOST of vault 'v'" in result.output
    assert "1 value(s) are not under key" in result.output
    status = await _cli(env, "vaults", "status")
    assert "UNKNOWN key" in status.output

    # Once the lost key is found, it joins as a read key and the rotation completes.
    result = await _cli({**env, "COURTYARD_VAULT_READ_KEYS": lost}, "vaults", "rotate-key")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", current)
    after = await start()
    assert await service(after).values(["v"]) == {"UNDER_LOST": "value-under-lost"}


def test_generate_key():
    result = CliRunner().invoke(main, ["vaults", "generate-key"], env={"COURTYARD_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert len(base64.b64decode(result.output.strip(), validate=True)) == 32


async def _bulk(vaults: Vaults, vault: str, count: int) -> dict[str, str]:
    """`count` entries in one statement (the API would take a request for each)."""
    await vaults.create_vault(vault)
    ring = vaults.ensure_enabled()
    values = {f"KEY_{i}": f"value-{i}-{os.urandom(4).hex()}" for i in range(count)}
    now = utcnow()
    async with vaults.db.engine.begin() as conn:
        query = select(VAULTS.c.id).where(VAULTS.c.name == vault)
        vault_id = (await conn.execute(query)).scalar_one()
        rows = []
        for key, value in values.items():
            sealed: Sealed = ring.seal(vault, key, True, value)
            rows.append(
                {
                    "vault_id": vault_id,
                    "key": key,
                    "is_secret": True,
                    "key_id": sealed.key_id,
                    "nonce": sealed.nonce,
                    "ciphertext": sealed.ciphertext,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        await conn.execute(insert(ENTRIES), rows)
    return values


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_killing_the_rotate_command_loses_nothing(start, monkeypatch, tmp_path, plugin_dir):
    # SIGKILL mid-way (the interrupted rotation above runs on PostgreSQL as well).
    database_url = f"sqlite:///{tmp_path / 'killed.db'}"
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", old)
    rt = await start(database_url=database_url)
    values = await _bulk(service(rt), "bulk", 3000)
    env = {
        **os.environ,
        **_cli_env(tmp_path, plugin_dir, database_url, RUNQY_VAULT_MASTER_KEY=old),
        "NEW_VAULT_KEY": new,
    }
    command = [sys.executable, "-m", "courtyard", "vaults", "rotate-key"]
    command += ["--new-key-env", "NEW_VAULT_KEY", "--batch-size", "1"]
    # Asyncio's subprocesses: a blocking read would freeze this loop while one of the
    # runtime's writes holds SQLite's lock, and the command would wait for it in vain.
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    seen = []
    try:
        assert process.stdout is not None
        async for line in process.stdout:
            seen.append(line.decode())
            if line.startswith(b"re-encrypted 20 value(s)"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        await asyncio.wait_for(process.wait(), 60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)

    usage = await key_usage(service(rt).db)
    assert sum(usage.values()) == 3000
    assert usage[_key(new).id] >= 20 and usage[_key(old).id] > 0

    # Mid-rotation, a server knowing both keys reads every value.
    monkeypatch.setenv("RUNQY_VAULT_MASTER_KEY", new)
    monkeypatch.setenv("COURTYARD_VAULT_READ_KEYS", old)
    both = await start(database_url=database_url)
    assert await service(both).values(["bulk"]) == values

    finish = [*command[:-1], "500"]  # the same command, in bigger batches
    again = await asyncio.create_subprocess_exec(
        *finish, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(again.communicate(), 300)
    assert again.returncode == 0, output.decode()
    assert await key_usage(service(rt).db) == {_key(new).id: 3000}
    monkeypatch.delenv("COURTYARD_VAULT_READ_KEYS")
    after = await start(database_url=database_url)
    assert await service(after).values(["bulk"]) == values
