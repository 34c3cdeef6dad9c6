"""Keys and sealing: AES-256-GCM bound to the vault, the key and the flag."""

from __future__ import annotations

import base64

import pytest
from courtyard_vaults.crypto import (
    KeyConfigError,
    Keyring,
    MasterKey,
    Sealed,
    Tampered,
    UnknownKey,
    generate_key,
    key_id_of,
)
from courtyard_vaults.validation import mask


def test_generated_keys_are_32_random_bytes():
    first, second = generate_key(), generate_key()
    assert len(base64.b64decode(first, validate=True)) == 32
    assert first != second


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        base64.b64encode(b"x" * 16).decode(),
        base64.b64encode(b"x" * 33).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # URL-safe, not standard
        base64.b64encode(b"x" * 32).decode().rstrip("="),  # missing padding
    ],
)
def test_invalid_keys_are_refused_without_echoing_them(text):
    with pytest.raises(KeyConfigError) as caught:
        MasterKey.parse(text, "RUNQY_VAULT_MASTER_KEY")
    assert "RUNQY_VAULT_MASTER_KEY" in str(caught.value)
    if text:
        assert text not in str(caught.value)


def test_surrounding_whitespace_is_ignored():
    key = generate_key()
    assert MasterKey.parse(f"  {key}\n", "X").id == MasterKey.parse(key, "X").id


def test_key_ids_tell_keys_apart_and_are_stable():
    raw = base64.b64decode(generate_key())
    assert key_id_of(raw) == key_id_of(raw)
    assert len(key_id_of(raw)) == 16
    assert key_id_of(raw) != key_id_of(base64.b64decode(generate_key()))
    assert raw.hex()[:16] != key_id_of(raw)


def test_a_sealed_value_opens_only_for_its_own_vault_key_and_flag():
    key = MasterKey.parse(generate_key(), "K")
    sealed = key.seal("api-keys", "TOKEN", True, "sk-secret-value")
    assert sealed.key_id == key.id and len(sealed.nonce) == 12
    assert b"sk-secret-value" not in sealed.ciphertext
    assert key.open("api-keys", "TOKEN", True, sealed.nonce, sealed.ciphertext) == (
        "sk-secret-value"
    )
    for vault, name, flag in [
        ("other", "TOKEN", True),
        ("api-keys", "OTHER", True),
        ("api-keys", "TOKEN", False),
    ]:
        with pytest.raises(Tampered) as caught:
            key.open(vault, name, flag, sealed.nonce, sealed.ciphertext)
        assert "sk-secret-value" not in str(caught.value)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(Tampered):
        key.open("api-keys", "TOKEN", True, sealed.nonce, flipped)


def test_sealing_twice_gives_different_ciphertexts():
    key = MasterKey.parse(generate_key(), "K")
    one, two = (key.seal("v", "K", True, "same") for _ in range(2))
    assert one.nonce != two.nonce and one.ciphertext != two.ciphertext


def test_the_keyring_opens_with_the_key_that_sealed():
    old, new = (MasterKey.parse(generate_key(), "K") for _ in range(2))
    sealed_old = old.seal("v", "K", True, "under-old")
    ring = Keyring.of(new, [old])
    assert ring.seal("v", "K", True, "x").key_id == new.id
    assert ring.open("v", "K", True, sealed_old) == "under-old"
    with pytest.raises(UnknownKey) as caught:
        Keyring.of(new).open("v", "K", True, sealed_old)
    assert old.id in str(caught.value)
    bogus = Sealed(new.id, sealed_old.nonce, sealed_old.ciphertext)
    with pytest.raises(Tampered):
        ring.open("v", "K", True, bogus)


def test_keyring_from_the_environment():
    a, b, c = generate_key(), generate_key(), generate_key()
    with pytest.raises(KeyConfigError, match="RUNQY_VAULT_MASTER_KEY"):
        Keyring.from_environ({})
    with pytest.raises(KeyConfigError, match="RUNQY_VAULT_MASTER_KEY"):
        Keyring.from_environ({"RUNQY_VAULT_MASTER_KEY": "   "})
    ring = Keyring.from_environ({"COURTYARD_VAULT_MASTER_KEY": a})
    assert ring.current.id == MasterKey.parse(a, "x").id
    # RUNQY_ wins over COURTYARD_.
    ring = Keyring.from_environ({"RUNQY_VAULT_MASTER_KEY": b, "COURTYARD_VAULT_MASTER_KEY": a})
    assert ring.current.id == MasterKey.parse(b, "x").id
    # An invalid RUNQY_ key is an error, not a fall back to the other variable.
    with pytest.raises(KeyConfigError, match="RUNQY_VAULT_MASTER_KEY is not a valid key"):
        Keyring.from_environ({"RUNQY_VAULT_MASTER_KEY": "bad", "COURTYARD_VAULT_MASTER_KEY": a})
    ring = Keyring.from_environ(
        {"RUNQY_VAULT_MASTER_KEY": a, "COURTYARD_VAULT_READ_KEYS": f"{b}, {c},"}
    )
    assert len(ring.keys) == 3
    with pytest.raises(KeyConfigError, match=r"COURTYARD_VAULT_READ_KEYS \(key 2\)"):
        Keyring.from_environ({"RUNQY_VAULT_MASTER_KEY": a, "COURTYARD_VAULT_READ_KEYS": f"{b},x"})


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("sk-your-key-here", "sk****re"),
        ("hf-actual-decrypted-token", "hf****en"),
        ("12345", "12****45"),
        ("1234", "****"),
        ("123", "****"),
        ("1", "****"),
        ("", "****"),
    ],
)
def test_mask(value, masked):
    assert mask(value) == masked
