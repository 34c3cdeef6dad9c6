"""The auth service: who is calling, and what they may do (docs/security.md).

Credentials, presented as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`:

- API keys (keys.py), made with `courtyard keys create` or `POST /api/keys/`;
- JWT bearer tokens (tokens.py), when `jwt_secret`, `jwks_file` or `jwks_url` is set;
- plugin credentials (credentials.py), the secrets plugins declare in `[[credentials]]`.

Auth is **enabled** once any of them exists: an active key in the database, a token
issuer, or an active plugin credential. Until then the runtime is open: every caller is
`OPEN`, which holds every permission, and `courtyard serve` refuses to listen on anything
but loopback unless `--insecure`. A runtime that listens beyond loopback never falls back
to open mode, even when its last key is revoked.

Keys may be made out of band (the CLI on the same database, another instance), so
whether one exists is read from the database at most once a second: in the background
while keys exist (no request of a protected server waits for it), in the request path
while the server is open (a key made elsewhere protects the next request after at most a
second), and at once after a change this process makes. While it cannot be
read (the database is down), a request that does not bring a token or a plugin credential
answers `503 AUTH_UNAVAILABLE` with `Retry-After`: neither open (which would grant
everything) nor 401 (which would tell a client of an open server that it needs a key). A
key itself is looked up on every request that presents one: revoking it takes effect at
once.

Failed authentications are counted per client address (throttle.py): past
`auth_failures_per_minute`, a presented credential is refused with 429 before it is
checked.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from courtyard_sdk import ApiError, Manifest
from courtyard_sdk.identity import ANONYMOUS, OPEN, UNKNOWN, Identity, auth_unavailable, grants
from quart import has_request_context, has_websocket_context, request, websocket

from ..outages import classify
from ..security import is_loopback_host
from . import credentials as plugin_credentials
from . import tokens
from .credentials import NO_CREDENTIALS, CredentialSet, PluginCredential
from .keys import KeyInfo, KeyStore, is_key_id, looks_like_key, now
from .roles import Roles
from .sessions import Sessions
from .throttle import FailureThrottle
from .tokens import TokenVerifier

if TYPE_CHECKING:
    from ..settings import Settings
    from .database import Database

log = logging.getLogger("courtyard.auth")

FLAG_TTL = 1.0  # seconds a read of "is there an active key?" is trusted
INVALID_KEY = "Invalid or missing API key"  # runqy's wording
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_LIFETIME = timedelta(days=3650)
LIFETIME_RULE = "a key lives 1 second to 10 years"
_TENANT = re.compile(r"[^\s]{1,128}")


class HeaderPairs(Protocol):
    """Request headers as auth reads them: a mapping, or werkzeug's `Headers`."""

    def items(self) -> Iterable[tuple[str, str]]:
        """Every (name, value) pair."""
        ...


def parse_duration(text: str | int) -> timedelta:
    """`90`, `90s`, `15m`, `12h`, `30d` or `2w` (or a number of seconds) as a key's
    lifetime: above zero, ten years at most.

    :raises ApiError: 400 `INVALID_EXPIRY`.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if match is None:
            raise ApiError(
                400, "INVALID_EXPIRY", f"{text!r} is not a duration such as 3600, 90m, 12h or 30d"
            )
        seconds = int(match[1]) * _UNITS[match[2]]
    if not 0 < seconds <= MAX_LIFETIME.total_seconds():
        raise ApiError(400, "INVALID_EXPIRY", LIFETIME_RULE)
    return timedelta(seconds=seconds)


def presented_secret(headers: HeaderPairs) -> str | None:
    """The credential a request presents: `Authorization: Bearer <secret>` or
    `X-API-Key: <secret>` (other `Authorization` schemes are not Courtyard's).

    :raises ApiError: 401 `INVALID_CREDENTIALS` when the two headers disagree.
    """
    authorization = api_key = None
    # One pass, no lookups: a missing header costs werkzeug an exception per lookup, and
    # this runs for every request.
    for name, value in headers.items():
        if len(name) == 13 and name.lower() == "authorization":
            authorization = value
        elif len(name) == 9 and name.lower() == "x-api-key":
            api_key = value
    if authorization is None and api_key is None:
        return None
    bearer = None
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = rest.strip() or None
    api_key = (api_key or "").strip() or None
    if bearer and api_key and bearer != api_key:
        raise ApiError(
            401, "INVALID_CREDENTIALS", "Authorization and X-API-Key carry different credentials"
        )
    return bearer or api_key


def _presents_credential(headers: HeaderPairs) -> bool:
    """Whether `headers` carry `Authorization` or `X-API-Key` (one pass, as above)."""
    for name, _ in headers.items():  # werkzeug Headers iterate as pairs
        if (len(name) == 13 and name.lower() == "authorization") or (
            len(name) == 9 and name.lower() == "x-api-key"
        ):
            return True
    return False


def throttled(retry_after: int) -> ApiError:
    """429 `RATE_LIMIT_EXCEEDED`: too many failed authentications from one address."""
    return ApiError(
        429,
        "RATE_LIMIT_EXCEEDED",
        f"too many failed authentications from this address; retry in {retry_after} s",
        {"Retry-After": str(retry_after)},
    )


def client_address() -> str | None:
    """The address of the client of the current request or WebSocket, if any."""
    if has_request_context():
        return request.remote_addr
    if has_websocket_context():
        return websocket.remote_addr
    return None


class Auth:
    """The runtime's auth service; see the module docstring."""

    def __init__(self, settings: Settings, database: Database) -> None:
        """Check the auth settings and make the parts (no I/O).

        :raises SettingsError: for bad roles or JWT settings.
        """
        self.settings = settings
        self.roles = Roles(settings.roles)
        self.keys = KeyStore(database)
        self.tokens = TokenVerifier(settings) if tokens.configured(settings) else None
        # Listening beyond loopback without --insecure: never open, whatever happens.
        self.exposed = not is_loopback_host(settings.host) and not settings.insecure
        self._keys_active: bool | None = None  # None: not known (not read, or unreadable)
        self._fresh_until = -math.inf
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[bool | None] | None = None
        self.failures = FailureThrottle(settings.auth_failures_per_minute)
        # Console sessions (sessions.py): a key or JWT exchanged for a signed cookie.
        self.sessions = Sessions(
            settings.data_dir, settings.session_lifetime, self.keys, self.key_identity
        )

    async def start(self) -> None:
        """Read the JWKS and whether keys exist (the tables are up to date by now)."""
        if self.tokens is not None:
            await self.tokens.start()
        await self._refresh_flag()

    async def close(self) -> None:
        """Finish background reads and writes and close the JWKS client."""
        if self._refreshing is not None:
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await self.keys.close()
        if self.tokens is not None:
            await self.tokens.close()

    # Enabled -----------------------------------------------------------------------------

    async def enabled(self, credentials: CredentialSet = NO_CREDENTIALS) -> bool:
        """Whether callers must authenticate (see the module docstring).

        :param credentials: the serving generation's plugin credentials.
        """
        if self.exposed or self.tokens is not None or credentials:
            return True
        stale = time.monotonic() >= self._fresh_until
        if self._fresh_until == -math.inf or (stale and self._keys_active is False):
            # This process changed the keys, or the server is open and its answer old: read
            # now, so that a key made elsewhere (the CLI) protects the very next request.
            # Only an open server waits on this read, at most once a second.
            active = await self._refresh_flag()
        else:
            if stale and self._refreshing is None:
                # A protected server reads out-of-band changes (the CLI, another instance)
                # in the background: under load a read in the request path stalled every
                # request, and becoming open a second late is the safe side.
                self._refreshing = asyncio.create_task(self._refresh_flag())
                self._refreshing.add_done_callback(self._refreshed)
            active = self._keys_active
        if active is None:
            raise auth_unavailable()
        return active

    def _refreshed(self, task: asyncio.Task[bool | None]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # _refresh_flag logs its own failures

    async def _refresh_flag(self) -> bool | None:
        """Read whether an active key exists; None when it cannot be read."""
        async with self._lock:  # one read at a time; the others use its answer
            if time.monotonic() < self._fresh_until:
                return self._keys_active
            active: bool | None
            try:
                active = await self.keys.any_active()
            except Exception as exc:
                active = None
                if self._keys_active is not None or self._fresh_until == -math.inf:
                    log.error("cannot read the API keys (%s): answering 503 meanwhile", exc)
            else:
                if self._keys_active is None and self._fresh_until != -math.inf:
                    log.warning("the API keys can be read again")
            self._keys_active = active
            self._fresh_until = time.monotonic() + FLAG_TTL
            return active

    def keys_changed(self) -> None:
        """Forget what is known of the keys (after this process made or revoked one)."""
        self._fresh_until = -math.inf

    # Identifying -------------------------------------------------------------------------

    async def identify(
        self,
        headers: HeaderPairs,
        credentials: CredentialSet = NO_CREDENTIALS,
        client: str | None = None,
    ) -> Identity:
        """The identity of a request with `headers`.

        No credential: `ANONYMOUS` while auth is enabled, else `OPEN`. A valid credential:
        its identity. A bad one: refused while auth is enabled, and counted against the
        client's address; ignored (`OPEN`) while the runtime is open.

        :param client: the client's address; by default that of the current request or
            WebSocket.
        :raises ApiError: 401 (`INVALID_CREDENTIALS`, `INVALID_API_KEY`,
            `API_KEY_REVOKED`, `API_KEY_EXPIRED`, `INVALID_TOKEN`, `TOKEN_EXPIRED`), 429
            `RATE_LIMIT_EXCEEDED` for an address past
            `auth_failures_per_minute` that presents a credential, or 503
            `AUTH_UNAVAILABLE`.
        """
        if client is None:
            client = client_address()
        try:
            # Headers with no credential at all are never throttled: the public routes
            # stay reachable from an address that failed.
            wait = self.failures.retry_after(client)  # at once None while nobody failed
            if wait is not None and _presents_credential(headers):
                raise throttled(wait)  # before the credential is even looked at
            secret = presented_secret(headers)
            if secret is None:
                try:
                    return ANONYMOUS if await self.enabled(credentials) else OPEN
                except ApiError:  # the keys cannot be read: public routes still serve
                    return UNKNOWN
            return await self.verify(secret, credentials)
        except ApiError as exc:
            if await self.enabled(credentials):
                if exc.status == 401:
                    self.failures.failed(client)
                raise
            return OPEN

    async def verify(self, secret: str, credentials: CredentialSet = NO_CREDENTIALS) -> Identity:
        """The identity of a presented secret.

        :raises ApiError: see `identify`.
        """
        if (identity := credentials.match(secret)) is not None:
            return identity
        if looks_like_key(secret):
            return await self._verify_key(secret)
        if secret.count(".") == 2:
            if self.tokens is None:
                raise ApiError(
                    401, "INVALID_TOKEN", "JWT bearer tokens are not accepted: no issuer is set"
                )
            caller = await self.tokens.verify(secret)
            return Identity(
                subject=caller.subject,
                kind="token",
                tenant_id=caller.tenant,
                roles=frozenset(caller.roles),
                permissions=self.roles.expand(caller.roles, caller.permissions),
                claims=caller.claims,
            )
        raise ApiError(401, "INVALID_API_KEY", INVALID_KEY)

    async def _verify_key(self, secret: str) -> Identity:
        try:
            info = await self.keys.find(secret)
        except Exception as exc:
            if classify(exc) is None:
                raise
            raise auth_unavailable() from exc
        if info is None:
            raise ApiError(401, "INVALID_API_KEY", INVALID_KEY)
        status = info.status()
        if status == "revoked":
            raise ApiError(401, "API_KEY_REVOKED", f"API key {info.id} has been revoked")
        if status == "expired":
            raise ApiError(401, "API_KEY_EXPIRED", f"API key {info.id} has expired")
        return self.key_identity(info)

    def key_identity(self, info: KeyInfo) -> Identity:
        """The identity of a key's holder."""
        return Identity(
            subject=info.id,
            kind="key",
            tenant_id=info.tenant,
            roles=frozenset(info.roles),
            permissions=self.roles.expand(info.roles, info.permissions),
        )

    # Managing keys -----------------------------------------------------------------------

    async def create_key(
        self,
        *,
        name: str,
        roles: tuple[str, ...] = (),
        permissions: tuple[str, ...] = (),
        tenant: str | None = None,
        expires_in: timedelta | None = None,
        by: Identity | None = None,
    ) -> tuple[KeyInfo, str]:
        """Make a key and return it with its secret, which is never shown again.

        :param by: the caller making it over the API, who can grant only permissions
            they hold, and only for their own tenant; None for the operator (the CLI).
        :raises ApiError: 400 `INVALID_KEY_NAME`, `INVALID_TENANT`, `UNKNOWN_ROLE`,
            `INVALID_PERMISSION`, `INVALID_EXPIRY`, `NO_PERMISSIONS`; 403
            `AUTHORIZATION_FAILED`.
        """
        name = name.strip()
        if not name or len(name) > 128 or not name.isprintable():
            raise ApiError(400, "INVALID_KEY_NAME", "a key name is 1 to 128 printable characters")
        roles, permissions = tuple(dict.fromkeys(roles)), tuple(dict.fromkeys(permissions))
        if not roles and not permissions:
            raise ApiError(400, "NO_PERMISSIONS", "give the key at least one role or permission")
        self.roles.check(roles, permissions)
        if tenant is not None and not _TENANT.fullmatch(tenant):
            raise ApiError(400, "INVALID_TENANT", "a tenant is 1 to 128 characters, no spaces")
        if by is not None:
            tenant = self._tenant_for(by, tenant)
            self._may_hold(by, self.roles.expand(roles, permissions), "grant")
        expires_at = None
        if expires_in is not None:
            if not timedelta(0) < expires_in <= MAX_LIFETIME:
                raise ApiError(400, "INVALID_EXPIRY", LIFETIME_RULE)
            expires_at = now() + expires_in
        info, secret = await self.keys.create(
            name=name,
            roles=roles,
            permissions=permissions,
            tenant=tenant,
            expires_at=expires_at,
            created_by=by.subject if by is not None else "cli",
        )
        self.keys_changed()
        log.info("created API key %s (%s) for %s", info.id, name, ", ".join(roles + permissions))
        return info, secret

    async def list_keys(self, by: Identity | None = None) -> list[KeyInfo]:
        """Every key, or only the caller's tenant's when the caller has one."""
        return await self.keys.list_keys(tenant=by.tenant_id if by is not None else None)

    async def revoke_key(self, key_id: str, by: Identity | None = None) -> KeyInfo:
        """Revoke a key at once (again: no change).

        :raises ApiError: 404 `KEY_NOT_FOUND` (also for another tenant's key), 403
            `AUTHORIZATION_FAILED` for a key holding permissions the caller does not.
        """
        info = await self.keys.get(key_id) if is_key_id(key_id) else None
        if info is None or (by is not None and by.tenant_id not in (None, info.tenant)):
            raise ApiError(404, "KEY_NOT_FOUND", f"API key {key_id} not found")
        if by is not None:
            self._may_hold(by, self.roles.expand(info.roles, info.permissions), "revoke")
        revoked = await self.keys.revoke(key_id)
        assert revoked is not None  # keys are never deleted
        self.keys_changed()
        log.info("revoked API key %s (%s)", key_id, info.name)
        return revoked

    @staticmethod
    def _tenant_for(by: Identity, tenant: str | None) -> str | None:
        if by.tenant_id is None:
            return tenant
        if tenant not in (None, by.tenant_id):
            raise ApiError(403, "AUTHORIZATION_FAILED", "cannot make keys for another tenant")
        return by.tenant_id

    @staticmethod
    def _may_hold(by: Identity, permissions: frozenset[str], verb: str) -> None:
        missing = sorted(p for p in permissions if not grants(by.permissions, p))
        if missing:
            raise ApiError(
                403,
                "AUTHORIZATION_FAILED",
                f"cannot {verb} a key holding permissions you lack: {', '.join(missing)}",
            )

    # Plugin credentials and exposure -----------------------------------------------------

    def plugin_credentials(
        self,
        plugin: str,
        manifest: Manifest,
        operator_settings: Mapping[str, object],
        environ: Mapping[str, str] | None = None,
    ) -> list[PluginCredential]:
        """The active `[[credentials]]` of a plugin (see credentials.py).

        :raises SettingsError: for an unknown role, a setting that is no string, or a
            secret shorter than 16 characters (unless `insecure`).
        """
        return plugin_credentials.collect(
            plugin,
            manifest,
            operator_settings,
            self.roles,
            os.environ if environ is None else environ,
            insecure=self.settings.insecure,
        )

    def exposure_refusal(self, credentials: CredentialSet) -> str | None:
        """Why the runtime must not serve on its address (None when it may): listening
        beyond loopback, without `--insecure`, with no credential that could be checked.
        Uses what `start` read of the keys."""
        if not self.exposed or self.tokens is not None or credentials or self._keys_active:
            return None
        return exposure_message(self.settings.host)


def exposure_message(host: str) -> str:
    """The refusal to serve openly on `host`."""
    return (
        f"refusing to serve on {host} without authentication: anyone who can reach it "
        "could install plugins. Create an API key first (courtyard keys create --name "
        "admin --role admin), configure JWT (jwt_secret, jwks_file or jwks_url), or pass "
        "--insecure (COURTYARD_INSECURE=1) to serve openly anyway"
    )
