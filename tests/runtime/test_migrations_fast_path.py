"""An upgrade with nothing to apply is told without Alembic (services/revisions.py,
`_up_to_date`), so a restart on a current database never loads it (docs/performance.md,
memory); in any doubt Alembic decides, as before. Tests that take `database_url` run on
SQLite and on a real PostgreSQL."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from courtyard.services.database import Database, MigrationError
from courtyard.services.revisions import _literal_head

UPGRADE = """
import asyncio, json, sys
from pathlib import Path
from courtyard.services.database import Database

async def main(url, owner, folder):
    db = Database(url)
    await db.start()
    try:
        applied = await db.upgrade(owner, Path(folder))
    finally:
        await db.close()
    print(json.dumps([applied, "alembic" in sys.modules]))

asyncio.run(main(*sys.argv[1:]))
"""


def revision(folder: Path, name: str, down: object, body: str = "pass", extra: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        f'"""{name}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f"revision = {name!r}\ndown_revision = {down!r}\n{extra}\n\n"
        f"def upgrade():\n{textwrap.indent(textwrap.dedent(body).strip(), '    ')}\n"
    )
    (folder / f"{name}.py").write_text(text, encoding="utf-8")


def upgrade_in_new_process(url: str, owner: str, folder: Path) -> tuple[list[str], bool]:
    """Upgrade in a fresh interpreter: the revisions applied, and whether Alembic was
    imported."""
    done = subprocess.run(
        [sys.executable, "-c", UPGRADE, url, owner, str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    applied, loaded = json.loads(done.stdout)
    return applied, loaded


def test_a_current_database_is_upgraded_without_alembic(database_url, tmp_path):
    folder = tmp_path / "migrations"
    revision(folder, "f1", None, 'op.create_table("fast_one", sa.Column("id", sa.Integer))')
    assert upgrade_in_new_process(database_url, "fast", folder) == (["f1"], True)
    assert upgrade_in_new_process(database_url, "fast", folder) == ([], False)
    # A new revision: Alembic applies it, as before.
    revision(folder, "f2", "f1", 'op.create_table("fast_two", sa.Column("id", sa.Integer))')
    assert upgrade_in_new_process(database_url, "fast", folder) == (["f2"], True)
    assert upgrade_in_new_process(database_url, "fast", folder) == ([], False)


async def test_broken_foreign_keys_still_refuse_a_current_sqlite_database(tmp_path):
    folder = tmp_path / "migrations"
    revision(
        folder,
        "k1",
        None,
        """
        op.create_table("parents", sa.Column("id", sa.Integer, primary_key=True))
        op.create_table(
            "children",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("parent_id", sa.Integer, sa.ForeignKey("parents.id")),
        )
        """,
    )
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    db = Database(url)
    await db.start()
    try:
        assert await db.upgrade("keys", folder) == ["k1"]
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.exec_driver_sql("INSERT INTO children (id, parent_id) VALUES (1, 42)")
        engine.dispose()
        with pytest.raises(MigrationError, match="foreign keys that point nowhere"):
            await db.upgrade("keys", folder)
    finally:
        await db.close()


def test_the_head_is_read_from_literal_revisions(tmp_path):
    chain = tmp_path / "chain"
    revision(chain, "a", None)
    revision(chain, "b", "a")
    revision(chain, "c", ("b",))
    (chain / "__init__.py").write_text("")
    (chain / "notes.txt").write_text("not a revision")
    assert _literal_head(chain) == "c"
    assert _literal_head(tmp_path / "missing") is None
    assert _literal_head(tmp_path) is None  # no revision at all


@pytest.mark.parametrize(
    "make",
    [
        lambda f: revision(f, "b2", "a"),  # two heads
        lambda f: revision(f, "b2", "nowhere"),  # points at a revision that is not there
        lambda f: revision(f, "b2", "b", extra="branch_labels = ('x',)"),
        lambda f: revision(f, "b2", "b", extra="depends_on = 'a'"),
        lambda f: (f / "b_again.py").write_text("revision = 'b'\ndown_revision = 'a'\n"),
        lambda f: (f / "b2.py").write_text("revision = 'b2'\n"),  # no down_revision
        lambda f: (f / "b2.py").write_text("revision = 'b2'\ndown_revision = str('b')\n"),
        lambda f: (f / "b2.py").write_text("revision = 'b2'\ndown_revision = 'b'\nif\n"),
        lambda f: (f / "b2.py").write_text("down_revision = 'b'\n"),  # no revision
    ],
)
def test_alembic_decides_in_any_doubt(tmp_path, make):
    folder = tmp_path / "doubt"
    revision(folder, "a", None)
    (folder / "b.py").write_text("revision: str = 'b'\ndown_revision: str | None = 'a'\n")
    assert _literal_head(folder) == "b"
    make(folder)
    assert _literal_head(folder) is None
