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

from typing import Any

from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from .errors import CourtyardError


def model_base() -> type[SQLModel]:
    """A new SQLModel base class with a registry and `MetaData` of its own, whose rows
    dump their fields in the order the model declares them."""

    class Model(SQLModel, registry=registry()):
        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            """The row as a dict, fields in declaration order. A table model's own dump
            follows the order its attributes were set in, which for a row read from
            the database varies from run to run: JSON answers would too."""
            dumped = super().model_dump(**kwargs)
            ordered = {name: dumped[name] for name in type(self).model_fields if name in dumped}
            return {**ordered, **dumped}

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
