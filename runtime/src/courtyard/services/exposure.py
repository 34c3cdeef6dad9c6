"""The loopback rule: without authentication, serve only on loopback (unless --insecure).

Checked twice by `courtyard serve`. Before binding (`check_before_bind`): a token issuer,
an active key in the database, or a plugin declaring a credential whose secret is set
(read from the manifests, nothing imported) lets it bind, so that an open server never
listens on a public address even for a moment. After the first generation is built
(`Auth.exposure_refusal`, through `Dispatcher.start`): the credentials of the plugins that
actually loaded count, and a runtime left with none refuses to serve.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from courtyard_sdk import StartupError

from ..security import is_loopback_host
from . import tokens
from .auth import exposure_message
from .database import Database
from .keys import MIGRATIONS, OWNER, KeyStore

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("courtyard.auth")


def declares_credential(settings: Settings) -> bool:
    """Whether a discovered plugin declares a credential whose secret is set."""
    from ..discovery import scan

    for candidate in scan(settings):
        if candidate.manifest is None or candidate.shadowed_by is not None:
            continue
        configured = settings.plugins.get(candidate.name, {})
        for spec in candidate.manifest.credentials:
            if (spec.env and os.environ.get(spec.env)) or (
                spec.setting and configured.get(spec.setting)
            ):
                return True
    return False


async def check_before_bind(settings: Settings) -> None:
    """Refuse to serve openly beyond loopback (see the module docstring).

    :raises StartupError: with what to do instead.
    """
    if is_loopback_host(settings.host):
        return
    if settings.insecure:
        log.warning(
            "insecure: serving on %s; until an API key or a token issuer is configured, "
            "anyone who can reach it may do anything",
            settings.host,
        )
        return
    if tokens.configured(settings) or declares_credential(settings):
        return
    database = Database(settings.database)
    try:
        await database.upgrade(OWNER, MIGRATIONS)
        if await KeyStore(database).any_active():
            return
    except Exception as exc:
        raise StartupError(f"cannot read the API keys: {exc}") from None
    finally:
        await database.close()
    raise StartupError(exposure_message(settings.host))
