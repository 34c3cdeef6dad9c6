"""AES-256-GCM under master keys read from the environment.

Every value is sealed on its own: a fresh 96-bit random nonce, and associated data made
of the vault's name, the entry's key and its `is_secret` flag, so that a ciphertext
copied to another row (or a flipped flag) fails to decrypt instead of yielding a value.
Each sealed value records the id of the key that sealed it, a fingerprint that reveals
nothing about the key, so that values under an older key stay readable while a rotation
moves them to the new one.

Nothing here logs, and no message carries a key or a value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_VARS = ("RUNQY_VAULT_MASTER_KEY", "COURTYARD_VAULT_MASTER_KEY")
"""Where the master key is read from, first set (and not empty) wins."""
READ_KEYS_VAR = "COURTYARD_VAULT_READ_KEYS"
"""More keys, comma-separated, used only to decrypt (during a key rotation)."""
KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_PREFIX = b"courtyard-vaults/1\x00"
_KEY_ID_LABEL = b"courtyard-vaults key id"


class KeyConfigError(Exception):
    """No usable master key: the message says which variable to set, never its value."""


class DecryptionError(Exception):
    """A stored value cannot be decrypted; the message names no value and no key."""


class UnknownKey(DecryptionError):
    """The value was sealed under a key that is not among the known keys."""


class Tampered(DecryptionError):
    """The ciphertext, its nonce or its associated data was changed."""


def generate_key() -> str:
    """A new random master key, as the standard base64 the variables expect."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id_of(raw: bytes) -> str:
    """A key's id: 16 hex digits of an HMAC of a fixed label under the key.

    It tells keys apart and cannot be turned back into the key.
    """
    return hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def associated_data(vault: str, key: str, is_secret: bool) -> bytes:
    """What a value is bound to: its vault, its key and its `is_secret` flag."""
    return _AAD_PREFIX + json.dumps([vault, key, is_secret], separators=(",", ":")).encode()


@dataclass(frozen=True)
class Sealed:
    """One encrypted value as stored: the key's id, the nonce and the ciphertext (with
    GCM's 16-byte tag at its end)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class MasterKey:
    """One 256-bit AES-GCM key and its id."""

    id: str
    _aead: AESGCM = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str, source: str) -> MasterKey:
        """Read a key written as standard base64 of 32 bytes.

        :param source: where the text came from (a variable's name), for the message.
        :raises KeyConfigError: when it is not 32 bytes of standard base64.
        """
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != KEY_BYTES:
            raise KeyConfigError(
                f"{source} is not a valid key: it must be {KEY_BYTES} random bytes in "
                "standard base64 (44 characters), such as the output of "
                "`courtyard vaults generate-key`"
            )
        return cls(key_id_of(raw), AESGCM(raw))

    def seal(self, vault: str, key: str, is_secret: bool, value: str) -> Sealed:
        """Encrypt `value` for the entry `key` of `vault`."""
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(vault, key, is_secret)
        return Sealed(self.id, nonce, self._aead.encrypt(nonce, value.encode("utf-8"), aad))

    def open(self, vault: str, key: str, is_secret: bool, nonce: bytes, ciphertext: bytes) -> str:
        """Decrypt a value sealed by `seal` for the same vault, key and flag.

        :raises Tampered: when the ciphertext, nonce or associated data do not match.
        """
        try:
            plain = self._aead.decrypt(nonce, ciphertext, associated_data(vault, key, is_secret))
        except (InvalidTag, ValueError):
            raise Tampered(
                f"entry {key} of vault {vault!r} failed authentication: its stored "
                "ciphertext was altered or moved from another entry"
            ) from None
        return plain.decode("utf-8")


@dataclass(frozen=True)
class Keyring:
    """The current master key (which seals new values) and every key that may open one."""

    current: MasterKey
    keys: Mapping[str, MasterKey]

    @classmethod
    def of(cls, current: MasterKey, others: Iterable[MasterKey] = ()) -> Keyring:
        """A keyring sealing with `current` and opening with it and `others`."""
        keys = {key.id: key for key in others}
        keys[current.id] = current
        return cls(current, keys)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Keyring:
        """The master key from `RUNQY_VAULT_MASTER_KEY` (else
        `COURTYARD_VAULT_MASTER_KEY`), and the keys of `COURTYARD_VAULT_READ_KEYS`.

        :raises KeyConfigError: when no master key is set, or a key is not valid.
        """
        current = master_key_from(environ)
        if current is None:
            raise KeyConfigError(
                f"vaults are disabled: set {MASTER_KEY_VARS[0]} (or {MASTER_KEY_VARS[1]}) to "
                f"{KEY_BYTES} random bytes in standard base64, such as the output of "
                "`courtyard vaults generate-key`"
            )
        return cls.of(current, read_keys_from(environ))

    def with_current(self, current: MasterKey) -> Keyring:
        """This keyring sealing with `current` instead, still opening with every key."""
        return Keyring.of(current, self.keys.values())

    def seal(self, vault: str, key: str, is_secret: bool, value: str) -> Sealed:
        """Encrypt under the current master key."""
        return self.current.seal(vault, key, is_secret, value)

    def open(self, vault: str, key: str, is_secret: bool, sealed: Sealed) -> str:
        """Decrypt with the key that sealed the value.

        :raises UnknownKey: when that key is not in the ring.
        :raises Tampered: when the value does not authenticate.
        """
        master = self.keys.get(sealed.key_id)
        if master is None:
            raise UnknownKey(
                f"entry {key} of vault {vault!r} was encrypted under key {sealed.key_id}, "
                f"which is neither the master key nor one of {READ_KEYS_VAR}"
            )
        return master.open(vault, key, is_secret, sealed.nonce, sealed.ciphertext)


def master_key_from(environ: Mapping[str, str]) -> MasterKey | None:
    """The master key from the first of `MASTER_KEY_VARS` that is set, or None.

    :raises KeyConfigError: when that variable does not hold a valid key (the other one is
        not tried then: which key is meant would be ambiguous).
    """
    for name in MASTER_KEY_VARS:
        text = environ.get(name, "").strip()
        if text:
            return MasterKey.parse(text, name)
    return None


def read_keys_from(environ: Mapping[str, str]) -> list[MasterKey]:
    """The keys of `COURTYARD_VAULT_READ_KEYS` (comma-separated; none when unset).

    :raises KeyConfigError: naming the position of a key that is not valid.
    """
    texts = [t.strip() for t in environ.get(READ_KEYS_VAR, "").split(",")]
    return [
        MasterKey.parse(text, f"{READ_KEYS_VAR} (key {position})")
        for position, text in enumerate(texts, 1)
        if text
    ]
