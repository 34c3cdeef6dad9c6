"""The gateway's configuration, compiled once at startup, and its per-request work.

Rules are checked and compiled by `Gateway.from_settings`; a bad rule raises
`ConfigError` naming it (`rules[2] (path "/x"): per must be a positive number`).
Path patterns of all rules are joined into one regular expression per HTTP method, so a
request that no rule matches costs one dict lookup and one regex match.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .store import BucketStore, MemoryBucketStore

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RATE_KEYS = {"path", "methods", "limit", "per", "burst", "key"}
CORS_KEYS = {
    "path",
    "origins",
    "methods",
    "headers",
    "expose_headers",
    "max_age",
    "credentials",
}
DEFAULT_CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_LONG_KEY = 64  # key values longer than this are stored as a digest


class ConfigError(ValueError):
    """A gateway rule or setting is invalid; the message names it."""


# Paths ----------------------------------------------------------------------------------


def compile_path(pattern: str, group_prefix: str) -> tuple[str, list[str]]:
    """Translate a path pattern into a regex (to be full-matched) and its placeholder names.

    - `{name}` matches one path segment and captures it (for `param:<name>` keys);
    - `*` matches within one segment, `**` across segments, `?` one character;
    - a pattern with none of these is a prefix: `/api/runners` matches `/api/runners`
      and everything below it (`/api/runners/x`), not `/api/runnersx`.
    """
    if not pattern.startswith("/"):
        raise ValueError("path must start with /")
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


def _methods(value: Any, default: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return frozenset(default) if default is not None else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("methods must be a non-empty list of HTTP methods")
    methods = set()
    for method in value:
        if not isinstance(method, str) or not _HTTP_TOKEN.match(method):
            raise ValueError(f"methods: {method!r} is not an HTTP method")
        methods.add(method.upper())
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


# Rate limits ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRule:
    """One compiled rate-limit rule."""

    index: int
    path: str
    methods: frozenset[str] | None
    limit: int
    per: float
    capacity: float
    rate: float
    key_kind: str  # "ip", "header", "param" or "global"
    key_name: str
    params: tuple[str, ...]

    @property
    def label(self) -> str:
        """How error messages and logs name the rule."""
        return f'rules[{self.index}] (path "{self.path}")'


def _positive(value: Any, what: str, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{what} must be a positive {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    return value


def _check_table(raw: Any, known: set[str], required: tuple[str, ...]) -> None:
    """A rule is a table of known keys, with the required ones and a string `path`."""
    if not isinstance(raw, Mapping):
        raise ValueError("must be a table")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {sorted(known)})")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ValueError(f"{missing[0]} is required")
    if not isinstance(raw["path"], str):
        raise ValueError("path must be a string")


def parse_rate_rule(index: int, raw: Any) -> RateRule:
    """Check and compile `rules[index]`.

    :raises ConfigError: naming the rule and the problem.
    """
    path = raw.get("path") if isinstance(raw, Mapping) else None
    label = f'rules[{index}] (path "{path}")' if isinstance(path, str) else f"rules[{index}]"
    try:
        _check_table(raw, RATE_KEYS, ("path", "limit", "per"))
        _, params = compile_path(path, "x")
        limit = int(_positive(raw["limit"], "limit", integer=True))
        per = float(_positive(raw["per"], "per"))
        burst = raw.get("burst")
        capacity = float(limit if burst is None else _positive(burst, "burst", integer=True))
        key = raw.get("key", "ip")
        if not isinstance(key, str):
            raise ValueError("key must be a string")
        kind, _, name = key.partition(":")
        if kind in ("ip", "global"):
            if name:
                raise ValueError(f"key {key!r}: {kind} takes no name")
        elif kind in ("header", "param"):
            if not name:
                raise ValueError(f'key {key!r}: give a name, as in "{kind}:<name>"')
            if kind == "header" and not _HTTP_TOKEN.match(name):
                raise ValueError(f"key {key!r}: {name!r} is not a header name")
        else:
            raise ValueError(
                f'key {key!r}: expected "ip", "header:<Name>", "param:<name>" or "global"'
            )
        return RateRule(
            index=index,
            path=path,
            methods=_methods(raw.get("methods"), None),
            limit=limit,
            per=per,
            capacity=capacity,
            rate=limit / per,
            key_kind=kind,
            key_name=name.lower() if kind == "header" else name,
            params=tuple(params),
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


class RuleMatcher:
    """Finds the first rule matching a method and a path, with one regex per method."""

    def __init__(self, rules: list[Any], group: str) -> None:
        self.rules = rules
        self.group = group
        self._compiled = [compile_path(r.path, f"{group}{i}_")[0] for i, r in enumerate(rules)]
        self._by_method: dict[str, re.Pattern[str] | None] = {}

    def _pattern(self, method: str) -> re.Pattern[str] | None:
        parts = [
            f"(?P<{self.group}{i}>{regex})"
            for i, (rule, regex) in enumerate(zip(self.rules, self._compiled, strict=True))
            if rule.methods is None or method in rule.methods
        ]
        pattern = re.compile("|".join(parts)) if parts else None
        if len(self._by_method) < 64:  # methods are client-chosen: bound the cache
            self._by_method[method] = pattern
        return pattern

    def match(self, method: str, path: str) -> tuple[Any, re.Match[str]] | None:
        """The first rule matching, and the match (for placeholders), or None."""
        try:
            pattern = self._by_method[method]
        except KeyError:
            pattern = self._pattern(method)
        if pattern is None:
            return None
        m = pattern.fullmatch(path)
        if m is None:
            return None
        # Alternatives are tried in order, so the rule that matched is the first that can.
        # Its group encloses its placeholders, so it is the group that closed last.
        return self.rules[int(m.lastgroup[len(self.group) :])], m  # type: ignore[index]


# CORS -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorsRule:
    """One compiled CORS rule."""

    index: int
    path: str
    methods: frozenset[str] | None  # None: not used for matching; always all methods
    any_origin: bool
    origins: frozenset[str]
    allow_methods: str
    allow_headers: str | None  # None: echo Access-Control-Request-Headers
    expose_headers: str
    max_age: int | None
    credentials: bool

    def allows(self, origin: str) -> bool:
        """Whether `origin` may read responses of this path."""
        return self.any_origin or origin in self.origins


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return value


def parse_cors_rule(index: int, raw: Any) -> CorsRule:
    """Check and compile `cors[index]`.

    :raises ConfigError: naming the rule and the problem.
    """
    path = raw.get("path") if isinstance(raw, Mapping) else None
    label = f'cors[{index}] (path "{path}")' if isinstance(path, str) else f"cors[{index}]"
    try:
        _check_table(raw, CORS_KEYS, ("path", "origins"))
        compile_path(path, "x")
        origins = raw["origins"]
        any_origin = origins == "*"
        if not any_origin:
            origins = _string_list(origins, 'origins (or "*")')
            if "*" in origins:
                any_origin = True
        methods = _methods(raw.get("methods"), DEFAULT_CORS_METHODS)
        assert methods is not None
        headers = raw.get("headers", "*")
        if headers != "*":
            headers = ", ".join(_string_list(headers, 'headers (or "*")'))
        expose = raw.get("expose_headers", list(RATE_HEADERS))
        expose = ", ".join(_string_list(expose, "expose_headers")) if expose else ""
        max_age = raw.get("max_age")
        if max_age is not None and (
            isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0
        ):
            raise ValueError(f"max_age must be a whole number of seconds, got {max_age!r}")
        credentials = raw.get("credentials", False)
        if not isinstance(credentials, bool):
            raise ValueError("credentials must be true or false")
        return CorsRule(
            index=index,
            path=path,
            methods=None,
            any_origin=any_origin,
            origins=frozenset(o.rstrip("/") for o in origins) if not any_origin else frozenset(),
            allow_methods=", ".join(sorted(methods)),
            allow_headers=None if headers == "*" else headers,
            expose_headers=expose,
            max_age=max_age,
            credentials=credentials,
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


# Clients --------------------------------------------------------------------------------


def parse_networks(values: Any) -> tuple[IPNetwork, ...]:
    """Parse `trusted_proxies`.

    :raises ConfigError: naming the bad entry.
    """
    networks = []
    for i, value in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies[{i}] ({value!r}): {exc}") from None
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


# The gateway ----------------------------------------------------------------------------


@dataclass(slots=True)
class Limited:
    """What the request hook leaves for the response hook: the rule and the bucket."""

    rule: RateRule
    remaining: int
    reset: float
    retry_after: int | None  # set when refused


class Gateway:
    """A generation's compiled gateway: rules, CORS, trusted proxies and the store."""

    def __init__(
        self,
        rules: list[RateRule],
        cors: list[CorsRule],
        trusted: tuple[IPNetwork, ...],
        store: BucketStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = RuleMatcher(rules, "r")
        self.cors = RuleMatcher(cors, "c")
        self.has_rules = bool(rules)
        self.has_cors = bool(cors)
        self.trusted = trusted
        self.store = store
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Gateway:
        """Check and compile the plugin's settings.

        :raises ConfigError: naming the first bad rule or entry.
        """
        rules = [parse_rate_rule(i, raw) for i, raw in enumerate(settings.get("rules") or [])]
        cors = [parse_cors_rule(i, raw) for i, raw in enumerate(settings.get("cors") or [])]
        trusted = parse_networks(settings.get("trusted_proxies") or [])
        store = MemoryBucketStore(int(settings.get("max_keys") or 100_000))
        return cls(rules, cors, trusted, store)

    # Keys -----------------------------------------------------------------------------

    def client_ip(self, remote_addr: str | None, forwarded_for: str | None) -> str:
        """The client's address: the direct peer, or, when the peer is a trusted proxy,
        the right-most X-Forwarded-For address that is not a trusted proxy."""
        peer = _ip(remote_addr or "")
        if peer is None:
            return remote_addr or "unknown"
        if not forwarded_for or not self._trusted(peer):
            return str(peer)
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            addr = _ip(hop)
            if addr is None:
                break  # garbage: trust no further than the last good hop
            client = addr
            if not self._trusted(addr):
                break
        return str(client)

    def _trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in self.trusted)

    def bucket_key(self, rule: RateRule, match: re.Match[str], request: Any) -> str:
        """The store key of the request's bucket under `rule`: `<rule index>:<kind>:<value>`
        (`0:ip:192.0.2.1`, `2:header:abc`, `1:global`)."""
        kind = rule.key_kind
        value: str | None
        if kind == "global":
            return f"{rule.index}:global"
        if kind == "header":
            value = request.headers.get(rule.key_name)
        elif kind == "param":
            name = rule.key_name
            if name in rule.params:
                value = match.group(f"r{rule.index}_{name}")
            else:
                value = (request.view_args or {}).get(name) or request.args.get(name)
            if value is not None:
                value = str(value)
        else:
            value = None
        if value:
            if len(value) > _LONG_KEY:
                value = "#" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
            return f"{rule.index}:{kind}:{value}"
        # ip, and the fallback when the header or parameter is missing: the client's address
        ip = self.client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"))
        return f"{rule.index}:ip:{ip}"

    # Hooks ----------------------------------------------------------------------------

    async def limit(self, request: Any) -> Limited | None:
        """Take a token for the request, if a rule matches it."""
        found = self.rules.match(request.method, request.path)
        if found is None:
            return None
        rule, match = found
        key = self.bucket_key(rule, match, request)
        allowed, remaining, reset = await self.store.take(
            key, rule.capacity, rule.rate, self.clock()
        )
        retry_after = None
        if not allowed:
            # reset is (capacity - tokens) / rate; one token is (capacity - 1) / rate sooner.
            wait = reset - (rule.capacity - 1) / rule.rate
            retry_after = max(1, math.ceil(wait - 1e-9))
        return Limited(rule, remaining, reset, retry_after)

    def cors_rule(self, request: Any) -> tuple[CorsRule, str | None] | None:
        """The CORS rule of the request's path, and its Origin when that is allowed."""
        found = self.cors.match("*", request.path)
        if found is None:
            return None
        rule = found[0]
        origin = request.headers.get("Origin")
        if origin and rule.allows(origin.rstrip("/")):
            return rule, origin
        return rule, None

    def preflight_headers(self, rule: CorsRule, origin: str, request: Any) -> dict[str, str]:
        """The headers answering a preflight request from an allowed origin."""
        headers = self.cors_headers(rule, origin, expose=False)
        headers["Access-Control-Allow-Methods"] = rule.allow_methods
        requested = request.headers.get("Access-Control-Request-Headers")
        allow = rule.allow_headers if rule.allow_headers is not None else requested
        if allow:
            headers["Access-Control-Allow-Headers"] = allow
        if rule.max_age is not None:
            headers["Access-Control-Max-Age"] = str(rule.max_age)
        return headers

    @staticmethod
    def cors_headers(rule: CorsRule, origin: str, expose: bool = True) -> dict[str, str]:
        """The headers for a response to an allowed origin."""
        wildcard = rule.any_origin and not rule.credentials
        headers = {"Access-Control-Allow-Origin": "*" if wildcard else origin}
        if rule.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if expose and rule.expose_headers:
            headers["Access-Control-Expose-Headers"] = rule.expose_headers
        return headers
