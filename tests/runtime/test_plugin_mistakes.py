"""A plugin's first mistakes with its data answer with what to fix, not a bare 500."""

from __future__ import annotations

import logging

from courtyard.testing import write_plugin

MODEL = """
from courtyard_sdk import Blueprint, hookimpl
from courtyard_sdk.db import TenantScoped, model_base
from sqlmodel import Field, select

Model = model_base()


class Note(TenantScoped, Model, table=True):
    __tablename__ = "notes_note"
    id: int | None = Field(default=None, primary_key=True)
    text: str


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("notes", __name__)

    @bp.post("/")
    async def add():
        async with ctx.db.session() as session:  # the mistake: no tenant
            session.add(Note(text="hello"))
            await session.commit()
        return {"ok": True}

    @bp.get("/")
    async def index():
        async with ctx.db.session(tenant="acme") as session:
            return {"notes": len((await session.exec(select(Note))).all())}

    return bp
"""


async def test_a_table_without_a_migration_names_the_fix(courtyard, plugin_dir, caplog):
    write_plugin(plugin_dir, "notes", "", MODEL)  # no migrations folder
    rt = await courtyard(entry_points=False)
    for _ in range(2):
        answer = await rt.client.get("/notes/")
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error["code"] == "PLUGIN_ERROR"
        assert "plugin notes" in error["message"] and "notes_note" in error["message"]
        assert "courtyard db revision" in error["message"]
    logged = [
        r for r in caplog.records if r.levelno == logging.ERROR and "notes_note" in r.getMessage()
    ]
    assert len(logged) == 1  # once per mistake, not per request


async def test_a_tenant_row_written_without_a_tenant_names_the_fix(courtyard, plugin_dir):
    write_plugin(plugin_dir, "notes", "", MODEL)
    rt = await courtyard(entry_points=False)
    async with rt.dispatcher.services.database.engine.begin() as connection:
        await connection.exec_driver_sql(  # the table exists, as a migration would make it
            "CREATE TABLE notes_note (id INTEGER PRIMARY KEY, text VARCHAR NOT NULL, "
            "tenant_id VARCHAR(128) NOT NULL)"
        )
    answer = await rt.client.post("/notes/")
    assert answer.status_code == 500
    message = answer.json()["error"]["message"]
    assert answer.json()["error"]["code"] == "PLUGIN_ERROR"
    assert "plugin notes" in message and "Note (table notes_note) is tenant-scoped" in message
    assert "tenant=require_tenant()" in message
    assert (await rt.client.get("/notes/")).json() == {"notes": 0}  # nothing was written
