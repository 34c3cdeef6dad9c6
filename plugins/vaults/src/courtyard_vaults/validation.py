"""What a vault name, an entry key and a value may be, and how a value is masked.

Messages never repeat a value: at most they name the field.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidRequest

VAULT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ENTRY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_DESCRIPTION = 1000
MAX_VALUE_BYTES = 64 * 1024
MASK = "****"


def mask(value: str) -> str:
    """The first two characters, `****`, the last two; four characters or fewer are
    all hidden (`sk-your-key-here` -> `sk****re`, `abcd` -> `****`)."""
    if len(value) <= 4:
        return MASK
    return value[:2] + MASK + value[-2:]


def vault_name(name: Any) -> str:
    """`name` if it is a valid vault name.

    :raises InvalidRequest: otherwise.
    """
    if not isinstance(name, str) or not VAULT_NAME_RE.match(name):
        shown = f" {name!r}" if isinstance(name, str) and len(name) <= 100 else ""
        raise InvalidRequest(
            f"invalid vault name{shown}: use 1 to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or a digit"
        )
    return name


def entry_key(key: Any) -> str:
    """`key` if it is a valid entry key: an environment variable name.

    :raises InvalidRequest: otherwise.
    """
    if not isinstance(key, str) or not ENTRY_KEY_RE.match(key):
        shown = f" {key!r}" if isinstance(key, str) and len(key) <= 150 else ""
        raise InvalidRequest(
            f"invalid key{shown}: an entry key is an environment variable name, 1 to 128 "
            "letters, digits or '_', not starting with a digit (such as OPENAI_API_KEY)"
        )
    return key


def value(text: Any) -> str:
    """`text` if it can be stored and handed to a worker as an environment variable.

    :raises InvalidRequest: otherwise; the message never contains the value.
    """
    if not isinstance(text, str) or not text:
        raise InvalidRequest("value is required: a non-empty string")
    if "\x00" in text:
        raise InvalidRequest("value must not contain NUL characters (it becomes an env var)")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("value must be valid Unicode text (no lone surrogates)") from None
    if size > MAX_VALUE_BYTES:
        raise InvalidRequest(f"value is larger than {MAX_VALUE_BYTES} bytes (UTF-8)")
    return text


def description(text: Any) -> str:
    """`text` (or "" when absent) if it is a short enough string.

    :raises InvalidRequest: otherwise.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InvalidRequest("description must be a string")
    if len(text) > MAX_DESCRIPTION:
        raise InvalidRequest(f"description is longer than {MAX_DESCRIPTION} characters")
    return text


def is_secret(flag: Any) -> bool:
    """`flag` as a boolean, `true` when absent or null.

    :raises InvalidRequest: when it is not a boolean.
    """
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise InvalidRequest("is_secret must be true or false")
    return flag


def body(data: Any) -> dict[str, Any]:
    """The parsed JSON body if it is an object.

    :raises InvalidRequest: otherwise.
    """
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data
