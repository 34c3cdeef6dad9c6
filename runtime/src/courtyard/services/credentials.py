"""Plugin credentials: the secrets a plugin's `[[credentials]]` declare (such as the
queues plugin's `RUNQY_API_KEY`), accepted by the auth service like API keys.

Each generation collects those of its loaded plugins: the secret comes from the
environment variable `env`, else from the plugin setting `setting` as the operator set it
in `[plugins."<name>"]` (never from a default in the plugin's own manifest, which anyone
who has the plugin can read). A credential whose secret is unset or empty is off.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from courtyard_sdk import Manifest, SettingsError
from courtyard_sdk.identity import Identity

from .roles import Roles

log = logging.getLogger("courtyard.auth")
SHORT_SECRET = 16  # characters; shorter secrets are accepted with a warning


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class PluginCredential:
    """One active credential: its owner, the digest of its secret and who holds it."""

    plugin: str
    name: str
    digest: bytes
    identity: Identity


class CredentialSet:
    """The active plugin credentials of one generation."""

    def __init__(self, credentials: Iterable[PluginCredential] = ()) -> None:
        self.credentials = tuple(credentials)

    def __bool__(self) -> bool:
        return bool(self.credentials)

    def __len__(self) -> int:
        return len(self.credentials)

    def match(self, secret: str) -> Identity | None:
        """The identity of the credentials whose secret is `secret`, if any.

        Several plugins may declare the same secret (the seed's `RUNQY_API_KEY` serves the
        queues and the vaults plugins): its holder gets the union of their roles and
        permissions, provided they name the same tenant (else the secret is refused).
        Digests are compared in constant time, and with every credential, so that the time
        taken says nothing about which one (or how much of one) matched.
        """
        digest = _digest(secret)
        found = [c.identity for c in self.credentials if hmac.compare_digest(c.digest, digest)]
        if len(found) <= 1:
            return found[0] if found else None
        if len({i.tenant_id for i in found}) > 1:
            # Which tenant would the caller act for? Refuse rather than guess.
            log.error(
                "one secret is the credential of several tenants (%s): refused",
                ", ".join(i.subject for i in found),
            )
            return None
        return Identity(
            subject=" + ".join(i.subject for i in found),
            kind="credential",
            tenant_id=found[0].tenant_id,
            roles=frozenset().union(*(i.roles for i in found)),
            permissions=frozenset().union(*(i.permissions for i in found)),
        )

    def only(self, plugins: Iterable[str]) -> CredentialSet:
        """The credentials of `plugins` only (those still loaded)."""
        keep = set(plugins)
        return CredentialSet(c for c in self.credentials if c.plugin in keep)


NO_CREDENTIALS = CredentialSet()


def collect(
    plugin: str,
    manifest: Manifest,
    operator_settings: Mapping[str, object],
    roles: Roles,
    environ: Mapping[str, str],
) -> list[PluginCredential]:
    """The active credentials `plugin` declares.

    :raises SettingsError: a credential names a role the runtime does not know, or its
        setting holds something other than a string.
    """
    found = []
    for spec in manifest.credentials:
        unknown = [role for role in spec.roles if role not in roles]
        if unknown:
            raise SettingsError(
                f"credential {spec.name}: unknown role {unknown[0]!r} "
                f"(known: {', '.join(roles.names)})"
            )
        secret: object = environ.get(spec.env) if spec.env else None
        source = f"environment variable {spec.env}"
        if not secret and spec.setting is not None:
            secret = operator_settings.get(spec.setting)
            source = f"setting {spec.setting}"
            if secret is not None and not isinstance(secret, str):
                raise SettingsError(f"credential {spec.name}: setting {spec.setting} is no string")
        if not secret:
            continue
        assert isinstance(secret, str)
        if len(secret) < SHORT_SECRET:
            log.warning(
                "%s | credential %s: the secret from %s is shorter than %d characters",
                plugin,
                spec.name,
                source,
                SHORT_SECRET,
            )
        identity = Identity(
            subject=f"{plugin}:{spec.name}",
            kind="credential",
            tenant_id=spec.tenant,
            roles=frozenset(spec.roles),
            permissions=roles.expand(spec.roles, spec.permissions),
        )
        found.append(PluginCredential(plugin, spec.name, _digest(secret), identity))
    return found
