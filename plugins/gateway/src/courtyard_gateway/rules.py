"""Rate-limit rules: path patterns, their matcher, and the checks that compile `rules`.

A bad rule raises `ConfigError` naming it (`rules[2] (path "/x"): per must be a positive
number, got 0`). Path patterns of all rules are joined into one regular expression per
HTTP method, so a request that no rule matches costs one dict lookup and one regex match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

KEY_KINDS = ("ip", "identity", "api_key", "header:<Name>", "param:<name>", "global")
RATE_KEYS = {"path", "methods", "limit", "per", "burst", "key", "tiers", "tier", "default_tier"}
BUDGET_KEYS = {"limit", "per", "burst"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TIER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(ValueError):
    """A gateway rule or setting is invalid; the message names it."""


# Paths ----------------------------------------------------------------------------------


def compile_path(pattern: str, group_prefix: str) -> tuple[str, list[str]]:
    """Translate a path pattern into a regex (to be full-matched) and its placeholder names.

    - `{name}` matches one path segment and captures it (for `param:<name>` keys);
    - `*` matches within one segment, `**` across segments, `?` one character;
    - a pattern with none of these is a prefix: `/api/runners` matches `/api/runners`
      and everything below it (`/api/runners/x`), not `/api/runnersx`.

    :raises ValueError: for a pattern that does not start with `/` or has a bad placeholder.
    """
    if not pattern.startswith("/"):
        raise ValueError("must start with /")
    if not any(c in pattern for c in "*?{"):
        base = pattern.rstrip("/")
        return re.escape(base) + r"(?:/.*)?" if base else "/.*", []
    out: list[str] = []
    names: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            m = _PLACEHOLDER.match(pattern, i)
            if not m:
                raise ValueError("a placeholder is {name}, with a letter, digits and _")
            name = m.group(1)
            if name in names:
                raise ValueError(f"placeholder {{{name}}} appears twice")
            names.append(name)
            out.append(f"(?P<{group_prefix}{name}>[^/]+)")
            i = m.end()
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out), names


def parse_paths(value: Any) -> tuple[str, ...]:
    """Check `path`: one pattern, or a non-empty list of them (one rule, one budget).

    :raises ValueError: naming the bad pattern.
    """
    if isinstance(value, str):
        try:
            compile_path(value, "x")
        except ValueError as exc:
            raise ValueError(f"path {exc}") from None
        return (value,)
    if not isinstance(value, list) or not value:
        raise ValueError("path must be a pattern or a non-empty list of patterns")
    for j, pattern in enumerate(value):
        if not isinstance(pattern, str):
            raise ValueError(f"path[{j}] must be a string")
        try:
            compile_path(pattern, "x")
        except ValueError as exc:
            raise ValueError(f'path[{j}] ("{pattern}") {exc}') from None
    return tuple(value)


def rule_label(kind: str, index: int, raw: Any) -> str:
    """How messages name a rule: `rules[2] (path "/x")`, before or after it is checked."""
    path = raw.get("path") if isinstance(raw, Mapping) else None
    if isinstance(path, list) and path and isinstance(path[0], str):
        path = path[0] + (", ..." if len(path) > 1 else "")
    return f'{kind}[{index}] (path "{path}")' if isinstance(path, str) else f"{kind}[{index}]"


def parse_methods(value: Any, default: Iterable[str] | None) -> frozenset[str] | None:
    """Check `methods`: a non-empty list of HTTP methods (`GET` implies `HEAD`).

    :raises ValueError: naming the bad entry.
    """
    if value is None:
        return frozenset(default) if default is not None else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("methods must be a non-empty list of HTTP methods")
    methods = set()
    for method in value:
        if not isinstance(method, str) or not HTTP_TOKEN.match(method):
            raise ValueError(f"methods: {method!r} is not an HTTP method")
        methods.add(method.upper())
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


def check_table(raw: Any, known: set[str], required: tuple[str, ...]) -> None:
    """A rule is a table of known keys, with the required ones.

    :raises ValueError: naming the first unknown or missing key.
    """
    if not isinstance(raw, Mapping):
        raise ValueError("must be a table")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {sorted(known)})")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ValueError(f"{missing[0]} is required")


class RuleMatcher:
    """Finds the first rule matching a method and a path, with one regex per method.

    Each of a rule's paths is one alternative of the regex, named `<group><k>`; its
    placeholders are groups `<group><k>_<name>`.
    """

    def __init__(self, rules: list[Any], group: str) -> None:
        self.rules = rules
        self.group = group
        # Alternative k: (rule, regex, placeholder names), in rule order.
        self._alternatives: list[tuple[Any, str, frozenset[str]]] = []
        for rule in rules:
            for path in rule.paths:
                prefix = f"{group}{len(self._alternatives)}_"
                regex, names = compile_path(path, prefix)
                self._alternatives.append((rule, regex, frozenset(names)))
        self._by_method: dict[str, re.Pattern[str] | None] = {}

    def _pattern(self, method: str) -> re.Pattern[str] | None:
        parts = [
            f"(?P<{self.group}{k}>{regex})"
            for k, (rule, regex, _) in enumerate(self._alternatives)
            if rule.methods is None or method in rule.methods
        ]
        pattern = re.compile("|".join(parts)) if parts else None
        if len(self._by_method) < 64:  # methods are client-chosen: bound the cache
            self._by_method[method] = pattern
        return pattern

    def match(self, method: str, path: str) -> tuple[Any, re.Match[str], int] | None:
        """The first rule matching, the match and the alternative (for placeholders)."""
        try:
            pattern = self._by_method[method]
        except KeyError:
            pattern = self._pattern(method)
        if pattern is None:
            return None
        m = pattern.fullmatch(path)
        if m is None:
            return None
        # Alternatives are tried in order, so the one that matched is the first that can.
        # Its group encloses its placeholders, so it is the outermost group that matched:
        # `lastgroup` names it.
        alternative = int(m.lastgroup[len(self.group) :])  # type: ignore[index]
        return self._alternatives[alternative][0], m, alternative

    def placeholder(self, m: re.Match[str], alternative: int, name: str) -> str | None:
        """The value of placeholder `{name}` in the matched path, if its pattern has one."""
        if name not in self._alternatives[alternative][2]:
            return None
        return m.group(f"{self.group}{alternative}_{name}")


# Rate limits ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """One token bucket's shape: `limit` requests per `per` seconds, `capacity` at once."""

    limit: int
    per: float
    capacity: float
    rate: float  # tokens gained per second
    tier: str | None = None

    def describe(self) -> str:
        """`10 requests per 60 s`, and the tier when there is one."""
        text = f"{self.limit} requests per {self.per:g} s"
        return f"{text} (tier {self.tier})" if self.tier else text


@dataclass(frozen=True, slots=True, eq=False)
class RateRule:
    """One compiled rate-limit rule: a fixed `budget`, or `tiers` chosen per caller."""

    index: int
    paths: tuple[str, ...]
    methods: frozenset[str] | None
    budget: Budget | None  # None: tiered
    tiers: Mapping[str, Budget]  # in the order written; empty unless tiered
    tier_sources: tuple[tuple[str, str], ...]  # ("claim", "<name>") or ("role", "")
    default_tier: str | None
    key_kind: str  # "ip", "identity", "api_key", "header", "param" or "global"
    key_name: str


def _positive(value: Any, what: str, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{what} must be a positive {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    return value


def parse_budget(raw: Mapping[str, Any], tier: str | None = None) -> Budget:
    """Check `limit`, `per` and `burst` (of a rule, or of one of its tiers).

    :raises ValueError: naming the bad value.
    """
    for key in ("limit", "per"):
        if key not in raw:
            raise ValueError(f"{key} is required")
    limit = int(_positive(raw["limit"], "limit", integer=True))
    per = float(_positive(raw["per"], "per"))
    burst = raw.get("burst")
    capacity = float(limit if burst is None else _positive(burst, "burst", integer=True))
    return Budget(limit=limit, per=per, capacity=capacity, rate=limit / per, tier=tier)


def _parse_key(key: Any) -> tuple[str, str]:
    if not isinstance(key, str):
        raise ValueError("key must be a string")
    kind, _, name = key.partition(":")
    if kind in ("ip", "global", "identity", "api_key"):
        if name:
            raise ValueError(f"key {key!r}: {kind} takes no name")
    elif kind in ("header", "param"):
        if not name:
            raise ValueError(f'key {key!r}: give a name, as in "{kind}:<name>"')
        if kind == "header" and not HTTP_TOKEN.match(name):
            raise ValueError(f"key {key!r}: {name!r} is not a header name")
        if kind == "header":
            name = name.lower()
    else:
        expected = ", ".join(f'"{k}"' for k in KEY_KINDS)
        raise ValueError(f"key {key!r}: expected one of {expected}")
    return kind, name


def _parse_tier_sources(value: Any) -> tuple[tuple[str, str], ...]:
    sources = [value] if isinstance(value, str) else value
    if not isinstance(sources, list) or not sources:
        raise ValueError('tier must be "role", "claim:<name>" or a list of them')
    parsed = []
    for source in sources:
        if source == "role":
            parsed.append(("role", ""))
        elif isinstance(source, str) and source.startswith("claim:") and len(source) > 6:
            parsed.append(("claim", source[6:]))
        else:
            raise ValueError(f'tier: {source!r} is not "role" or "claim:<name>"')
    return tuple(parsed)


def _parse_tiers(raw: Mapping[str, Any]) -> tuple[dict[str, Budget], tuple[Any, ...], str]:
    """Check `tiers`, `tier` and `default_tier` of a tiered rule."""
    flat = sorted(BUDGET_KEYS & set(raw))
    if flat:
        raise ValueError(f"{flat[0]} goes in each tier when tiers is set, not in the rule")
    table = raw["tiers"]
    if not isinstance(table, Mapping) or not table:
        raise ValueError(
            "tiers must be a table of tiers, as in tiers = {standard = {limit = 1000, per = 60}}"
        )
    tiers: dict[str, Budget] = {}
    for name, spec in table.items():
        if not _TIER_NAME.match(name):
            raise ValueError(f"tiers: {name!r} is not a tier name (letters, digits, _ . -)")
        try:
            check_table(spec, BUDGET_KEYS, ())
            tiers[name] = parse_budget(spec, tier=name)
        except ValueError as exc:
            raise ValueError(f"tiers.{name}: {exc}") from None
    if "tier" not in raw:
        raise ValueError('tier is required with tiers (tier = "claim:<name>" or "role")')
    sources = _parse_tier_sources(raw["tier"])
    default = raw.get("default_tier")
    if default is None:
        raise ValueError("default_tier is required with tiers (the tier of everyone else)")
    if default not in tiers:
        raise ValueError(f"default_tier {default!r} is not one of the tiers ({', '.join(tiers)})")
    return tiers, sources, default


def parse_rate_rule(index: int, raw: Any) -> RateRule:
    """Check and compile `rules[index]`.

    :raises ConfigError: naming the rule and the problem.
    """
    try:
        check_table(raw, RATE_KEYS, ("path",))
        paths = parse_paths(raw["path"])
        budget: Budget | None = None
        tiers: dict[str, Budget] = {}
        sources: tuple[tuple[str, str], ...] = ()
        default = None
        if "tiers" in raw:
            tiers, sources, default = _parse_tiers(raw)
        else:
            stray = [k for k in ("tier", "default_tier") if k in raw]
            if stray:
                raise ValueError(f"{stray[0]} needs tiers")
            budget = parse_budget(raw)
        kind, name = _parse_key(raw.get("key", "ip"))
        return RateRule(
            index=index,
            paths=paths,
            methods=parse_methods(raw.get("methods"), None),
            budget=budget,
            tiers=tiers,
            tier_sources=sources,
            default_tier=default,
            key_kind=kind,
            key_name=name,
        )
    except ValueError as exc:
        raise ConfigError(f"{rule_label('rules', index, raw)}: {exc}") from None
