"""What a vault name, an entry key and a value may be, and how a value is masked.

Messages never repeat a value: at most they name the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import InvalidRequest

VAULT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ENTRY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_DESCRIPTION = 1000
MAX_VALUE_BYTES = 64 * 1024
MASK = "****"
MAX_DEPTH = 32  # nesting of a body: a vault body is flat, so anything deeper is no body of ours


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
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        raise InvalidRequest("description must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "description must be valid Unicode text (no lone surrogates)"
        ) from None
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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e309 parses as inf
        raise ValueError("a number is too large")
    return number


def parse_body(raw: bytes, mimetype: str = "") -> dict[str, Any]:
    """A request body as a JSON object: the one way the vault routes read a body.

    Any Content-Type but `text/plain` (what a form on another site can post without a
    preflight); UTF-8 only; no `NaN`, `Infinity` or number too large for a float; at most
    `MAX_DEPTH` levels of nesting; an object at the top. Never raises anything but
    `InvalidRequest`, whatever the bytes (a body nested 100 000 levels deep included),
    and never echoes the body.

    :raises InvalidRequest: otherwise.
    """
    if mimetype == "text/plain":
        raise InvalidRequest("send the body as application/json, not text/plain")
    if not raw.strip():
        raise InvalidRequest("the request body must be a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequest("the request body nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # ours, or an integer past Python's digit limit
        raise InvalidRequest(f"the request body is not usable JSON: {exc}") from None
    if _nests_deeper(data, MAX_DEPTH):
        raise InvalidRequest(f"the request body nests deeper than {MAX_DEPTH} levels")
    return body(data)


def _nests_deeper(value: Any, limit: int) -> bool:
    # Iterative: no body can exhaust the stack here.
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
