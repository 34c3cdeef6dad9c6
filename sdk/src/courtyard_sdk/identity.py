"""Who is calling: the identity the runtime resolved for the current request.

The runtime authenticates every request before any plugin code runs (API keys, JWT bearer
tokens, credentials plugins declare) and leaves the result where `current_identity()`
finds it. Routes declare what they need with `require`::

    from courtyard_sdk.identity import current_identity, require

    @bp.post("/jobs")
    @require("jobs:create")
    async def create_job() -> dict:
        tenant = current_identity().tenant_id
        ...

Permissions are `area:action` strings. A held permission `*` grants everything,
`area:*` grants every action of `area` and `*:action` grants `action` in every area
(the built-in roles use `*:read` and `*:write`). While no key or token issuer is configured the
runtime is open: every request gets `OPEN`, which holds `*` (the server then refuses
to listen on anything but loopback unless started with `--insecure`).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from quart import g, has_request_context, has_websocket_context

from .errors import ApiError

IdentityKind = Literal["anonymous", "open", "unknown", "key", "token", "credential"]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
G_ATTRIBUTE = "courtyard_identity"
PERMISSIONS_ATTRIBUTE = "__courtyard_permissions__"
_PERMISSION = re.compile(r"(?:\*|(?:\*|[a-z0-9_.-]+):(?:\*|[a-z0-9_.-]+))")


def is_permission(text: str) -> bool:
    """Whether `text` is a permission: `*`, or `area:action` where either part may be `*`
    and each is made of lowercase letters, digits, `_`, `.` and `-`."""
    return _PERMISSION.fullmatch(text) is not None


# Permissions `*:action` does not grant: reading the audit log shows who did what, which
# the holders of `*:read` (the `viewer` and `editor` roles) have no need to see. They are
# granted by `*`, `area:*` or by name only.
NOT_BY_ANY_AREA = frozenset({"audit:read"})


def grants(held: Iterable[str], wanted: str) -> bool:
    """Whether the permissions `held` include `wanted` (`*`, `area:*` and `*:action` are
    wildcards; `*:action` grants none of `NOT_BY_ANY_AREA`)."""
    area, _, action = wanted.partition(":")
    if wanted in NOT_BY_ANY_AREA:
        accepted: tuple[str, ...] = ("*", wanted, f"{area}:*")
    else:
        accepted = ("*", wanted, f"{area}:*", f"*:{action}")
    return any(permission in accepted for permission in held)


@dataclass(frozen=True)
class Identity:
    """One caller, whatever the credential it presented.

    :ivar subject: a stable id: the key's id, the token's `sub` (or `user_id`), or the
        credential's name.
    :ivar kind: `key`, `token` or `credential` when a credential was verified;
        `anonymous` when none was presented; `open` when the runtime has no auth set up;
        `unknown` when none was presented and the runtime cannot read its API keys.
    :ivar tenant_id: the tenant the caller acts for, if any (JWT `tenant_id`, a key's).
    :ivar roles: role names (`admin`, `editor`, `viewer` or custom ones).
    :ivar permissions: every permission held, roles already expanded.
    :ivar claims: the verified token's claims (empty for keys).
    """

    subject: str
    kind: IdentityKind
    tenant_id: str | None = None
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def authenticated(self) -> bool:
        """Whether a credential was presented and verified."""
        return self.kind in ("key", "token", "credential")

    def can(self, permission: str) -> bool:
        """Whether this identity holds `permission`."""
        return grants(self.permissions, permission)


ANONYMOUS = Identity(subject="anonymous", kind="anonymous")
"""A caller who presented no credential to a runtime that has auth configured."""

OPEN = Identity(
    subject="local", kind="open", roles=frozenset({"admin"}), permissions=frozenset({"*"})
)
"""Every caller while the runtime has no key or token issuer configured."""

UNKNOWN = Identity(subject="anonymous", kind="unknown")
"""A caller who presented no credential while the runtime cannot tell whether one is
needed (its API keys cannot be read): public routes serve it, the others answer 503
`AUTH_UNAVAILABLE` rather than grant everything or demand a key."""


def auth_unavailable() -> ApiError:
    """The answer while the runtime cannot read its API keys: 503 `AUTH_UNAVAILABLE`."""
    return ApiError(
        503,
        "AUTH_UNAVAILABLE",
        "the API keys cannot be read now; try again shortly",
        {"Retry-After": "5"},
    )


def current_identity() -> Identity:
    """The identity of the request (or WebSocket) being served.

    Outside a request, for example in a background task, there is no caller: the answer is
    `ANONYMOUS`, which holds no permission.
    """
    if has_request_context() or has_websocket_context():
        return cast(Identity, g.get(G_ATTRIBUTE, ANONYMOUS))  # only the runtime sets it
    return ANONYMOUS


def check(*permissions: str) -> Identity:
    """Return the current identity if it holds every one of `permissions`.

    :raises ApiError: 401 `AUTHENTICATION_REQUIRED` when no credential was presented,
        403 `AUTHORIZATION_FAILED` when the caller lacks a permission, 503
        `AUTH_UNAVAILABLE` for `UNKNOWN`.
    """
    identity = current_identity()
    missing = [p for p in permissions if not identity.can(p)]
    if missing:
        if identity.kind == "unknown":
            raise auth_unavailable()
        if not identity.authenticated:
            raise ApiError(401, "AUTHENTICATION_REQUIRED", "Authentication token required")
        raise ApiError(
            403, "AUTHORIZATION_FAILED", f"Insufficient permissions: needs {', '.join(missing)}"
        )
    return identity


def require(*permissions: str) -> Callable[[F], F]:
    """Decorate a route (or WebSocket) so that it runs only for callers holding every one
    of `permissions`; see `check` for the answers otherwise.

    The permissions are also recorded on the function, where the runtime finds them for
    the OpenAPI document.
    """

    def decorate(view: F) -> F:
        if not inspect.iscoroutinefunction(view):
            raise TypeError(f"require() decorates async views; {view.__qualname__} is not one")

        @functools.wraps(view)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            check(*permissions)
            return await view(*args, **kwargs)

        setattr(guarded, PERMISSIONS_ATTRIBUTE, tuple(permissions))
        return cast(F, guarded)  # functools.wraps: the same signature as `view`

    return decorate


def require_tenant() -> str:
    """The current identity's tenant.

    :raises ApiError: 401 `AUTHENTICATION_REQUIRED` for an anonymous caller, 403
        `TENANT_REQUIRED` when the caller acts for no tenant.
    """
    identity = current_identity()
    if identity.tenant_id is None:
        if identity.kind == "unknown":
            raise auth_unavailable()
        if not identity.authenticated and identity.kind != "open":
            raise ApiError(401, "AUTHENTICATION_REQUIRED", "Authentication token required")
        raise ApiError(403, "TENANT_REQUIRED", "this request needs a tenant-scoped identity")
    return identity.tenant_id


__all__ = [
    "ANONYMOUS",
    "OPEN",
    "UNKNOWN",
    "Identity",
    "auth_unavailable",
    "check",
    "current_identity",
    "grants",
    "is_permission",
    "require",
    "require_tenant",
]
