"""Encryption at rest: no plaintext in the database's files, tampering detected."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from courtyard_vaults import DecryptionFailed
from courtyard_vaults.models import ENTRIES, VAULTS
from sqlalchemy import select, text, update
from vaults_kit import engine, fill, secret, service


async def test_the_sqlite_files_hold_no_plaintext(start, master_key, tmp_path):
    path = tmp_path / "vaults.db"
    rt = await start(database_url=f"sqlite:///{path}")
    value, plain_too = secret("sk"), secret("plain")
    await fill(rt.client, "api-keys", {"OPENAI_API_KEY": value})
    answer = await rt.client.post(
        "/api/vaults/api-keys/entries",
        json={"key": "PLAIN_TOO", "value": plain_too, "is_secret": False},
    )
    assert answer.status_code == 200
    assert await service(rt).values(["api-keys"]) == {
        "OPENAI_API_KEY": value,
        "PLAIN_TOO": plain_too,
    }

    def raw() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("vaults.db*")))

    # While serving (the rows are in the WAL) and once the WAL is checkpointed away.
    for stage in ("serving", "closed"):
        if stage == "closed":
            await rt.dispatcher.services.database.close()
        data = raw()
        assert b"OPENAI_API_KEY" in data, f"{stage}: the test does not read the right files"
        for plaintext in (value, plain_too):
            assert plaintext.encode() not in data, stage
            assert plaintext[2:-2].encode() not in data, stage


async def test_postgresql_holds_no_plaintext(start, master_key, postgres, postgres_url):
    rt = await start(database_url=postgres_url)
    value = secret("sk")
    await fill(rt.client, "api-keys", {"OPENAI_API_KEY": value})
    assert (await service(rt).values(["api-keys"]))["OPENAI_API_KEY"] == value

    outside = engine(rt).execution_options(isolation_level="AUTOCOMMIT")
    async with outside.connect() as conn:
        rows = (await conn.execute(text("SELECT t::text FROM vaults_entry t"))).scalars().all()
        await conn.execute(text("CHECKPOINT"))  # the table's pages reach their files
        oid = (
            await conn.execute(
                text("SELECT oid FROM pg_database WHERE datname = current_database()")
            )
        ).scalar_one()
    await outside.dispose()
    assert "OPENAI_API_KEY" in rows[0]
    assert value not in "".join(rows)

    data_dir = postgres.folder / "data"
    files = [*(data_dir / "base" / str(oid)).rglob("*"), *(data_dir / "pg_wal").rglob("*")]
    raw = b"".join(p.read_bytes() for p in files if Path(p).is_file())
    assert b"OPENAI_API_KEY" in raw, "the test does not read the right files"
    assert value.encode() not in raw


async def test_values_stay_out_of_the_logs(start, master_key, caplog):
    caplog.set_level(logging.DEBUG)
    rt = await start()
    value = secret("sk")
    await fill(rt.client, "v", {"TOKEN": value})
    await rt.client.post("/api/vaults/v/entries", json={"key": "TOKEN", "value": value + "2"})
    await rt.client.get("/api/vaults/v")
    await rt.client.get("/vaults/")
    await service(rt).values(["v"])
    await rt.client.post("/api/vaults/v/entries", json={"key": "BAD-KEY", "value": value})
    assert caplog.records, "nothing was logged at all"
    assert value not in caplog.text
    assert master_key not in caplog.text


async def _alter(rt, statement) -> None:
    outside = engine(rt)
    async with outside.begin() as conn:
        await conn.execute(statement)
    await outside.dispose()


async def _row(rt, vault: str, key: str):
    outside = engine(rt)
    async with outside.connect() as conn:
        row = (
            await conn.execute(
                select(ENTRIES)
                .join(VAULTS, VAULTS.c.id == ENTRIES.c.vault_id)
                .where(VAULTS.c.name == vault, ENTRIES.c.key == key)
            )
        ).one()
    await outside.dispose()
    return row


def _where(row):
    return ENTRIES.c.id == row.id


@pytest.mark.parametrize("change", ["flip a bit", "copy from another vault", "swap", "flag"])
async def test_tampering_is_detected(start, master_key, database_url, change):
    rt = await start(database_url=database_url)
    one, two, other = secret("one"), secret("two"), secret("other")
    await fill(rt.client, "a", {"ONE": one, "TWO": two})
    await fill(rt.client, "b", {"ONE": other})
    a_one, a_two, b_one = (
        await _row(rt, "a", "ONE"),
        await _row(rt, "a", "TWO"),
        await _row(rt, "b", "ONE"),
    )
    if change == "flip a bit":
        broken = bytes([a_one.ciphertext[0] ^ 0x01]) + bytes(a_one.ciphertext[1:])
        await _alter(rt, update(ENTRIES).where(_where(a_one)).values(ciphertext=broken))
    elif change == "copy from another vault":
        await _alter(
            rt,
            update(ENTRIES)
            .where(_where(a_one))
            .values(nonce=b_one.nonce, ciphertext=b_one.ciphertext),
        )
    elif change == "swap":
        await _alter(
            rt,
            update(ENTRIES)
            .where(_where(a_one))
            .values(nonce=a_two.nonce, ciphertext=a_two.ciphertext),
        )
    else:  # an attacker marks a secret as not secret, hoping to see it in the clear
        await _alter(rt, update(ENTRIES).where(_where(a_one)).values(is_secret=False))

    # The vault is still shown: the broken entry by name, with why, and the rest.
    for path in ("/api/vaults/a", "/api/vaults/a/entries"):
        answer = await rt.client.get(path)
        assert answer.status_code == 200
        entries = {e["key"]: e for e in answer.json()["entries"]}
        assert entries["ONE"]["value"] is None
        assert "'a'" in entries["ONE"]["error"] and "ONE" in entries["ONE"]["error"]
        assert "error" not in entries["TWO"] and entries["TWO"]["value"]
        for value in (one, two, other):
            assert value not in answer.text
    # A worker gets all of its secrets or none, with the vault and key named.
    with pytest.raises(DecryptionFailed) as refused:
        await service(rt).values(["a", "b"])
    assert "'a'" in refused.value.message and "ONE" in refused.value.message
    assert "TWO" not in refused.value.message
    # The other vault is untouched, and the broken entry can be replaced.
    assert await service(rt).values(["b"]) == {"ONE": other}
    answer = await rt.client.post("/api/vaults/a/entries", json={"key": "ONE", "value": "fresh"})
    assert answer.status_code == 200
    assert await service(rt).values(["a"]) == {"ONE": "fresh", "TWO": two}


async def test_the_migrations_create_what_the_models_describe(start, master_key, database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from courtyard_vaults.models import Model

    rt = await start(database_url=database_url)
    outside = engine(rt)

    def differences(sync):
        def ours(name, kind, _parent):  # the runtime's own tables are not the plugin's
            return kind != "table" or name.startswith("vaults_")

        opts = {"compare_type": True, "include_name": ours}
        return compare_metadata(MigrationContext.configure(sync, opts=opts), Model.metadata)

    async with outside.connect() as conn:
        assert await conn.run_sync(differences) == []
    await outside.dispose()
