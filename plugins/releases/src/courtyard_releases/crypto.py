"""Secrets at rest and signed evidence.

`Sealer` encrypts what must be read back (target credentials, the tenants' private signing
keys) with Fernet (AES-128-CBC and HMAC-SHA256) under the plugin's key: the setting
`secret_key`, else a key made once in the plugin's data folder (mode 0600). Agent tokens
are only ever compared, so they are stored as SHA-256 hashes. Evidence is canonical JSON
signed with Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_FILE = "sealing.key"
TOKEN_PREFIX = "rla_"


class Sealer:
    """Encrypts and decrypts short secrets with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def load(cls, configured: str | None, data_dir: Path) -> Sealer:
        """The configured key, else the data folder's (made on first use)."""
        if configured:
            return cls(configured.encode())
        path = data_dir / KEY_FILE
        if not path.exists():
            key = Fernet.generate_key()
            # O_EXCL: two instances starting together keep the first key written.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as out:
                    out.write(key)
        return cls(path.read_bytes().strip())

    def seal(self, text: str) -> str:
        """`text` encrypted, as text."""
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str:
        """The text `sealed` holds.

        :raises ValueError: it was not sealed with this key.
        """
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ValueError("sealed with another key") from None


def new_token() -> str:
    """A fresh agent token (shown once)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored: str) -> bool:
    """Whether `token` hashes to `stored`, compared in constant time."""
    return hmac.compare_digest(token_hash(token), stored)


def canonical(document: Any) -> bytes:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def new_signing_key() -> tuple[str, str]:
    """A new Ed25519 key pair: (public key, private key), both raw and base64."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw_public).decode(), base64.b64encode(raw_private).decode()


def sign(private_b64: str, payload: bytes) -> str:
    """The base64 Ed25519 signature of `payload`."""
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    return base64.b64encode(key.sign(payload)).decode()


def verify(public_b64: str, payload: bytes, signature_b64: str) -> bool:
    """Whether `signature_b64` is the key's signature of `payload`."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    try:
        key.verify(base64.b64decode(signature_b64), payload)
    except (InvalidSignature, ValueError):
        return False
    return True
