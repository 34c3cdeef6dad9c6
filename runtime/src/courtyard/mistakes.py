"""A plugin's mistakes with its data, answered with what to fix rather than a bare 500.

Two mistakes every first plugin with a table makes, both only visible at the first call:
a table its models declare but no migration creates (`no such table`), and a row of a
tenant-scoped model written in a session opened without a tenant (a `TenantViolation`
from the SDK's session, raised before the database's NOT NULL error). The request answers
`500 PLUGIN_ERROR` with a message naming the plugin, the table and the fix, and the log
says the same once per plugin and mistake.
"""

from __future__ import annotations

import logging
import re

from courtyard_sdk.db import TenantViolation

log = logging.getLogger("courtyard.plugins")

# SQLite's message, and PostgreSQL's (asyncpg's UndefinedTableError, SQLSTATE 42P01).
_NO_TABLE = re.compile(
    r'no such table: (?P<sqlite>\w+)|relation "(?P<postgres>\w+)" does not exist'
)


def explain(exc: BaseException, plugin: str) -> str | None:
    """What `plugin` must fix, if `exc` shows one of its data mistakes."""
    for each in (exc, exc.__cause__, getattr(exc, "orig", None)):
        if isinstance(each, TenantViolation):
            return f"plugin {plugin}: {each}"
        if each is not None and (found := _NO_TABLE.search(str(each))):
            table = found["sqlite"] or found["postgres"]
            return (
                f"plugin {plugin}: table {table} does not exist: no migration of the plugin "
                "creates it. Name a migrations folder in plugin.toml (migrations = "
                '"migrations") and draft a revision from the models with courtyard db '
                "revision PLUGIN_DIR -m 'create tables' --autogenerate (see the database "
                "page of the documentation, Migrations)"
            )
    return None


class MistakeLog:
    """Each (plugin, mistake) logged once, as an error."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, message: str) -> None:
        """Log `message` the first time it is seen."""
        if message not in self._seen:
            self._seen.add(message)
            log.error("%s", message)


__all__ = ["MistakeLog", "explain"]
