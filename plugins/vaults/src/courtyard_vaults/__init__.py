"""courtyard-vaults: encrypted secrets for Courtyard (runqy's vault endpoints).

Values are sealed with AES-256-GCM under a master key from `RUNQY_VAULT_MASTER_KEY`
(`crypto.py`), stored through the runtime's database (`models.py`, `migrations/`), served
at `/api/vaults` (`api.py`) and on a page at `/vaults/` (`page.py`), and handed to other
plugins by the `Vaults` service (`service.py`): `await vaults.values(["api-keys"])`.
"""

from .crypto import Keyring, MasterKey, generate_key
from .errors import (
    DecryptionFailed,
    EntryNotFound,
    InvalidRequest,
    VaultExists,
    VaultNotFound,
    VaultsDisabled,
    VaultsError,
)
from .service import Vaults

__all__ = [
    "DecryptionFailed",
    "EntryNotFound",
    "InvalidRequest",
    "Keyring",
    "MasterKey",
    "VaultExists",
    "VaultNotFound",
    "Vaults",
    "VaultsDisabled",
    "VaultsError",
    "generate_key",
]
