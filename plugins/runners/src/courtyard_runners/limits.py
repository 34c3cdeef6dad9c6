"""RustCI's documented rate limits, applied by the plugin itself on its own routes.

| Route | Limit | Per |
|---|---|---|
| `POST /api/runners/register` | 10 a minute | client address |
| `GET /api/runners/{id}/status`, `.../health` (one budget) | 100 a minute | runner |
| `POST /api/runners/{id}/jobs` | 50 a minute | runner |
| `POST /api/runners/bulk` | 5 a minute | caller (its identity; its address when anonymous) |

Token buckets (burst = limit) kept in memory, per generation and process, at most
`MAX_KEYS` of them (the least recently used go first: an idle bucket is a full one).
Every answer of a limited route carries `X-RateLimit-Limit`, `X-RateLimit-Remaining`
and `X-RateLimit-Reset` (Unix seconds when the bucket is full again); a refusal is
`429 RATE_LIMIT_EXCEEDED` with `Retry-After`. For limits shared by several instances,
turn these off (`rate_limits = false`) and give the same rules to the gateway plugin,
whose buckets can live in Redis (docs/gateway.md has them).
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from courtyard_sdk.identity import current_identity

from . import errors

MAX_KEYS = 100_000
_ATTRIBUTE = "_courtyard_runners_limit"


@dataclass(frozen=True)
class Rule:
    """One documented limit."""

    name: str
    method: str
    path: re.Pattern[str]
    limit: int
    per: float
    key: str  # "ip", "runner" or "identity"


RULES = (
    Rule("register", "POST", re.compile(r"/api/runners/register/?"), 10, 60, "ip"),
    Rule("bulk", "POST", re.compile(r"/api/runners/bulk/?"), 5, 60, "identity"),
    Rule(
        "status", "GET", re.compile(r"/api/runners/([^/]+)/(?:status|health)/?"), 100, 60, "runner"
    ),
    Rule("jobs", "POST", re.compile(r"/api/runners/([^/]+)/jobs/?"), 50, 60, "runner"),
)


@dataclass
class Taken:
    """The outcome of one request's take, for its answer's headers."""

    rule: Rule
    remaining: int
    reset: float  # Unix seconds: the bucket is full again


class Limiter:
    """Token buckets for `RULES`."""

    def __init__(self, rules: tuple[Rule, ...] = RULES) -> None:
        self.rules = rules
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _key(self, rule: Rule, request: Any, match: re.Match[str]) -> str:
        if rule.key == "runner":
            return f"{rule.name}:runner:{match[1]}"
        if rule.key == "identity":
            who = current_identity()
            if who.authenticated:
                return f"{rule.name}:{who.kind}:{who.subject}"
        return f"{rule.name}:ip:{request.remote_addr or '-'}"

    def take(self, rule: Rule, key: str, now: float) -> tuple[bool, float, float]:
        """Take a token from `key`'s bucket: (allowed, tokens left, seconds to full)."""
        rate = rule.limit / rule.per
        tokens, stamp = self._buckets.pop(key, (float(rule.limit), now))
        tokens = min(float(rule.limit), tokens + (now - stamp) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        return allowed, tokens, (rule.limit - tokens) / rate

    def check(self, request: Any) -> Any:
        """None to let the request through, or the 429 answer."""
        for rule in self.rules:
            if request.method != rule.method and not (
                rule.method == "GET" and request.method == "HEAD"
            ):
                continue
            match = rule.path.fullmatch(request.path)
            if match is None:
                continue
            now = time.time()
            allowed, tokens, to_full = self.take(rule, self._key(rule, request, match), now)
            setattr(request, _ATTRIBUTE, Taken(rule, int(tokens), now + to_full))
            if allowed:
                return None
            wait = max(1, math.ceil((1.0 - tokens) * rule.per / rule.limit))
            body = errors.body(
                "RATE_LIMIT_EXCEEDED",
                f"rate limit of {rule.limit} requests per {int(rule.per)} s exceeded; "
                f"retry in {wait} s",
                {"limit": rule.limit, "retry_after": wait},
            )
            return body, 429, {"Retry-After": str(wait)}
        return None

    @staticmethod
    def headers(request: Any, response: Any) -> None:
        """The X-RateLimit-* headers of a limited request's answer."""
        taken: Taken | None = getattr(request, _ATTRIBUTE, None)
        if taken is None:
            return
        response.headers["X-RateLimit-Limit"] = str(taken.rule.limit)
        response.headers["X-RateLimit-Remaining"] = str(max(0, taken.remaining))
        response.headers["X-RateLimit-Reset"] = str(math.ceil(taken.reset))
