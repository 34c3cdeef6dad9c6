"""The paths only the runtime serves: the one list the runtime, the manifest checks and
the docs refer to."""

from __future__ import annotations

RESERVED_PREFIXES = (
    "/api/health",
    "/api/plugins",
    "/api/apps",
    "/api/keys",
    "/api/audit",
    "/api/stream",
    "/api/openapi.json",
    "/api/docs",
    "/.well-known",
    "/console",
)
"""A plugin route equal to one of these, or under one, is a build error."""

RESERVED_BASES = frozenset({"/api", "/.well-known", "/console"})
"""Bases no plugin may take as a whole (its routes may still live under `/api/...`)."""


def is_reserved(path: str) -> bool:
    """Whether `path` is, or lies under, a path only the runtime serves."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in RESERVED_PREFIXES)


__all__ = ["RESERVED_BASES", "RESERVED_PREFIXES", "is_reserved"]
