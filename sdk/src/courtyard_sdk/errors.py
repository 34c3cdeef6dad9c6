"""Typed errors shared by the runtime and plugins."""

from __future__ import annotations


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

    Raise it from a route; the runtime turns it into a JSON response with `status`.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Return the documented error body."""
        return {"error": {"code": self.code, "message": self.message}}
