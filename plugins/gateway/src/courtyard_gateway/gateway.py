"""The gateway's compiled configuration and its per-request work.

`Gateway.from_settings` checks and compiles the plugin's settings once per generation
(rules in `rules.py`, CORS in `cors.py`); `Gateway.limit` takes a token for a request,
from the bucket its rule, its tier and its key name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from courtyard_sdk.identity import Identity, current_identity

from .cors import CorsRule, parse_cors_rule
from .rules import Budget, ConfigError, RateRule, RuleMatcher, parse_rate_rule
from .store import BucketStore, MemoryBucketStore

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LONG_KEY = 64  # key values longer than this are stored as a digest
_PEER_CACHE = 4096  # peer addresses remembered, parsed


def digest(value: str) -> str:
    """A short, stable digest of a key value (the same on every runtime sharing a store).

    Used for values that may be secrets (headers, credentials) and for long values, so a
    bucket's name never holds the secret itself nor grows without bound.
    """
    data = value.encode("utf-8", "surrogatepass")
    return "#" + hashlib.blake2b(data, digest_size=16, person=b"courtyard-gw").hexdigest()


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The API key or token the request presents: `X-API-Key`, else a Bearer credential."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip() or None
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    return None


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
    """What the request hook leaves for the response hook: the budget and the bucket."""

    budget: Budget
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
        self._peers: dict[str | None, tuple[str, bool]] = {}
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

    def client_ip(self, request: Any) -> str:
        """The client's address: the direct peer, or, when the peer is a trusted proxy,
        the right-most X-Forwarded-For address that is not a trusted proxy."""
        remote_addr = request.remote_addr
        peer = self._peers.get(remote_addr)
        if peer is None:
            peer = self._peer(remote_addr)
        address, trusted = peer
        if not trusted:
            return address
        forwarded_for = request.headers.get("X-Forwarded-For")  # read only when trusted
        if not forwarded_for:
            return address
        client = ipaddress.ip_address(address)
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

    def _peer(self, remote_addr: str | None) -> tuple[str, bool]:
        """The peer's normalised address and whether it is a trusted proxy, remembered:
        parsing an address costs more than the rest of a limited request."""
        parsed = _ip(remote_addr or "")
        if parsed is None:
            peer = (remote_addr or "unknown", False)
        else:
            peer = (str(parsed), self._trusted(parsed))
        if len(self._peers) >= _PEER_CACHE:  # peers are client-chosen: bound the memory
            self._peers.clear()
        self._peers[remote_addr] = peer
        return peer

    @staticmethod
    def tier_of(rule: RateRule, identity: Identity) -> str:
        """The caller's tier under a tiered `rule`: the first of its `tier` sources that
        names one of the rule's tiers, else `default_tier`.

        `claim:<name>`: the claim's value (a string, or the first string of a list that
        names a tier); `role`: the first tier, in the order written, among the roles.
        A caller who presented no credential (anonymous, or every caller while the runtime
        has no auth configured) is in `default_tier`.
        """
        if not identity.authenticated:
            return rule.default_tier  # type: ignore[return-value]
        tiers = rule.tiers
        for kind, name in rule.tier_sources:
            if kind == "role":
                for tier in tiers:
                    if tier in identity.roles:
                        return tier
                continue
            value = identity.claims.get(name)
            if isinstance(value, str):
                if value in tiers:
                    return value
            elif isinstance(value, list | tuple):
                for item in value:
                    if isinstance(item, str) and item in tiers:
                        return item
        return rule.default_tier  # type: ignore[return-value]  # set on every tiered rule

    def bucket(
        self, rule: RateRule, m: re.Match[str], alternative: int, request: Any
    ) -> tuple[str, Budget]:
        """The store key of the request's bucket under `rule`, and its budget.

        Keys are `<rule index>[@<tier>]:<kind>:<value>` (`0:ip:192.0.2.1`,
        `2@premium:identity:token:alice`, `1:global`): different rules, tiers and kinds of
        key never share a bucket.
        """
        identity: Identity | None = None
        budget = rule.budget
        scope = str(rule.index)
        if budget is None:
            identity = current_identity()
            tier = self.tier_of(rule, identity)
            budget = rule.tiers[tier]
            scope = f"{rule.index}@{tier}"
        kind = rule.key_kind
        value: str | None = None
        if kind == "global":
            return f"{scope}:global", budget
        if kind == "identity":
            identity = identity or current_identity()
            # Keyed by kind too: a key's id and a token's subject may be the same string.
            if identity.authenticated:
                value = f"{identity.kind}:{identity.subject}"
        elif kind == "api_key":
            credential = presented_credential(request.headers)
            value = digest(credential) if credential else None
        elif kind == "header":
            header = request.headers.get(rule.key_name)
            value = digest(header) if header else None  # a header may carry a secret
        elif kind == "param":
            value = self.rules.placeholder(m, alternative, rule.key_name)
            if value is None:
                found = (request.view_args or {}).get(rule.key_name)
                value = str(found) if found is not None else request.args.get(rule.key_name)
        if value:
            if len(value) > _LONG_KEY:
                value = digest(value)
            return f"{scope}:{kind}:{value}", budget
        # ip, and the fallback when the caller, header or parameter is missing: the address
        return f"{scope}:ip:{self.client_ip(request)}", budget

    # Hooks ----------------------------------------------------------------------------

    async def limit(self, request: Any) -> Limited | None:
        """Take a token for the request, if a rule matches it."""
        found = self.rules.match(request.method, request.path)
        if found is None:
            return None
        key, budget = self.bucket(*found, request)
        allowed, remaining, reset = await self.store.take(
            key, budget.capacity, budget.rate, self.clock()
        )
        retry_after = None
        if not allowed:
            # reset is (capacity - tokens) / rate; one token is (capacity - 1) / rate sooner.
            wait = reset - (budget.capacity - 1) / budget.rate
            retry_after = max(1, math.ceil(wait - 1e-9))
        return Limited(budget, remaining, reset, retry_after)

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
