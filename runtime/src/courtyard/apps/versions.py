"""Resolving a version range (`latest`, `1.2.0`, `1`, `1.4`, `^1.2`, `~1.2`) with packaging."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

_PARTIAL = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?\Z")


class InvalidRange(ValueError):
    """A range that is none of the accepted forms."""


def _bounds(text: str) -> tuple[int, int, int, int]:
    """`1.4` -> (1, 4, 0, 2): the numbers, zeros filled in, and how many were given."""
    match = _PARTIAL.match(text)
    if not match:
        raise InvalidRange(f"{text!r} is not a version such as 1, 1.4 or 1.4.2")
    given = [g for g in match.groups() if g is not None]
    major, minor, patch = (int(g) for g in [*given, *["0"] * (3 - len(given))])
    return major, minor, patch, len(given)


def specifier(text: str) -> SpecifierSet:
    """The PEP 440 specifier a range stands for (npm's meaning of `^` and `~`).

    - `1` means 1.x.x, `1.4` means 1.4.x;
    - `^1.2.3` allows changes that keep the first non-zero number: >=1.2.3,<2;
      `^0.2.3` is >=0.2.3,<0.3; `^0.0.3` is >=0.0.3,<0.0.4;
    - `~1.2.3` and `~1.2` allow patch changes (<1.3); `~1` allows minor ones (<2).
    """
    if text.startswith("^"):
        major, minor, patch, given = _bounds(text[1:])
        low = f"{major}.{minor}.{patch}"
        if major > 0 or given == 1:
            high = f"{major + 1}"
        elif minor > 0 or given == 2:
            high = f"0.{minor + 1}"
        else:
            high = f"0.0.{patch + 1}"
        return SpecifierSet(f">={low},<{high}")
    if text.startswith("~"):
        major, minor, patch, given = _bounds(text[1:])
        high = f"{major + 1}" if given == 1 else f"{major}.{minor + 1}"
        return SpecifierSet(f">={major}.{minor}.{patch},<{high}")
    major, minor, _, given = _bounds(text)
    if given == 1:
        return SpecifierSet(f">={major},<{major + 1}")
    if given == 2:
        return SpecifierSet(f">={major}.{minor},<{major}.{minor + 1}")
    try:
        return SpecifierSet(f"=={text}")
    except InvalidSpecifier as exc:  # pragma: no cover - _bounds already checked the form
        raise InvalidRange(str(exc)) from None


def resolve(versions: Iterable[str], wanted: str | None) -> str | None:
    """The version of `versions` that `wanted` picks, or None (see `_resolve`); the
    answers are remembered, as every request to an app resolves its range."""
    return _resolve(tuple(versions), wanted)


@functools.lru_cache(maxsize=1024)
def _resolve(versions: tuple[str, ...], wanted: str | None) -> str | None:
    """The version of `versions` that `wanted` picks, or None.

    No range, or `latest`, picks the highest release (a pre-release only if there is
    nothing else). An exact version picks itself, pre-releases included; other ranges never
    pick pre-releases, as npm does.
    """
    parsed: dict[Version, str] = {}
    for text in versions:
        try:
            parsed[Version(text)] = text
        except InvalidVersion:
            continue
    if not parsed:
        return None
    if wanted in (None, "", "latest"):
        releases = [v for v in parsed if not v.is_prerelease] or list(parsed)
        return parsed[max(releases)]
    assert wanted is not None
    try:
        exact = Version(wanted)
    except InvalidVersion:
        exact = None
    if exact is not None and (wanted.count(".") >= 2 or exact.is_prerelease):
        return next((text for v, text in parsed.items() if v == exact), None)
    allowed = specifier(wanted)
    matching = [v for v in parsed if not v.is_prerelease and v in allowed]
    return parsed[max(matching)] if matching else None


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Versions in ascending order (unparseable ones last, by name)."""
    good: list[tuple[Version, str]] = []
    bad: list[str] = []
    for text in versions:
        try:
            good.append((Version(text), text))
        except InvalidVersion:
            bad.append(text)
    return [text for _, text in sorted(good)] + sorted(bad)
