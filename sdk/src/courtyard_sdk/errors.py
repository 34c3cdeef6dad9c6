"""Typed errors shared by the runtime and plugins."""

from __future__ import annotations

from collections.abc import Mapping


class CourtyardError(Exception):
    """Base class of every error Courtyard raises on purpose."""


class StartupError(CourtyardError):
    """The runtime cannot start: bad settings, or a plugin failure in strict mode.

    The CLI prints its message and exits non-zero, without a traceback.
    """


class ManifestError(CourtyardError):
    """A `plugin.toml` is missing, unreadable or invalid."""


class SettingsError(CourtyardError):
    """A setting (runtime or plugin) has a bad value or an unknown key."""


class ApiError(CourtyardError):
    """An error answered to an HTTP client as `{"error": {"code", "message"}}`.

    Raise it from a route; the runtime turns it into a JSON response with `status` and
    `headers` (such as `Retry-After` on a 429 or 503).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: Mapping[str, str] = headers or {}

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Return the documented error body."""
        return {"error": {"code": self.code, "message": self.message}}
