"""The vaults' errors: `ApiError`s, so that a route (the plugin's own, or another
plugin's calling `values`) answers them as `{"error": {"code", "message"}}`.

| Class | Status | Code |
|---|---|---|
| `VaultsDisabled` | 503 | `VAULTS_DISABLED` |
| `InvalidRequest` | 400 | `VALIDATION_ERROR` |
| `VaultNotFound` | 404 | `VAULT_NOT_FOUND` |
| `EntryNotFound` | 404 | `ENTRY_NOT_FOUND` |
| `VaultExists` | 409 | `VAULT_EXISTS` |
| `DecryptionFailed` | 500 | `VAULT_DECRYPTION_FAILED` |
"""

from __future__ import annotations

from courtyard_sdk import ApiError


class VaultsError(ApiError):
    """Base class of every error of the vaults plugin."""


class VaultsDisabled(VaultsError):
    """No valid master key: every vault operation is refused."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, "VAULTS_DISABLED", reason)


class InvalidRequest(VaultsError):
    """A body, a vault name or a key that cannot be accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "VALIDATION_ERROR", message)


class VaultNotFound(VaultsError):
    """One or more vaults do not exist."""

    def __init__(self, *names: str) -> None:
        self.names = names
        listed = ", ".join(repr(n) for n in names)
        super().__init__(
            404,
            "VAULT_NOT_FOUND",
            f"vault {listed} not found" if len(names) == 1 else f"vaults {listed} not found",
        )


class EntryNotFound(VaultsError):
    """The vault has no entry with that key."""

    def __init__(self, vault: str, key: str) -> None:
        super().__init__(404, "ENTRY_NOT_FOUND", f"key {key!r} not found in vault {vault!r}")


class VaultExists(VaultsError):
    """A vault with that name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(409, "VAULT_EXISTS", f"vault {name!r} already exists")


class DecryptionFailed(VaultsError):
    """A stored value cannot be decrypted: tampered with, or under an unknown key."""

    def __init__(self, reason: str) -> None:
        super().__init__(500, "VAULT_DECRYPTION_FAILED", reason)
