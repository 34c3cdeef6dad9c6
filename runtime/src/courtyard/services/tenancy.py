"""Tenant scoping of database sessions: a session opened for one tenant reads and writes
only that tenant's rows of models derived from `courtyard_sdk.db.TenantScoped`.

Reads, ORM UPDATE and DELETE statements and relationship loads get
`WHERE tenant_id = :tenant` (SQLAlchemy's `with_loader_criteria`); rows added get the
tenant, and a flush or statement that would write another tenant's row raises
`TenantViolation`. Raw SQL (`text()`, statements on `Table` objects) is not scoped.

A session opened without a tenant may write tenant-scoped rows only with their
`tenant_id` set (`require_tenant_ids`): a row without one is refused with what to do,
before the database refuses it with a NOT NULL error that names neither.
"""

from __future__ import annotations

from typing import Any, cast

from courtyard_sdk.db import TenantScoped, TenantViolation
from sqlalchemy import BindParameter, Insert, event, literal_column
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.orm.exc import ObjectDeletedError


def scope_to_tenant(session: Session, tenant: str) -> None:
    """Make `session` read and write only `tenant`'s rows of `TenantScoped` models."""
    # One option for the mixin covers every tenant-scoped model wherever it appears in a
    # statement: selected, joined, in a subquery, or loaded through a relationship.
    only_tenant = with_loader_criteria(
        TenantScoped, lambda model: _tenant_column(model) == tenant, include_aliases=True
    )

    @event.listens_for(session, "do_orm_execute")
    def _only_this_tenant(state: ORMExecuteState) -> None:
        if _writes_tenant_rows(state):
            if state.is_insert:
                _stamp_insert(state, tenant)
            elif state.is_update:
                _check_update(state)
        if state.is_select or state.is_update or state.is_delete:
            state.statement = state.statement.options(only_tenant)

    @event.listens_for(session, "before_flush")
    def _check_rows(session: Session, _context: Any, _instances: Any) -> None:
        for row in session.new:
            if isinstance(row, TenantScoped):
                if row.tenant_id is None:
                    row.tenant_id = tenant
                _own(row.tenant_id, tenant)
        for row in (*session.dirty, *session.deleted):
            if isinstance(row, TenantScoped):
                state = sa_inspect(row)
                if "tenant_id" not in state.dict:
                    # Expired (a rollback, a commit elsewhere): load it through this
                    # session, which cannot see a row of another tenant.
                    try:
                        _ = row.tenant_id
                    except ObjectDeletedError:
                        raise TenantViolation(
                            f"a session of tenant {tenant!r} cannot write a row it cannot "
                            "read (another tenant's, or one deleted)"
                        ) from None
                # Both the value loaded and the value set must be ours: a row of another
                # tenant cannot be changed, deleted, or taken over by changing its tenant.
                history = state.attrs.tenant_id.history
                for value in (*history.deleted, *history.unchanged, *history.added):
                    _own(value, tenant)


def require_tenant_ids(session: Session) -> None:
    """Refuse, in a session without a tenant, new tenant-scoped rows without `tenant_id`."""

    @event.listens_for(session, "before_flush")
    def _check_rows(session: Session, _context: Any, _instances: Any) -> None:
        for row in session.new:
            if isinstance(row, TenantScoped) and row.tenant_id is None:
                model = type(row).__name__
                table = getattr(type(row), "__tablename__", model)
                raise TenantViolation(
                    f"{model} (table {table}) is tenant-scoped, and this row has no "
                    "tenant_id: open the session with ctx.db.session(tenant="
                    "require_tenant()) to stamp it with the caller's tenant, or set "
                    "tenant_id yourself"
                )


def _tenant_column(model: Any) -> Any:
    # SQLAlchemy first calls the criteria with the unmapped mixin itself, which has no
    # column: any expression of the same shape does for that call.
    if sa_inspect(model, raiseerr=False) is None:
        return literal_column("tenant_id")
    return model.tenant_id


def _own(value: Any, tenant: str) -> None:
    if not isinstance(value, str) or value != tenant:  # an SQL expression is not checkable
        raise TenantViolation(f"a session of tenant {tenant!r} cannot write a row of {value!r}")


def _writes_tenant_rows(state: ORMExecuteState) -> bool:
    mapper = state.bind_mapper
    return (state.is_insert or state.is_update) and (
        mapper is not None and issubclass(mapper.class_, TenantScoped)
    )


def _rows(parameters: Any) -> list[dict[str, Any]]:
    if not parameters:
        return []
    return [dict(row) for row in (parameters if isinstance(parameters, list) else [parameters])]


def _inline_values(statement: Any) -> dict[str, Any]:
    values = dict(getattr(statement, "_values", None) or {})
    values.update(dict(getattr(statement, "_ordered_values", None) or ()))
    # A key is a column (its `key` is its name) or the name itself.
    return {cast(str, getattr(key, "key", key)): value for key, value in values.items()}


def _stamp_insert(state: ORMExecuteState, tenant: str) -> None:
    """Give every row an ORM INSERT statement writes the session's tenant."""
    statement = cast(Insert, state.statement)  # called when `state.is_insert`
    if (
        getattr(statement, "_multi_values", None)
        or getattr(statement, "select", None) is not None
        or getattr(statement, "_post_values_clause", None) is not None
    ):
        raise TenantViolation(
            "a tenant's session inserts tenant-scoped rows with session.add(), or with "
            "insert(Model) and the rows as parameters; not with multi-row values(), "
            "from_select() or an upsert, which it cannot check"
        )
    inline = _inline_values(statement)
    if "tenant_id" in inline:
        value = inline["tenant_id"]
        _own(value.value if isinstance(value, BindParameter) else value, tenant)
    rows = _rows(state.parameters)
    if not rows:
        if "tenant_id" not in inline:
            state.statement = statement.values(tenant_id=tenant)
        return
    for row in rows:
        row.setdefault("tenant_id", tenant)
        _own(row["tenant_id"], tenant)
    state.parameters = rows if isinstance(state.parameters, list) else rows[0]


def _check_update(state: ORMExecuteState) -> None:
    """Refuse what the tenant criteria cannot cover in an ORM UPDATE statement."""
    if isinstance(state.parameters, list):
        raise TenantViolation(
            "a tenant's session cannot run a bulk UPDATE by primary key (a list of rows) "
            "on a tenant-scoped model: its rows are not filtered by tenant. Use "
            "update(Model).where(...).values(...), or load the rows and change them"
        )
    if "tenant_id" in _inline_values(state.statement) or "tenant_id" in (state.parameters or {}):
        raise TenantViolation("a tenant's session cannot change the tenant_id of rows")
