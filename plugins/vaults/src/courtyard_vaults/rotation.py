"""Moving every sealed value to one master key, safely against interruption.

Each value records the id of the key that sealed it, so a rotation is a sweep over the
values not yet under the target key: read a batch, open each value with the key that
sealed it, seal it again under the target, and write the batch back in one transaction.
A row is only replaced if it still holds the nonce that was read, so a value a server
set meanwhile is never overwritten with an older one. Killed at any point, the database
holds each value either as it was or re-encrypted, both readable while both keys are
known; running the rotation again finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from courtyard_sdk.services import Database
from sqlalchemy import func, inspect, select, update

from .crypto import DecryptionError, Keyring, Sealed
from .models import ENTRIES, VAULTS


@dataclass
class RotationResult:
    """What a rotation did.

    :ivar rotated: values re-encrypted under the target key.
    :ivar unreadable: why each value that could not be opened was left as it is.
    :ivar remaining: values still not under the target key at the end (the unreadable
        ones, and any a server wrote meanwhile under another key).
    """

    rotated: int = 0
    unreadable: dict[int, str] = field(default_factory=dict)
    remaining: int = 0


async def has_tables(db: Database) -> bool:
    """Whether the vaults' tables exist (the plugin has run against this database)."""
    async with db.engine.connect() as conn:
        return bool(await conn.run_sync(lambda sync: inspect(sync).has_table(ENTRIES.name)))


async def key_usage(db: Database) -> dict[str, int]:
    """How many values each key id sealed."""
    query = select(ENTRIES.c.key_id, func.count()).group_by(ENTRIES.c.key_id)
    async with db.engine.connect() as conn:
        return {key_id: int(n) for key_id, n in (await conn.execute(query)).all()}


async def rotate(
    db: Database,
    keyring: Keyring,
    *,
    batch_size: int = 100,
    progress: Callable[[int], None] | None = None,
    max_passes: int = 5,
) -> RotationResult:
    """Re-encrypt every value not sealed by `keyring.current` under it.

    Values are opened with whichever key of `keyring` sealed them. Sweeps are repeated
    (up to `max_passes`) while values written meanwhile under another key turn up.

    :param progress: called after each committed batch with the number rotated so far.
    """
    result = RotationResult()
    for _ in range(max_passes):
        moved = await _sweep(db, keyring, batch_size, result, progress)
        result.rotated += moved
        result.remaining = await _count_not_under(db, keyring.current.id)
        if moved == 0 or result.remaining <= len(result.unreadable):
            break
    return result


async def _sweep(
    db: Database,
    keyring: Keyring,
    batch_size: int,
    result: RotationResult,
    progress: Callable[[int], None] | None,
) -> int:
    target = keyring.current
    moved, last_id = 0, 0
    query = (
        select(
            ENTRIES.c.id,
            ENTRIES.c.key,
            ENTRIES.c.is_secret,
            ENTRIES.c.key_id,
            ENTRIES.c.nonce,
            ENTRIES.c.ciphertext,
            VAULTS.c.name.label("vault"),
        )
        .join(VAULTS, VAULTS.c.id == ENTRIES.c.vault_id)
        .where(ENTRIES.c.key_id != target.id)
        .order_by(ENTRIES.c.id)
        .limit(batch_size)
    )
    while True:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query.where(ENTRIES.c.id > last_id))).all()
        if not rows:
            return moved
        last_id = rows[-1].id
        batch = []
        for row in rows:
            sealed = Sealed(row.key_id, bytes(row.nonce), bytes(row.ciphertext))
            try:
                plain = keyring.open(row.vault, row.key, row.is_secret, sealed)
            except DecryptionError as exc:
                result.unreadable[row.id] = str(exc)
                continue
            batch.append((row, target.seal(row.vault, row.key, row.is_secret, plain)))
        if not batch:
            continue
        async with db.engine.begin() as conn:
            for row, fresh in batch:
                written = await conn.execute(
                    update(ENTRIES)
                    .where(ENTRIES.c.id == row.id, ENTRIES.c.nonce == row.nonce)
                    .values(key_id=fresh.key_id, nonce=fresh.nonce, ciphertext=fresh.ciphertext)
                )
                moved += written.rowcount
        if progress is not None:
            progress(result.rotated + moved)


async def _count_not_under(db: Database, key_id: str) -> int:
    query = select(func.count()).select_from(ENTRIES).where(ENTRIES.c.key_id != key_id)
    async with db.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
