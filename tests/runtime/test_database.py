"""The database service: URLs, SQLite defaults, tenant scoping, plugin migrations (at
start, on reload, failing, concurrent) and `courtyard db`. Tests that take `database_url`
run on SQLite and on a real PostgreSQL."""

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from courtyard.cli import main
from courtyard.services.database import (
    Database,
    MigrationError,
    TenantViolation,
    async_url,
    version_table,
)
from courtyard.settings import load_settings
from courtyard.testing import free_port, write_plugin
from courtyard_sdk import SettingsError, StartupError
from courtyard_sdk.db import TenantScoped, model_base
from sqlalchemy.orm import selectinload
from sqlmodel import Field, Relationship, SQLModel, select

Model = model_base()


class Folder(TenantScoped, Model, table=True):
    __tablename__ = "t_folders"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    notes: list["Note"] = Relationship(back_populates="folder")


class Note(TenantScoped, Model, table=True):
    __tablename__ = "t_notes"
    id: int | None = Field(default=None, primary_key=True)
    text: str
    folder_id: int | None = Field(default=None, foreign_key="t_folders.id")
    folder: Optional[Folder] = Relationship(back_populates="notes")  # noqa: UP045 (SQLModel)


class Setting(Model, table=True):
    """Not tenant-scoped: every session sees every row."""

    __tablename__ = "t_settings"
    key: str = Field(primary_key=True)
    value: str


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env={"COURTYARD_ENTRY_POINTS": "0", **(env or {})})


async def tables(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        return set(await connection.run_sync(lambda c: sa.inspect(c).get_table_names()))


# URLs ----------------------------------------------------------------------------------


def test_urls_get_the_async_driver_and_an_absolute_sqlite_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert async_url("sqlite:///data/x.db") == f"sqlite+aiosqlite:///{tmp_path}/data/x.db"
    assert async_url(f"sqlite+aiosqlite:///{tmp_path}/y.db") == (
        f"sqlite+aiosqlite:///{tmp_path}/y.db"
    )
    assert async_url("postgres://u:pw@db.internal:5433/app") == (
        "postgresql+asyncpg://u:pw@db.internal:5433/app"
    )
    assert async_url("postgresql://u@h/app?sslmode=require") == (
        "postgresql+asyncpg://u@h/app?ssl=require"
    )
    assert async_url("postgresql+asyncpg://u@h/app") == "postgresql+asyncpg://u@h/app"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u:secret@h/db", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://u:secret@h/db", "driver 'postgresql+psycopg2' is not supported"),
        ("sqlite+pysqlite:///x.db", "write sqlite://"),
        ("sqlite://", "in-memory SQLite database"),
        ("sqlite:///:memory:", "in-memory SQLite database"),
    ],
)
def test_bad_urls_are_settings_errors_that_hide_the_password(url, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        async_url(url)
    assert "secret" not in str(caught.value)
    with pytest.raises(SettingsError, match=re.escape(message)):  # when settings are read
        load_settings({"database_url": url}, environ={})


def test_a_bad_url_is_a_clean_cli_error(tmp_path):
    result = run_cli(
        "plugins", "list", "--data-dir", str(tmp_path), env={"COURTYARD_DATABASE_URL": "x"}
    )
    assert result.exit_code == 1
    assert "database_url 'x' is not a database URL" in result.output
    assert "Traceback" not in result.output


async def test_an_unreachable_database_refuses_the_start(courtyard):
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StartupError, match="cannot connect to the database") as caught:
        await courtyard(database_url=url, entry_points=False)
    assert "ConnectionRefusedError" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_long_owner_names_keep_distinct_version_tables():
    assert version_table("@acme/notes-db") == "alembic_version_acme__notes_db"
    long_a, long_b = "x" * 60 + "-a", "x" * 60 + "-b"
    assert len(version_table(long_a)) == 63
    assert version_table(long_a) != version_table(long_b)


# SQLite defaults ---------------------------------------------------------------------


async def test_the_default_sqlite_database_has_wal_and_foreign_keys(courtyard, tmp_path):
    rt = await courtyard(entry_points=False)
    database = rt.dispatcher.services.database
    assert database.dialect == "sqlite"
    assert (tmp_path / "data" / "courtyard.db").is_file()
    async with database.engine.connect() as connection:
        assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 30000


# Tenant scoping ----------------------------------------------------------------------


@pytest.fixture
async def database(database_url):
    db = Database(database_url)
    await db.start()
    async with db.engine.begin() as connection:
        await connection.run_sync(Model.metadata.create_all)
    yield db
    await db.close()


@pytest.fixture
async def rows(database):
    """Tenant a and b each have a folder and a note; a's folder also holds a note of b's
    (a foreign key does not know about tenants), and one setting is shared."""
    async with database.session() as session:
        fa, fb = Folder(name="fa", tenant_id="a"), Folder(name="fb", tenant_id="b")
        session.add_all([fa, fb])
        await session.flush()
        session.add_all(
            [
                Note(text="a note", tenant_id="a", folder_id=fa.id),
                Note(text="b note", tenant_id="b", folder_id=fb.id),
                Note(text="b note in a's folder", tenant_id="b", folder_id=fa.id),
                Setting(key="theme", value="dark"),
            ]
        )
        await session.commit()
        notes = (await session.exec(select(Note).order_by(Note.id))).all()
    return {note.text: note for note in notes} | {"fa": fa, "fb": fb}


async def test_a_tenant_session_reads_only_its_rows(database, rows):
    async with database.session(tenant="a") as session:
        notes = (await session.exec(select(Note))).all()
        assert [n.text for n in notes] == ["a note"]
        assert await session.get(Note, rows["b note"].id) is None
        assert (await session.get(Note, rows["a note"].id)).text == "a note"
        count = (await session.exec(select(sa.func.count()).select_from(Note))).one()
        assert count == 1
        # Joined: a's folder has a note of b's, which a join must not find.
        joined = select(Folder).join(Folder.notes).where(Note.text == "b note in a's folder")
        assert (await session.exec(joined)).all() == []
        # Through a relationship: a's folder shows only a's notes.
        load = select(Folder).options(selectinload(Folder.notes))
        (folder,) = (await session.exec(load)).all()
        assert folder.name == "fa" and [n.text for n in folder.notes] == ["a note"]
        # Models that are not tenant-scoped are not filtered.
        assert (await session.exec(select(Setting))).one().value == "dark"
    async with database.session(tenant="b") as session:  # the criteria are per session
        notes = (await session.exec(select(Note).order_by(Note.id))).all()
        assert [n.text for n in notes] == ["b note", "b note in a's folder"]


async def test_a_tenant_session_updates_and_deletes_only_its_rows(database, rows):
    async with database.session(tenant="a") as session:
        changed = await session.exec(sa.update(Note).values(text="changed"))
        assert changed.rowcount == 1
        await session.commit()
    async with database.session() as session:
        texts = sorted(n.text for n in (await session.exec(select(Note))).all())
        assert texts == ["b note", "b note in a's folder", "changed"]
    async with database.session(tenant="a") as session:
        gone = await session.exec(sa.delete(Note).where(Note.text.like("b%")))
        assert gone.rowcount == 0
        gone = await session.exec(sa.delete(Note))
        assert gone.rowcount == 1
        await session.commit()
    async with database.session() as session:
        texts = sorted(n.text for n in (await session.exec(select(Note))).all())
        assert texts == ["b note", "b note in a's folder"]


async def test_new_rows_get_the_tenant_and_other_tenants_rows_cannot_be_written(database, rows):
    async with database.session(tenant="a") as session:
        note = Note(text="new")
        session.add(note)
        await session.commit()
        assert note.tenant_id == "a"
        await session.exec(sa.insert(Note), params=[{"text": "bulk"}])
        await session.exec(sa.insert(Note).values(text="inline"))
        await session.commit()
    async with database.session() as session:
        stamped = (await session.exec(select(Note).where(Note.text.in_(["bulk", "inline"])))).all()
        assert sorted((n.text, n.tenant_id) for n in stamped) == [("bulk", "a"), ("inline", "a")]

    b_id = rows["b note"].id

    async def b_note(expired: bool) -> Note:
        """b's note, loaded by an unscoped session and detached (maybe expired)."""
        async with database.session() as session:
            note = await session.get(Note, b_id)
            if expired:
                session.expire(note)
            return note

    attempts = [
        lambda s, note: s.add(Note(text="x", tenant_id="b")),
        lambda s, note: s.add(note),  # with its text changed below
        lambda s, note: s.delete(note),
    ]
    for attempt in attempts:
        for expired in (False, True):
            note = await b_note(expired)
            async with database.session(tenant="a") as session:
                result = attempt(session, note)
                if asyncio.iscoroutine(result):
                    await result
                note.text = "stolen"
                with pytest.raises(TenantViolation, match="tenant 'a' cannot write a row"):
                    await session.commit()

    async with database.session(tenant="a") as session:
        (mine,) = (await session.exec(select(Note).where(Note.text == "a note"))).all()
        mine.tenant_id = "b"  # giving a row away is writing b's rows too
        with pytest.raises(TenantViolation):
            await session.commit()
    statements = [
        (sa.insert(Note), [{"text": "x", "tenant_id": "b"}]),
        (sa.insert(Note).values(text="x", tenant_id="b"), None),
        (sa.update(Note).values(tenant_id="b"), None),
        (sa.update(Note), [{"id": b_id, "text": "stolen"}]),  # by primary key
        (sa.insert(Note).values([{"text": "x"}, {"text": "y"}]), None),  # not checkable
        (
            sa.insert(Note).from_select(
                ["text", "tenant_id"], sa.select(Note.text, sa.literal("b"))
            ),
            None,
        ),
    ]
    for statement, params in statements:
        async with database.session(tenant="a") as session:
            with pytest.raises(TenantViolation):
                await session.exec(statement, params=params)

    async with database.session() as session:  # unscoped: sees everyone's, all intact
        texts = sorted(n.text for n in (await session.exec(select(Note))).all())
        assert texts == ["a note", "b note", "b note in a's folder", "bulk", "inline", "new"]


async def test_foreign_keys_are_enforced(database):
    async with database.session() as session:
        session.add(Note(text="orphan", tenant_id="a", folder_id=12345))
        with pytest.raises(sa.exc.IntegrityError):
            await session.commit()


# Plugins and their migrations --------------------------------------------------------

NOTES_CODE = """
from courtyard_sdk import Blueprint, hookimpl, request
from courtyard_sdk.db import model_base
from sqlmodel import Field, select

Model = model_base()


class Note(Model, table=True):
    __tablename__ = "notes_note"
    id: int | None = Field(default=None, primary_key=True)
    text: str
{extra_fields}

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.post("/")
    async def add():
        async with ctx.db.session() as session:
            note = Note(**(await request.get_json()))
            session.add(note)
            await session.commit()
            return note.model_dump()

    @bp.get("/")
    async def index():
        async with ctx.db.session() as session:
            notes = (await session.exec(select(Note).order_by(Note.id))).all()
            return {{"notes": [note.model_dump() for note in notes]}}

    return bp
"""

CREATE_NOTES = """
def upgrade():
    op.create_table(
        "notes_note",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String, nullable=False),
    )
"""

ADD_PRIORITY = """
def upgrade():
    op.add_column(
        "notes_note",
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    )
"""


def write_revision(folder: Path, revision: str, down: str | None, body: str, doc: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = f'"""{doc or revision}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
    head += f"revision = {revision!r}\ndown_revision = {down!r}\n"
    (folder / f"{revision}.py").write_text(head + textwrap.dedent(body), encoding="utf-8")


def write_notes(plugin_dir: Path, name: str = "notes", extra_fields: str = "") -> Path:
    manifest = 'migrations = "migrations"\nbase = "/notes"\n'
    root = write_plugin(plugin_dir, name, manifest, NOTES_CODE.format(extra_fields=extra_fields))
    write_revision(root / "migrations", "n1", None, CREATE_NOTES, "create notes")
    return root


async def test_a_plugin_migrates_at_start_and_uses_its_tables(courtyard, plugin_dir, database_url):
    write_notes(plugin_dir, "@acme/notes")
    rt = await courtyard(database_url=database_url, entry_points=False, strict=True)
    database = rt.dispatcher.services.database
    assert {"notes_note", "alembic_version_acme__notes"} <= await tables(database)
    assert await database.current("@acme/notes", plugin_dir / "@acme/notes/migrations") == (
        "n1",
        "n1",
    )

    answer = await rt.client.post("/notes/", json={"text": "hello"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": 1, "text": "hello"}
    answer = await rt.client.get("/notes/")
    assert answer.json() == {"notes": [{"id": 1, "text": "hello"}]}


async def test_installed_on_an_existing_database_then_upgraded_by_a_reload(
    courtyard, plugin_dir, database_url
):
    # Another owner's tables and rows are there first.
    other = write_plugin(plugin_dir, "other", 'migrations = "migrations"\n')
    write_revision(
        other / "migrations",
        "o1",
        None,
        """
        def upgrade():
            items = op.create_table("other_item", sa.Column("id", sa.Integer, primary_key=True))
            op.bulk_insert(items, [{"id": 1}, {"id": 2}])
        """,
    )
    rt = await courtyard(database_url=database_url, entry_points=False, strict=True)
    database = rt.dispatcher.services.database
    assert "notes_note" not in await tables(database)

    write_notes(plugin_dir)  # installed later, on the same database
    assert (await rt.reload()).json()["ok"] is True
    for text in ("one", "two"):
        assert (await rt.client.post("/notes/", json={"text": text})).status_code == 200

    # A new version: a second revision adds a column with a default, the code uses it.
    write_notes(plugin_dir, extra_fields="    priority: int = 0\n")
    write_revision(plugin_dir / "notes/migrations", "n2", "n1", ADD_PRIORITY, "add priority")
    answer = await rt.reload()  # the module is imported again: its tables are redefined
    assert answer.json()["ok"] is True, answer.json()
    assert answer.json()["failed"] == []
    answer = await rt.client.post("/notes/", json={"text": "three", "priority": 5})
    assert answer.json() == {"id": 3, "text": "three", "priority": 5}
    assert (await rt.client.get("/notes/")).json()["notes"] == [
        {"id": 1, "text": "one", "priority": 0},
        {"id": 2, "text": "two", "priority": 0},
        {"id": 3, "text": "three", "priority": 5},
    ]
    async with database.engine.connect() as connection:
        items = (await connection.exec_driver_sql("SELECT id FROM other_item ORDER BY id")).all()
        versions = {
            owner: (await connection.exec_driver_sql(f"SELECT * FROM {version_table(owner)}"))
            .scalars()
            .all()
            for owner in ("other", "notes")
        }
    assert [row[0] for row in items] == [1, 2]
    assert versions == {"other": ["o1"], "notes": ["n2"]}

    assert (await rt.reload()).json()["failed"] == []  # again: nothing to apply, no clash


async def test_without_model_base_a_reload_clashes(courtyard, plugin_dir, database_url):
    """Why model_base() exists: plain SQLModel tables share one MetaData for the process,
    and the second import of the same model is refused."""
    code = NOTES_CODE.replace("Model = model_base()", "Model = SQLModel").replace(
        "from courtyard_sdk.db import model_base", "from sqlmodel import SQLModel"
    )
    code = code.replace('"notes_note"', '"plain_note"')
    write_plugin(plugin_dir, "plain", "", code.format(extra_fields=""))
    rt = await courtyard(database_url=database_url, entry_points=False)
    try:
        assert (await rt.client.get("/api/plugins/")).json()[0]["status"] == "loaded"
        failed = (await rt.reload()).json()["failed"]
        assert len(failed) == 1 and "plain_note" in failed[0]["error"]
        assert "already defined for this MetaData" in failed[0]["error"]
    finally:
        SQLModel.metadata.remove(SQLModel.metadata.tables["plain_note"])


FAILING = """
def upgrade():
    op.create_table("bad_two", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO no_such_table VALUES (1)")
"""


async def test_a_failing_migration_excludes_the_plugin_and_leaves_nothing_behind(
    courtyard, plugin_dir, database_url
):
    bad = write_plugin(plugin_dir, "bad", 'migrations = "migrations"\n')
    create_one = 'def upgrade():\n    op.create_table("bad_one", sa.Column("id", sa.Integer))\n'
    write_revision(bad / "migrations", "b1", None, create_one)
    write_revision(bad / "migrations", "b2", "b1", FAILING, "fill bad_two")
    needs = write_plugin(plugin_dir, "needs-bad", 'dependencies = ["bad"]\nmigrations = "m"\n')
    write_revision(
        needs / "m",
        "x1",
        None,
        'def upgrade():\n    op.create_table("nb", sa.Column("id", sa.Integer))\n',
    )
    write_notes(plugin_dir)

    rt = await courtyard(database_url=database_url, entry_points=False)
    rows = {row["name"]: row for row in (await rt.client.get("/api/plugins/")).json()}
    assert rows["notes"]["status"] == "loaded"
    assert rows["bad"]["status"] == "failed"
    error = rows["bad"]["error"]
    assert error.startswith("migrations failed: bad: revision b2 (fill bad_two) failed: ")
    assert "no_such_table" in error
    assert rows["needs-bad"] == rows["needs-bad"] | {
        "status": "failed",
        "error": "dependency bad failed",
    }
    assert (await rt.client.post("/notes/", json={"text": "still here"})).status_code == 200

    # All of bad's revisions went back, the one that worked too; its dependent ran none.
    found = await tables(rt.dispatcher.services.database)
    assert found.isdisjoint({"bad_one", "bad_two", "alembic_version_bad", "nb"})
    assert {"notes_note", "alembic_version_notes"} <= found

    # Fixed: the next reload applies both revisions and brings the dependent back.
    write_revision(bad / "migrations", "b2", "b1", create_one.replace("bad_one", "bad_two"))
    answer = (await rt.reload()).json()
    assert answer["failed"] == []
    assert {"bad_one", "bad_two", "nb"} <= await tables(rt.dispatcher.services.database)


async def test_a_failing_migration_fails_a_strict_start(courtyard, plugin_dir, database_url):
    bad = write_plugin(plugin_dir, "bad", 'migrations = "migrations"\n')
    write_revision(bad / "migrations", "b1", None, FAILING)
    with pytest.raises(StartupError, match="strict mode: bad: migrations failed: bad: revision b1"):
        await courtyard(database_url=database_url, entry_points=False, strict=True)


SLOW = """
import time

def upgrade():
    op.create_table("race", sa.Column("id", sa.Integer, primary_key=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT pg_sleep(1)")
    else:
        time.sleep(1)
    op.execute("INSERT INTO race (id) VALUES (1)")
"""
SECOND = 'def upgrade():\n    op.execute("INSERT INTO race VALUES (2)")\n'


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
def test_instances_starting_together_apply_each_revision_once(tmp_path, plugin_dir, database_url):
    """Three `courtyard db upgrade` processes at once, as three instances starting: the
    database's lock makes two of them wait, then find everything applied."""
    root = write_plugin(plugin_dir, "race", 'migrations = "migrations"\n')
    write_revision(root / "migrations", "r1", None, SLOW)
    write_revision(root / "migrations", "r2", "r1", SECOND)
    env = {**os.environ, "COURTYARD_DATABASE_URL": database_url, "COURTYARD_ENTRY_POINTS": "0"}
    command = [sys.executable, "-m", "courtyard", "db", "upgrade", "--json"]
    command += ["--plugin-dir", str(plugin_dir), "--data-dir", str(tmp_path / "data")]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    reports = [{row["owner"]: row for row in json.loads(out)} for out, _ in outputs]
    assert sorted(report["race"]["applied"] for report in reports) == [[], [], ["r1", "r2"]]
    for owner in reports[0]:  # the runtime's own owners raced too
        assert sum(bool(report[owner]["applied"]) for report in reports) <= 1


async def test_concurrent_upgrades_in_one_process_apply_each_revision_once(tmp_path, database_url):
    folder = tmp_path / "race"
    write_revision(folder, "r1", None, SLOW)
    write_revision(folder, "r2", "r1", SECOND)
    instances = [Database(database_url) for _ in range(3)]
    try:
        upgrades = asyncio.gather(*(db.upgrade("race", folder) for db in instances))
        results = await asyncio.wait_for(upgrades, 60)
        assert sorted(results) == [[], [], ["r1", "r2"]]
        async with instances[0].engine.connect() as connection:
            ids = (await connection.exec_driver_sql("SELECT id FROM race ORDER BY id")).all()
        assert [row[0] for row in ids] == [1, 2]
        assert await instances[1].current("race", folder) == ("r2", "r2")
    finally:
        for db in instances:
            await db.close()


async def test_migration_problems_are_named(tmp_path, database_url):
    db = Database(database_url)
    try:
        with pytest.raises(MigrationError, match=r"migrations folder .* does not exist"):
            await db.upgrade("x", tmp_path / "missing")
        forked = tmp_path / "forked"
        write_revision(forked, "f1", None, "def upgrade():\n    pass\n")
        write_revision(forked, "f2", "f1", "def upgrade():\n    pass\n")
        write_revision(forked, "f3", "f1", "def upgrade():\n    pass\n")
        with pytest.raises(MigrationError, match=r"[Mm]ultiple heads"):
            await db.status("x", forked)
        # The database holds a revision the folder no longer has (older plugin code).
        gone = tmp_path / "gone"
        write_revision(gone, "g1", None, "def upgrade():\n    pass\n")
        write_revision(gone, "g2", "g1", "def upgrade():\n    pass\n")
        assert await db.upgrade("gone", gone) == ["g1", "g2"]
        (gone / "g2.py").unlink()
        status = await db.status("gone", gone)
        assert (status.current, status.head, status.state) == ("g2", "g1", "unknown revision")
        with pytest.raises(MigrationError, match="g2"):
            await db.upgrade("gone", gone)
    finally:
        await db.close()


# courtyard db ------------------------------------------------------------------------


def test_db_revision_writes_chained_revisions(plugin_dir):
    root = write_plugin(plugin_dir, "notes", 'migrations = "db/versions"\n')
    first = run_cli("db", "revision", str(root), "-m", "Create the notes table")
    assert first.exit_code == 0, first.output
    second = run_cli("db", "revision", str(root), "-m", 'add a "priority" column\\')
    assert second.exit_code == 0, second.output
    written = {}
    for path in (root / "db/versions").glob("*.py"):
        namespace: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        written[path] = namespace
    (first_path, first_ns), (second_path, second_ns) = sorted(
        written.items(), key=lambda item: item[1]["down_revision"] is not None
    )
    assert first.output == f"wrote {first_path}\n"
    assert second.output == f"wrote {second_path}\n"
    assert first_path.name == f"{first_ns['revision']}_create_the_notes_table.py"
    assert second_path.name == f"{second_ns['revision']}_add_a_priority_column.py"
    assert first_ns["down_revision"] is None
    assert second_ns["down_revision"] == first_ns["revision"] != second_ns["revision"]
    assert second_ns["__doc__"].startswith('add a "priority" column\\\n')

    async def upgrade() -> list[str]:  # Alembic takes the files as they are
        database = Database(f"sqlite:///{plugin_dir}/x.db")
        try:
            return await database.upgrade("notes", root / "db/versions")
        finally:
            await database.close()

    assert asyncio.run(upgrade()) == [first_ns["revision"], second_ns["revision"]]


NOTE_MODEL = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.db import TenantScoped, model_base
from courtyard_sdk.identity import require_tenant
from sqlmodel import Field, select

Model = model_base()


class Note(TenantScoped, Model, table=True):
    __tablename__ = "notes_note"
    id: int | None = Field(default=None, primary_key=True)
    text: str
{more}

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.get("/")
    async def index():
        async with ctx.db.session(tenant="acme") as session:
            return {{"notes": len((await session.exec(select(Note))).all())}}

    return bp
"""


async def test_db_revision_autogenerate_drafts_from_the_models(courtyard, plugin_dir):
    root = write_plugin(
        plugin_dir, "notes", 'migrations = "migrations"\n', NOTE_MODEL.format(more="")
    )
    made = run_cli("db", "revision", str(root), "-m", "create notes", "--autogenerate")
    assert made.exit_code == 0, made.output
    (first,) = (root / "migrations").glob("*.py")
    assert "op.create_table('notes_note'" in first.read_text()
    # The model grows a column: the next draft adds just that.
    (root / "plugin.py").write_text(NOTE_MODEL.format(more="    priority: int = 0\n"))
    grown = run_cli("db", "revision", str(root), "-m", "add priority", "--autogenerate")
    assert grown.exit_code == 0, grown.output
    (second,) = [p for p in (root / "migrations").glob("*.py") if p != first]
    assert "op.add_column('notes_note', sa.Column('priority'" in second.read_text()
    assert "op.create_table('" not in second.read_text()
    same = run_cli("db", "revision", str(root), "-m", "nothing", "--autogenerate")
    assert same.exit_code == 1 and "already match the models" in same.output
    # The drafts run as they are: the plugin serves from its tables.
    rt = await courtyard(entry_points=False)
    assert (await rt.client.get("/notes/")).json() == {"notes": 0}


def test_db_revision_refusals(plugin_dir):
    root = write_plugin(plugin_dir, "plain")
    result = run_cli("db", "revision", str(root), "-m", "x")
    assert result.exit_code == 1
    assert "plain has no migrations folder" in result.output
    result = run_cli("db", "revision", str(plugin_dir), "-m", "x")
    assert result.exit_code == 1 and "plugin.toml: missing" in result.output

    forked = write_plugin(plugin_dir, "forked", 'migrations = "migrations"\n')
    write_revision(forked / "migrations", "f1", None, "def upgrade():\n    pass\n")
    write_revision(forked / "migrations", "f2", "f1", "def upgrade():\n    pass\n")
    write_revision(forked / "migrations", "f3", "f1", "def upgrade():\n    pass\n")
    result = run_cli("db", "revision", str(forked), "-m", "x")
    assert result.exit_code == 1
    assert "several heads (f2, f3)" in result.output
    result = run_cli("db", "revision", str(forked), "-m", "  ")
    assert result.exit_code == 1 and "message is empty" in result.output


def test_db_upgrade_and_status(plugin_dir, tmp_path, database_url):
    notes = write_notes(plugin_dir)
    write_revision(notes / "migrations", "n2", "n1", ADD_PRIORITY, "add priority")
    options = ["--plugin-dir", str(plugin_dir), "--data-dir", str(tmp_path / "data")]
    env = {"COURTYARD_DATABASE_URL": database_url}

    before = run_cli("db", "status", *options, env=env)
    assert before.exit_code == 1  # behind
    assert "notes" in before.output and "n2" in before.output
    assert "behind (2 to apply)" in before.output

    applied = run_cli("db", "upgrade", *options, env=env)
    assert applied.exit_code == 0, applied.output
    assert "notes: applied n1, n2\n" in applied.output
    again = run_cli("db", "upgrade", *options, env=env)
    assert again.exit_code == 0 and "notes: up to date\n" in again.output

    after = run_cli("db", "status", "--json", *options, env=env)
    assert after.exit_code == 0, after.output
    rows = {row["owner"]: row for row in json.loads(after.output)}
    assert rows["notes"] == {
        "owner": "notes",
        "kind": "plugin",
        "error": None,
        "current": "n2",
        "head": "n2",
        "pending": [],
        "state": "up to date",
    }
    assert all(row["state"] == "up to date" for row in rows.values())
    assert [row["kind"] for row in rows.values()][-1] == "plugin"  # the runtime's first

    (notes / "migrations/n2.py").unlink()  # the database is ahead of this code
    ahead = run_cli("db", "status", *options, env=env)
    assert ahead.exit_code == 1 and "unknown revision" in ahead.output


def test_db_upgrade_reports_failures_and_goes_on(plugin_dir, tmp_path, database_url):
    bad = write_plugin(plugin_dir, "bad", 'migrations = "migrations"\n')
    write_revision(bad / "migrations", "b1", None, FAILING, "fill bad_two")
    needs = write_plugin(plugin_dir, "needs-bad", 'dependencies = ["bad"]\nmigrations = "m"\n')
    write_revision(needs / "m", "x1", None, "def upgrade():\n    pass\n")
    write_plugin(plugin_dir, "broken", 'migrations = "m"\n', "raise RuntimeError('no')\n")
    write_notes(plugin_dir)
    options = ["--plugin-dir", str(plugin_dir), "--data-dir", str(tmp_path / "data")]
    result = run_cli("db", "upgrade", *options, env={"COURTYARD_DATABASE_URL": database_url})
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "notes: applied n1" in lines
    assert any(
        line.startswith("bad: failed: migrations failed: bad: revision b1 (fill bad_two)")
        for line in lines
    )
    assert "needs-bad: failed: dependency bad failed" in lines
    assert any(line.startswith("broken: failed: not loaded: import failed") for line in lines)


def test_db_commands_refuse_an_unreachable_database(plugin_dir, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    for command in ("upgrade", "status"):
        result = run_cli(
            "db", command, "--data-dir", str(tmp_path), env={"COURTYARD_DATABASE_URL": url}
        )
        assert result.exit_code == 1
        assert "cannot connect to the database" in result.output
        assert "Traceback" not in result.output


PARENT_AND_CHILD = """
def upgrade():
    op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))
    op.create_table(
        "child",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("parent.id", ondelete="CASCADE")),
    )
    op.execute("INSERT INTO parent (id) VALUES (1)")
    op.execute("INSERT INTO child (id, parent_id) VALUES (10, 1)")
"""

REBUILD_PARENT = """
def upgrade():
    # SQLite cannot alter a column in place: batch mode copies the table, drops the old
    # one and renames the copy. With foreign keys on, the drop would cascade to child.
    with op.batch_alter_table("parent", recreate="always") as batch:
        batch.add_column(sa.Column("name", sa.String, server_default="p"))
"""

DANGLING = """
def upgrade():
    op.execute("INSERT INTO child (id, parent_id) VALUES (11, 999)")
"""


async def test_sqlite_table_rebuilds_keep_referring_rows_and_foreign_keys_are_checked(tmp_path):
    folder = tmp_path / "family"
    write_revision(folder, "p1", None, PARENT_AND_CHILD)
    write_revision(folder, "p2", "p1", REBUILD_PARENT)
    db = Database(f"sqlite:///{tmp_path}/family.db")
    try:
        assert await db.upgrade("family", folder) == ["p1", "p2"]
        async with db.engine.connect() as connection:
            children = (await connection.exec_driver_sql("SELECT id FROM child")).all()
            assert [row[0] for row in children] == [10]
            # Foreign keys are back on for the pool's connections.
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1

        write_revision(folder, "p3", "p2", DANGLING)
        with pytest.raises(MigrationError, match="foreign keys that point nowhere: child row"):
            await db.upgrade("family", folder)
        assert await db.current("family", folder) == ("p2", "p3")
        async with db.engine.connect() as connection:
            children = (await connection.exec_driver_sql("SELECT id FROM child")).all()
            assert [row[0] for row in children] == [10]
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await db.close()
