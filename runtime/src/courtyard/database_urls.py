"""Database URLs as Courtyard reads them: checked when settings are read, so that every
command reports a bad URL cleanly (the database service uses the same function)."""

from __future__ import annotations

from pathlib import Path

from courtyard_sdk import SettingsError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_url(url: str) -> str:
    """`url` with the async driver Courtyard uses for its dialect, a relative SQLite path
    made absolute (against the working directory, once, as SQLAlchemy would read it), and
    `postgres://` and libpq's `sslmode` accepted.

    :raises SettingsError: for a URL that cannot be parsed, another database or driver,
        or an in-memory SQLite database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(
            f"database_url {redacted_url(url)!r} is not a database URL: use "
            "sqlite:///path/to/file.db or postgresql://user:password@host/database"
        ) from None
    dialect = parsed.get_backend_name()
    if dialect == "postgres":  # Heroku's and libpq's spelling
        dialect, parsed = "postgresql", parsed.set(drivername="postgresql")
    if dialect not in _DRIVERS:
        raise SettingsError(
            f"database_url {redacted_url(url)!r}: unsupported database {dialect!r}: "
            "use sqlite or postgresql"
        )
    driver = _DRIVERS[dialect]
    if parsed.drivername not in (dialect, driver):
        raise SettingsError(
            f"database_url {redacted_url(url)!r}: driver {parsed.drivername!r} is not "
            f"supported: write {dialect}:// (Courtyard uses {driver})"
        )
    parsed = parsed.set(drivername=driver)
    if dialect == "sqlite":
        parsed = _sqlite_file(parsed, url)
    elif "sslmode" in parsed.query and "ssl" not in parsed.query:
        # asyncpg takes libpq's sslmode values under the name `ssl`.
        query = dict(parsed.query)
        query["ssl"] = query.pop("sslmode")
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False)


def _sqlite_file(parsed: URL, url: str) -> URL:
    database = parsed.database or ""
    memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if memory:
        raise SettingsError(
            f"database_url {url!r}: an in-memory SQLite database vanishes with the process "
            "and each connection gets its own: give a file, sqlite:///path/to/file.db"
        )
    if parsed.query.get("uri") in ("true", "1") or database.startswith("file:"):
        return parsed  # an SQLite URI names its file itself
    return parsed.set(database=str(Path(database).expanduser().absolute()))


def redacted_url(url: str) -> str:
    """`url` with its password hidden (or all of it, when it cannot be parsed)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url if "@" not in url else "<unparseable URL with credentials>"
