"""The gateway plugin's hooks: rate limits and CORS on every plugin request.

The compiled configuration (`gateway.Gateway`) is built by `courtyard_startup`, one per
generation, and kept in the generation's plugin context (`ctx.state[Gateway]`); a reload
builds a fresh one (with fresh buckets). With `redis_url` set, the buckets live in Redis
instead (see `store.RedisBucketStore`): the generation opens its client at startup and
closes it at shutdown.
"""

from __future__ import annotations

import time
from typing import Any

from courtyard_sdk import PluginContext, Request, Response, hookimpl

from .gateway import Gateway, Limited
from .rules import ConfigError
from .store import RedisBucketStore

_LIMITED = "_courtyard_gateway"  # the request attribute carrying `Limited` to the response


@hookimpl
async def courtyard_startup(ctx: PluginContext) -> None:
    """Check and compile the rules; a bad rule fails the plugin with a message naming it."""
    try:
        gateway = Gateway.from_settings(ctx.settings)
    except ConfigError as exc:
        raise ConfigError(f"invalid gateway configuration: {exc}") from None
    url = ctx.settings.get("redis_url")
    if url:
        # Raises StoreUnavailable ("cannot reach Redis at ...") and fails the plugin.
        gateway.store = await RedisBucketStore.connect(url, logger=ctx.logger)
    ctx.state[Gateway] = gateway
    ctx.logger.info(
        "%d rate-limit rule(s), %d CORS rule(s), %d trusted proxy network(s), buckets in %s",
        len(gateway.rules.rules),
        len(gateway.cors.rules),
        len(gateway.trusted),
        "Redis" if url else "memory",
    )


@hookimpl
async def courtyard_shutdown(ctx: PluginContext) -> None:
    """Forget the generation's gateway (and its buckets); close its Redis client."""
    gateway = ctx.state.pop(Gateway, None)
    if gateway is not None and isinstance(gateway.store, RedisBucketStore):
        await gateway.store.aclose()


@hookimpl
def courtyard_request(ctx: PluginContext, request: Request) -> Any:
    """Answer CORS preflights, then take a token; a refused request gets 429.

    A plain function, which returns the rate limiting's coroutine only where rules apply:
    it runs on every request, and most servers have no rules."""
    gateway = ctx.state.get(Gateway)
    if gateway is None:
        return None
    if (
        gateway.has_cors
        and request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
    ):
        found = gateway.cors_rule(request)
        if found is not None and found[1] is not None:
            rule, origin = found
            requested = request.headers.get("Access-Control-Request-Headers")
            headers = rule.preflight_headers(origin, requested)
            headers["Vary"] = (
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            )
            return Response("", status=204, headers=headers)
    if not gateway.has_rules:
        return None
    return _take_token(gateway, request)


async def _take_token(gateway: Gateway, request: Request) -> Any:
    """The 429 answer when `request` finds its bucket empty, else None."""
    limited = await gateway.limit(request)
    if limited is None:
        return None
    setattr(request, _LIMITED, limited)
    if limited.retry_after is not None:
        message = (
            f"rate limit of {limited.budget.describe()} exceeded; retry in {limited.retry_after} s"
        )
        # The core envelope, plus the `success: false` that RustCI's and Stella Ops' clients read.
        body = {"success": False, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": message}}
        return body, 429, {"Retry-After": str(limited.retry_after)}
    return None


@hookimpl
def courtyard_response(ctx: PluginContext, request: Request, response: Response) -> None:
    """Add the X-RateLimit-* headers of a limited route, and CORS headers for its origin."""
    limited: Limited | None = getattr(request, _LIMITED, None)
    if limited is not None:
        headers = response.headers
        headers["X-RateLimit-Limit"] = str(limited.budget.limit)
        headers["X-RateLimit-Remaining"] = str(limited.remaining)
        # A Unix timestamp: when the bucket is full again.
        headers["X-RateLimit-Reset"] = str(_ceil(time.time() + max(0.0, limited.reset)))
    gateway = ctx.state.get(Gateway)
    if gateway is None or not gateway.has_cors:
        return
    if "Access-Control-Allow-Origin" in response.headers:
        return  # a preflight we answered, or a route that does its own CORS
    found = gateway.cors_rule(request)
    if found is None:
        return
    rule, origin = found
    if not (rule.any_origin and not rule.credentials):
        response.vary.add("Origin")
    if origin is not None:
        response.headers.update(rule.headers(origin))


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if whole >= seconds - 1e-9 else whole + 1
