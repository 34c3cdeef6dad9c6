"""Roles: named sets of permissions, built in (`admin`, `editor`, `viewer`) or configured
(`[roles]` in `courtyard.toml`).

Credentials store role names, not their permissions: a role's permissions are looked up
each time a credential is verified, so that changing a custom role applies to every key
holding it at the next restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from courtyard_sdk import ApiError, SettingsError
from courtyard_sdk.identity import is_permission

ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

# Plugins name their permissions `<area>:read` for reads and `<area>:write` for changes,
# so that `viewer` and `editor` cover them; finer actions are granted by admin and by
# custom roles only. Installing or removing a plugin runs or removes code inside the
# runtime, and managing keys hands out permissions: both stay with `admin`. Reading the
# audit log (`audit:read`) is not among the reads `*:read` grants
# (`courtyard_sdk.identity.NOT_BY_ANY_AREA`): it stays with `admin` and roles naming it.
BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("*",),
    "editor": ("*:read", "*:write", "plugins:reload", "apps:install", "apps:remove"),
    "viewer": ("*:read",),
}

# The core API's permissions (docs/security.md).
CORE_PERMISSIONS = (
    "plugins:read",
    "plugins:install",
    "plugins:remove",
    "plugins:reload",
    "apps:read",
    "apps:install",
    "apps:remove",
    "keys:manage",
    "cluster:read",
)


class Roles:
    """The role table in force: the built-in roles, with `editor` and `viewer` replaced
    and new roles added by the `roles` setting (`admin` is always `*`)."""

    def __init__(self, custom: Mapping[str, Sequence[str]]) -> None:
        """:raises SettingsError: for a bad role name, a bad permission, or `admin`."""
        table = dict(BUILTIN_ROLES)
        for name, permissions in custom.items():
            if not ROLE_NAME.fullmatch(name):
                raise SettingsError(
                    f"roles.{name}: a role name is 1 to 64 lowercase letters, digits, "
                    "'_', '.' or '-'"
                )
            if name == "admin":
                raise SettingsError("roles.admin: the admin role is built in (`*`)")
            for permission in permissions:
                if not is_permission(permission):
                    raise SettingsError(
                        f"roles.{name}: {permission!r} is not a permission such as 'queues:write'"
                    )
            table[name] = tuple(permissions)
        self._table = table

    @property
    def names(self) -> list[str]:
        """Every role name, built-in ones first."""
        return list(self._table)

    def __contains__(self, role: object) -> bool:
        return role in self._table

    def permissions_of(self, role: str) -> tuple[str, ...]:
        """The permissions `role` grants (none for an unknown role)."""
        return self._table.get(role, ())

    def expand(self, roles: Iterable[str], permissions: Iterable[str] = ()) -> frozenset[str]:
        """Every permission held with `roles` and the extra `permissions`; unknown roles
        grant nothing (a token may name roles of other systems)."""
        held = set(permissions)
        for role in roles:
            held.update(self._table.get(role, ()))
        return frozenset(held)

    def check(self, roles: Iterable[str], permissions: Iterable[str]) -> None:
        """Refuse unknown roles and malformed permissions (for a new credential).

        :raises ApiError: 400 `UNKNOWN_ROLE` or `INVALID_PERMISSION`, naming the offender.
        """
        for role in roles:
            if role not in self._table:
                known = ", ".join(self._table)
                raise ApiError(400, "UNKNOWN_ROLE", f"unknown role {role!r} (known: {known})")
        for permission in permissions:
            if not is_permission(permission):
                raise ApiError(
                    400,
                    "INVALID_PERMISSION",
                    f"{permission!r} is not a permission such as 'queues:write'",
                )
