"""CORS rules: the checks that compile `cors`, and the headers they answer with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from courtyard_sdk.origin import INTERNAL_HEADERS

from .rules import ConfigError, check_table, parse_methods, parse_paths, rule_label

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
# Never allowed cross-site: they would let a page on another site pass as a program.
_NEVER_ALLOWED = frozenset(h.lower() for h in INTERNAL_HEADERS)


@dataclass(frozen=True, slots=True, eq=False)
class CorsRule:
    """One compiled CORS rule."""

    index: int
    paths: tuple[str, ...]
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

    def headers(self, origin: str, expose: bool = True) -> dict[str, str]:
        """The headers for a response to an allowed origin."""
        wildcard = self.any_origin and not self.credentials
        headers = {"Access-Control-Allow-Origin": "*" if wildcard else origin}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if expose and self.expose_headers:
            headers["Access-Control-Expose-Headers"] = self.expose_headers
        return headers

    def preflight_headers(self, origin: str, requested_headers: str | None) -> dict[str, str]:
        """The headers answering a preflight request from an allowed origin."""
        headers = self.headers(origin, expose=False)
        headers["Access-Control-Allow-Methods"] = self.allow_methods
        allow = self.allow_headers if self.allow_headers is not None else requested_headers
        allow = allowed_headers(allow)
        if allow:
            headers["Access-Control-Allow-Headers"] = allow
        if self.max_age is not None:
            headers["Access-Control-Max-Age"] = str(self.max_age)
        return headers


def allowed_headers(listed: str | None) -> str:
    """`listed` (a comma-separated list of header names) without the internal headers."""
    names = (n.strip() for n in (listed or "").split(","))
    return ", ".join(n for n in names if n and n.lower() not in _NEVER_ALLOWED)


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return value


def parse_cors_rule(index: int, raw: Any) -> CorsRule:
    """Check and compile `cors[index]`.

    :raises ConfigError: naming the rule and the problem.
    """
    try:
        check_table(raw, CORS_KEYS, ("path", "origins"))
        paths = parse_paths(raw["path"])
        origins = raw["origins"]
        any_origin = origins == "*"
        if not any_origin:
            origins = _string_list(origins, 'origins (or "*")')
            if "*" in origins:
                any_origin = True
        methods = parse_methods(raw.get("methods"), DEFAULT_CORS_METHODS)
        assert methods is not None
        headers = raw.get("headers", "*")
        if headers != "*":
            headers = ", ".join(_string_list(headers, 'headers (or "*")'))
            if any(h.strip().lower() in _NEVER_ALLOWED for h in headers.split(",")):
                raise ValueError(f"headers may not list {' or '.join(INTERNAL_HEADERS)}")
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
            paths=paths,
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
        raise ConfigError(f"{rule_label('cors', index, raw)}: {exc}") from None
