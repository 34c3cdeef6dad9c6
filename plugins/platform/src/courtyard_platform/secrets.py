"""Secret references resolved at render time, through the vaults plugin.

`secret://vaults/<vault>/<key>` is looked up in the vaults plugin when an environment is
rendered: a missing vault or key, or vaults being unavailable, fails the step (with the
reference in the message, never a value). The value itself is never written: manifests
point to the environment's Secret, and carry an HMAC of the resolved values (keyed with a
random key kept in the plugin's data folder) so that a changed secret changes the pod
template. `secret://delinea/<id>` references are the original's; they are left to the
cluster's own Delinea integration and rendered the same way, without a digest part.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as random
from pathlib import Path
from typing import Any

from .spec import secret_refs
from .steps import StepFailed


def digest_key(folder: Path) -> bytes:
    """The install's digest key (made on first use, readable by the owner only)."""
    path = folder / "secrets-digest.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    key = random.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(key.hex())
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # first writer wins; the others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


async def digests(
    spec: dict[str, Any], envs: list[str], vaults: Any, key: bytes
) -> dict[str, str | None]:
    """Per environment of `envs`, the HMAC of its resolved secrets (None: it has none).

    :raises StepFailed: naming the reference that cannot be resolved.
    """
    out: dict[str, str | None] = {}
    refs = secret_refs(spec)
    for env in envs:
        mine = [(name, ref) for where, name, ref in refs if where == env]
        if not mine:
            out[env] = None
            continue
        mac = hmac.new(key, digestmod=hashlib.sha256)
        for name, ref in sorted(mine, key=lambda item: item[0]):
            if ref.provider == "delinea":
                mac.update(f"{name}=delinea:{ref.secret_id}\0".encode())
                continue
            shown = f"secret://vaults/{ref.vault}/{ref.key}"
            if vaults is None:
                raise StepFailed(f"{env}.{name}: {shown} needs the vaults plugin, not loaded")
            try:
                values = await vaults.values([ref.vault])
            except Exception as exc:  # the vaults plugin's errors name the vault, not values
                raise StepFailed(f"{env}.{name}: {shown}: {type(exc).__name__}: {exc}") from None
            if ref.key not in values:
                raise StepFailed(f"{env}.{name}: {shown}: vault {ref.vault!r} has no such key")
            mac.update(f"{name}=".encode() + values[ref.key].encode() + b"\0")
        out[env] = mac.hexdigest()
    return out
