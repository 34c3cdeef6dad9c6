"""JWT bearer tokens, verified with joserfc (authlib's JOSE library).

Keys: `jwt_secret` for the HMAC algorithms (HS256, ...), a JWKS for the others (RS256,
ES256, ...): `jwks_file`, re-read when it changes, or `jwks_url`, fetched at start, again
once the keys are an hour old, and at once (but at most every `refetch_interval` seconds)
when a token names a key id the set does not hold, so that an issuer's key rotation needs
no restart. The token's `alg` picks the kind of key: an HMAC token is only ever checked
with the secret and a public-key token only with the JWKS, so a token "signed" with a
public key as an HMAC secret cannot pass. `none` is never accepted.

Claims: `exp` is required; `nbf` and `iat` are checked when present; `iss` and `aud` are
required and must match when `jwt_issuer` and `jwt_audience` are set; all with
`jwt_leeway` seconds of allowance for clock skew. The caller is `sub`, else `user_id`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from courtyard_sdk import ApiError, SettingsError

from ..security import is_loopback_host

# joserfc (with cryptography, about 9 MiB resident) is imported by the functions that use
# it, so a runtime that accepts no JWT never loads it.
if TYPE_CHECKING:
    import httpx
    from joserfc.jwk import Key, OctKey

    from ..settings import Settings

log = logging.getLogger("courtyard.auth")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
KEY_TYPES = {  # the JWK `kty` each public-key algorithm needs
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512", "ES256K"), "EC"),
    **dict.fromkeys(("EdDSA", "Ed25519", "Ed448"), "OKP"),
}
SUPPORTED = HMAC_ALGORITHMS | KEY_TYPES.keys()
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HMAC key at least as long as the hash
JWKS_MAX_AGE = 3600.0  # seconds before fetched keys are fetched again
JWKS_MAX_BYTES = 1024 * 1024
FETCH_TIMEOUT = 5.0


def invalid(message: str) -> ApiError:
    """A 401 `INVALID_TOKEN` answer."""
    return ApiError(401, "INVALID_TOKEN", message)


def configured(settings: Settings) -> bool:
    """Whether `settings` configure a token issuer (a secret or a JWKS)."""
    return bool(settings.jwt_secret or settings.jwks_file or settings.jwks_url)


@dataclass(frozen=True)
class Caller:
    """Who a verified token says is calling."""

    subject: str
    tenant: str | None
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    claims: Mapping[str, Any]


class TokenVerifier:
    """Verifies JWT bearer tokens (see the module docstring)."""

    refetch_interval = 30.0  # seconds between two fetches of jwks_url for unknown key ids

    def __init__(self, settings: Settings) -> None:
        """Check the JWT settings (no I/O).

        :raises SettingsError: for an unusable combination, naming the setting.
        """
        from joserfc.jws import JWSRegistry

        self.algorithms = _algorithms(settings.jwt_algorithms)
        self.secret = _secret(settings.jwt_secret, self.algorithms)
        if settings.jwks_file and settings.jwks_url:
            raise SettingsError("set jwks_file or jwks_url, not both")
        self.jwks_file = settings.jwks_file
        self.jwks_url = _jwks_url(settings.jwks_url)
        if (self.jwks_file or self.jwks_url) and not self.algorithms - HMAC_ALGORITHMS:
            raise SettingsError(
                "a JWKS is set, but jwt_algorithms allows no public-key algorithm (RS256, ...)"
            )
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway
        # Unknown header parameters are ignored, as RFC 7515 says (`crit` ones still count).
        self._registries = {
            alg: JWSRegistry(algorithms=[alg], strict_check_header=False) for alg in self.algorithms
        }
        self._keys: dict[str, Key] = {}  # kid -> key, from the JWKS
        self._loaded_at = -math.inf  # when the JWKS was last read or fetched
        self._attempted_at = -math.inf  # when a fetch was last tried
        self._file_state: tuple[int, int] | None = None
        self._file_checked_at = -math.inf
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the JWKS file (a bad one refuses the start) or fetch the JWKS URL (a
        failure is logged: tokens answer 503 until the keys can be fetched)."""
        from joserfc.errors import JoseError

        if self.jwks_file is not None:
            try:
                self._read_file()
            except (OSError, ValueError, JoseError) as exc:
                raise SettingsError(f"jwks_file {self.jwks_file}: {exc}") from None
        elif self.jwks_url is not None:
            async with self._lock:
                await self._fetch()

    async def close(self) -> None:
        """Close the HTTP client of `jwks_url`."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # Verifying ---------------------------------------------------------------------------

    async def verify(self, token: str) -> Caller:
        """The caller a valid token names.

        :raises ApiError: 401 `INVALID_TOKEN` or `TOKEN_EXPIRED`; 503 `AUTH_UNAVAILABLE`
            while the JWKS URL cannot be fetched and no keys are known.
        """
        from joserfc import jws, jwt
        from joserfc.errors import BadSignatureError, JoseError

        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise invalid("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise invalid(f"token algorithm {alg!r} is not accepted")
        key = await self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(token, key, registry=self._registries[alg]).claims
        except BadSignatureError:
            raise invalid("bad token signature") from None
        except (JoseError, ValueError) as exc:
            raise invalid(f"token refused: {_describe(exc)}") from None
        self._check_claims(claims)
        return _caller(claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        from joserfc import jwt
        from joserfc.errors import ExpiredTokenError, InvalidClaimError, MissingClaimError

        options: dict[str, Any] = {"exp": {"essential": True}}
        if self.issuer is not None:
            options["iss"] = {"essential": True, "value": self.issuer}
        if self.audience is not None:
            options["aud"] = {"essential": True, "value": self.audience}
        registry = jwt.JWTClaimsRegistry(leeway=math.ceil(self.leeway), **options)
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise ApiError(401, "TOKEN_EXPIRED", "token has expired") from None
        except MissingClaimError as exc:
            raise invalid(f"token lacks claim {exc.description}") from None
        except InvalidClaimError as exc:
            raise invalid(_describe(exc)) from None

    async def _key_for(self, alg: str, kid: object) -> Key:
        if alg in HMAC_ALGORITHMS:
            if self.secret is None:
                raise invalid(f"{alg} tokens are not accepted: no jwt_secret is set")
            return self.secret
        if self.jwks_file is None and self.jwks_url is None:
            raise invalid(f"{alg} tokens are not accepted: no jwks_file or jwks_url is set")
        if kid is not None and not isinstance(kid, str):
            raise invalid("token kid must be a string")
        await self._refresh(kid)
        key = self._pick(alg, kid)
        if key is None and kid is not None and kid not in self._keys:
            await self._refresh(kid, unknown=True)
            key = self._pick(alg, kid)
        if key is None:
            if not self._keys and self.jwks_url is not None:
                raise ApiError(
                    503, "AUTH_UNAVAILABLE", "the token issuer's keys cannot be fetched now"
                )
            raise invalid(
                f"no {KEY_TYPES[alg]} key with kid {kid!r} in the JWKS"
                if kid is not None
                else "token has no kid and the JWKS holds several keys"
            )
        return key

    def _pick(self, alg: str, kid: str | None) -> Key | None:
        wanted = KEY_TYPES[alg]
        if kid is not None:
            key = self._keys.get(kid)
            return key if key is not None and key.key_type == wanted else None
        fitting = [k for k in self._keys.values() if k.key_type == wanted]
        return fitting[0] if len(fitting) == 1 else None

    # Keys --------------------------------------------------------------------------------

    async def _refresh(self, kid: str | None, unknown: bool = False) -> None:
        """Bring the JWKS up to date when it may have changed."""
        from joserfc.errors import JoseError

        if self.jwks_file is not None:
            # A stat is cheap: look at most once a second, or now for an unknown key id.
            if unknown or time.monotonic() - self._file_checked_at >= 1.0:
                try:
                    self._read_file()
                except (OSError, ValueError, JoseError) as exc:  # keep the keys we have
                    log.error(
                        "jwks_file %s: %s (keeping the keys read before)", self.jwks_file, exc
                    )
            return
        moment = time.monotonic()
        stale = moment - self._loaded_at >= JWKS_MAX_AGE
        if not (stale or unknown) or moment - self._attempted_at < self.refetch_interval:
            return
        async with self._lock:
            if kid is not None and kid in self._keys and not stale:
                return  # another request fetched it meanwhile
            if time.monotonic() - self._attempted_at < self.refetch_interval:
                return
            await self._fetch()

    def _read_file(self) -> None:
        assert self.jwks_file is not None
        self._file_checked_at = time.monotonic()
        stat = self.jwks_file.stat()
        state = (stat.st_mtime_ns, stat.st_size)
        if state == self._file_state:
            return
        self._keys = _key_table(json.loads(Path(self.jwks_file).read_bytes()))
        self._file_state = state
        self._loaded_at = time.monotonic()
        log.info("read %d key(s) from jwks_file %s", len(self._keys), self.jwks_file)

    async def _fetch(self) -> None:
        """Fetch `jwks_url` (hold the lock); a failure keeps the keys known so far."""
        import httpx
        from joserfc.errors import JoseError

        assert self.jwks_url is not None
        self._attempted_at = time.monotonic()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        try:
            async with self._client.stream("GET", self.jwks_url) as answer:
                if answer.status_code != 200:
                    raise ValueError(f"answered HTTP {answer.status_code}")
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise ValueError(f"answer larger than {JWKS_MAX_BYTES} bytes")
            keys = _key_table(json.loads(body))
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.error("jwks_url %s: %s", self.jwks_url, _describe(exc))
            return
        self._keys = keys
        self._loaded_at = time.monotonic()
        log.info("fetched %d key(s) from jwks_url %s", len(keys), self.jwks_url)


def _algorithms(names: tuple[str, ...]) -> frozenset[str]:
    if not names:
        raise SettingsError("jwt_algorithms: name at least one algorithm, such as RS256")
    for name in names:
        if name.lower() == "none":
            raise SettingsError("jwt_algorithms: 'none' (unsigned tokens) is never accepted")
        if name not in SUPPORTED:
            raise SettingsError(
                f"jwt_algorithms: unsupported algorithm {name!r} "
                f"(supported: {', '.join(sorted(SUPPORTED))})"
            )
    return frozenset(names)


def _secret(secret: str | None, algorithms: frozenset[str]) -> OctKey | None:
    from joserfc.jwk import OctKey

    if secret is None:
        return None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"jwt_secret: use at least {MIN_SECRET_BYTES} bytes")
    if not algorithms & HMAC_ALGORITHMS:
        raise SettingsError("jwt_secret is set, but jwt_algorithms allows no HS algorithm")
    return OctKey.import_key(secret)


def _jwks_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SettingsError(f"jwks_url: {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError("jwks_url: use https (plain http only to a loopback address)")
    return url


def _key_table(data: Any) -> dict[str, Key]:
    """The signing keys of a JWKS document, by key id."""
    from joserfc.jwk import KeySet

    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JWKS: expected {"keys": [...]}')
    signing = [k for k in data["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    keys = KeySet.import_key_set({"keys": signing}).keys
    return {key.kid: key for key in keys if key.kid is not None}


def _strings(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A claim holding a list of strings, or one space-separated string."""
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise invalid(f"token claim {name} must be a list of strings")


def _caller(claims: Mapping[str, Any]) -> Caller:
    subject = claims.get("sub", claims.get("user_id"))
    if isinstance(subject, int) and not isinstance(subject, bool):
        subject = str(subject)
    if not isinstance(subject, str) or not subject:
        raise invalid("token names no caller (sub or user_id)")
    tenant = claims.get("tenant_id")
    if isinstance(tenant, int) and not isinstance(tenant, bool):
        tenant = str(tenant)
    if tenant is not None and (not isinstance(tenant, str) or not tenant or len(tenant) > 128):
        raise invalid("token claim tenant_id must be a string of 1 to 128 characters")
    return Caller(
        subject=subject,
        tenant=tenant,
        roles=_strings(claims, "roles"),
        permissions=_strings(claims, "permissions"),
        claims=claims,
    )


def _describe(exc: Exception) -> str:
    from joserfc.errors import JoseError

    if isinstance(exc, JoseError):
        return exc.description or exc.error
    return str(exc) or type(exc).__name__
