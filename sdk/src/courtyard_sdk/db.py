"""Tables for plugins: SQLModel models on a registry of the plugin's own.

::

    from courtyard_sdk.db import TenantScoped, model_base
    from sqlmodel import Field

    Model = model_base()

    class Note(TenantScoped, Model, table=True):
        id: int | None = Field(default=None, primary_key=True)
        text: str

A plugin's models derive from its own `model_base()` rather than `SQLModel` itself, so
that its tables live in their own `MetaData` (`Model.metadata`, what its migrations
describe) and a reload that imports the plugin again defines them afresh instead of
clashing with the previous generation's.
"""

from __future__ import annotations

from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from .errors import CourtyardError


def model_base() -> type[SQLModel]:
    """A new SQLModel base class with a registry and `MetaData` of its own."""

    class Model(SQLModel, registry=registry()):
        pass

    return Model


class TenantScoped(SQLModel):
    """Mix into a model whose rows belong to one tenant (put it first among the bases).

    A session opened with `ctx.db.session(tenant=...)` only ever reads rows of that
    tenant and stamps new rows with it.
    """

    tenant_id: str = Field(index=True, max_length=128)


class TenantViolation(CourtyardError):
    """A tenant-scoped session was asked to read or write another tenant's row in a way
    it cannot filter (raised on flush or execute)."""


__all__ = ["TenantScoped", "TenantViolation", "model_base"]
