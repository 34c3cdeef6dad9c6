"""Package names: `[@scope/]name`, npm style, safe to use as folder names."""

from __future__ import annotations

import re

# npm-style: lowercase letters, digits, '-', '.', '_'; a part never starts with '.' or '_'.
_PART = r"[a-z0-9][a-z0-9._-]*"
NAME_RE = re.compile(rf"^(?:@{_PART}/)?{_PART}\Z")
MAX_NAME_LENGTH = 214  # npm's limit


def is_valid_name(name: str) -> bool:
    """Tell whether `name` is a valid `[@scope/]name` package name."""
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.match(name) is not None and ".." not in name


def slug(name: str) -> str:
    """Return an identifier-safe form of a package name (`@acme/hello-x` -> `acme__hello_x`)."""
    return re.sub(r"[^0-9a-zA-Z_]", "_", name.lstrip("@").replace("/", "__"))
