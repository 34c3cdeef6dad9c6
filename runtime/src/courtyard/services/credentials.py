"""Plugin credentials: the secrets a plugin's `[[credentials]]` declare (such as the
queues plugin's `RUNQY_API_KEY`), accepted by the auth service like API keys.

Each generation collects those of its loaded plugins: the secret comes from the
environment variable `env`, else from the plugin setting `setting` as the operator set it
in `[plugins."<name>"]` (never from a default in the plugin's own manifest, which anyone
who has the plugin can read). A credential whose secret is unset or empty is off; one
shorter than `SHORT_SECRET` characters is refused (a setting error naming where it came
from) unless the runtime runs with `insecure`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from courtyard_sdk import Manifest, SettingsError
from courtyard_sdk.identity import Identity
from courtyard_sdk.manifest import Credential

from .. import redaction
from .roles import Roles

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("courtyard.auth")
# Characters. A plugin secret is a password anyone who can reach the server may guess at:
# shorter ones are refused unless `insecure` (then accepted with a warning).
SHORT_SECRET = 16


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


def _secret_of(
    spec: Credential, operator_settings: Mapping[str, object], environ: Mapping[str, str]
) -> tuple[object, str]:
    """A credential's secret (None or empty when off) and where it came from."""
    if spec.env and (secret := environ.get(spec.env)):
        return secret, f"environment variable {spec.env}"
    if spec.setting is not None:
        return operator_settings.get(spec.setting), f"setting {spec.setting}"
    return None, f"environment variable {spec.env}"


def _too_short(spec: Credential, source: str, length: int) -> str:
    return (
        f"credential {spec.name}: the secret in {source} is {length} characters long; "
        f"use at least {SHORT_SECRET} (or run with insecure)"
    )


def collect(
    plugin: str,
    manifest: Manifest,
    operator_settings: Mapping[str, object],
    roles: Roles,
    environ: Mapping[str, str],
    insecure: bool = False,
) -> list[PluginCredential]:
    """The active credentials `plugin` declares.

    :param insecure: accept secrets shorter than `SHORT_SECRET` (with a warning).
    :raises SettingsError: a credential names a role the runtime does not know, its
        setting holds something other than a string, or its secret is too short.
    """
    found = []
    for spec in manifest.credentials:
        unknown = [role for role in spec.roles if role not in roles]
        if unknown:
            raise SettingsError(
                f"credential {spec.name}: unknown role {unknown[0]!r} "
                f"(known: {', '.join(roles.names)})"
            )
        secret, source = _secret_of(spec, operator_settings, environ)
        if secret is not None and not isinstance(secret, str):
            raise SettingsError(f"credential {spec.name}: {source} is no string")
        if not secret:
            continue
        assert isinstance(secret, str)
        if len(secret) < SHORT_SECRET:
            if not insecure:
                raise SettingsError(_too_short(spec, source, len(secret)))
            log.warning("%s | %s", plugin, _too_short(spec, source, len(secret)))
        redaction.remember([secret])  # never echoed back, should a client send it in a URL
        identity = Identity(
            subject=f"{plugin}:{spec.name}",
            kind="credential",
            tenant_id=spec.tenant,
            roles=frozenset(spec.roles),
            permissions=roles.expand(spec.roles, spec.permissions),
        )
        found.append(PluginCredential(plugin, spec.name, _digest(secret), identity))
    return found


def check_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to start with a plugin secret shorter than `SHORT_SECRET` characters (unless
    `insecure`), before anything is served: read from the manifests of the plugins that
    would load, nothing imported.

    :raises SettingsError: naming the plugin, the credential and the variable or setting.
    """
    if settings.insecure:
        return
    from ..discovery import scan  # discovery imports the settings, which import services

    environ = os.environ if environ is None else environ
    for candidate in scan(settings):
        manifest = candidate.manifest
        if manifest is None or candidate.shadowed_by is not None:
            continue
        configured = settings.plugins.get(candidate.name, {})
        only = settings.only_plugins
        if configured.get("enabled", manifest.enabled) is False or (
            only is not None and candidate.name not in only
        ):
            continue
        for spec in manifest.credentials:
            secret, source = _secret_of(spec, configured, environ)
            if isinstance(secret, str) and 0 < len(secret) < SHORT_SECRET:
                raise SettingsError(
                    f"plugin {candidate.name}: {_too_short(spec, source, len(secret))}"
                )
