"""Console sessions: a verified API key or JWT exchanged for a signed, expiring cookie
(docs/console.md#sign-in-and-sessions).

A session cookie is `v1.<payload>.<signature>`: the payload (base64url JSON) names the
session, what it was made from and when it ends; the signature is HMAC-SHA256 with the
server's session secret, a random 32-byte file `<data_dir>/session.secret` made on first
use (delete it to end every session); instances sharing a PostgreSQL database share one
secret, kept in it (`courtyard_secrets`), so that a session works on each of them.
Nothing else is stored: a session made from a key is checked against the key on every
request, so revoking or expiring the key ends its sessions at once; a session made from
a JWT carries the token's identity and ends with the token's `exp` at the latest.
Signing out forgets the session in this process.

A cookie is never a reason to skip the Origin check (app.py): browsers attach it by
themselves, also to requests another site makes them send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courtyard_sdk.identity import Identity

if TYPE_CHECKING:
    from .keys import KeyInfo, KeyStore

log = logging.getLogger("courtyard.sessions")

COOKIE = "courtyard_session"
SECRET_FILE = "session.secret"
_VERSION = "v1"


@dataclass(frozen=True)
class Session:
    """A verified session cookie's content.

    :ivar id: random, unique per sign-in.
    :ivar kind: `key` (checked against the key on each use) or `token` (a JWT's identity).
    :ivar subject: the key's id, or the token's subject.
    :ivar expires: seconds since the epoch.
    """

    id: str
    kind: str
    subject: str
    expires: float
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    tenant: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        lifetime: float,
        keys: KeyStore,
        key_identity: Callable[[KeyInfo], Identity],
    ) -> None:
        """:param lifetime: seconds a session lasts at most.
        :param key_identity: the identity of a key's holder (`Auth.key_identity`)."""
        self.path = data_dir / SECRET_FILE
        self.lifetime = lifetime
        self.keys = keys
        self.key_identity = key_identity
        self._secret: bytes | None = None
        self._ended: dict[str, float] = {}  # signed-out session id -> its expiry

    # The secret ----------------------------------------------------------------------

    def share(self, secret: bytes) -> None:
        """Sign with `secret`, the one the instances sharing a database keep there."""
        self._secret = secret

    def secret(self) -> bytes:
        """The signing secret, read (or made, readable by this user only) on first use."""
        if self._secret is None:
            try:
                self._secret = self.path.read_bytes()
            except FileNotFoundError:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fresh = secrets.token_bytes(32)
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:  # another process made it meanwhile
                    self._secret = self.path.read_bytes()
                else:
                    with os.fdopen(fd, "wb") as out:
                        out.write(fresh)
                    self._secret = fresh
            if len(self._secret) < 32:
                raise ValueError(f"{self.path}: a session secret is 32 bytes or more")
        return self._secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret(), payload.encode(), hashlib.sha256).digest())

    # Issuing -------------------------------------------------------------------------

    def issue(self, identity: Identity, not_after: float | None = None) -> tuple[str, Session]:
        """A cookie value for a verified key or token identity, and what it holds.

        :param not_after: when the credential itself ends (a key's expiry, a JWT's `exp`).
        :raises ValueError: for any other kind of identity.
        """
        if identity.kind not in ("key", "token"):
            raise ValueError(f"a {identity.kind} identity cannot open a session")
        expires = time.time() + self.lifetime
        if not_after is not None:
            expires = min(expires, not_after)
        session = Session(
            id=secrets.token_urlsafe(16),
            kind=identity.kind,
            subject=identity.subject,
            expires=round(expires, 3),
            # A key's roles are read from the key at each use; a token's are carried.
            roles=tuple(sorted(identity.roles)) if identity.kind == "token" else (),
            permissions=tuple(sorted(identity.permissions)) if identity.kind == "token" else (),
            tenant=identity.tenant_id if identity.kind == "token" else None,
        )
        body = {
            "sid": session.id,
            "kind": session.kind,
            "sub": session.subject,
            "exp": session.expires,
            "roles": list(session.roles),
            "perms": list(session.permissions),
            "tenant": session.tenant,
        }
        payload = f"{_VERSION}.{_b64(json.dumps(body, separators=(',', ':')).encode())}"
        return f"{payload}.{self._sign(payload)}", session

    # Checking ------------------------------------------------------------------------

    def read(self, cookie: str) -> Session | None:
        """The session a cookie holds, when its signature is good and it has not ended."""
        version, _, rest = cookie.partition(".")
        encoded, _, signature = rest.partition(".")
        if version != _VERSION or not encoded or not signature or len(cookie) > 4096:
            return None
        if not hmac.compare_digest(signature, self._sign(f"{version}.{encoded}")):
            return None
        try:
            body: dict[str, Any] = json.loads(_unb64(encoded))
            session = Session(
                id=str(body["sid"]),
                kind=str(body["kind"]),
                subject=str(body["sub"]),
                expires=float(body["exp"]),
                roles=tuple(body.get("roles") or ()),
                permissions=tuple(body.get("perms") or ()),
                tenant=body.get("tenant"),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= time.time() or session.id in self._ended:
            return None
        return session

    async def identify(self, cookie: str) -> tuple[Identity, Session] | None:
        """The identity of a session cookie, or None when it is no longer good (a bad
        signature, expired, signed out, or its key revoked or expired).

        :raises Exception: when the key cannot be read (the database is down).
        """
        session = self.read(cookie)
        if session is None:
            return None
        if session.kind == "token":
            identity = Identity(
                subject=session.subject,
                kind="token",
                tenant_id=session.tenant,
                roles=frozenset(session.roles),
                permissions=frozenset(session.permissions),
            )
            return identity, session
        info = await self.keys.get(session.subject)
        if info is None or info.status() != "active":
            return None
        return self.key_identity(info), session

    def end(self, session: Session) -> None:
        """Forget a session (signing out): this process refuses its cookie from now on."""
        now = time.time()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        self._ended[session.id] = session.expires
