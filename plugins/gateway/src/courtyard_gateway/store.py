"""Token-bucket stores: the interface the gateway uses, and the in-memory implementation.

A bucket holds at most `capacity` tokens and gains `rate` tokens per second. A request
takes one token; with none left it is refused. A store keeps one bucket per key.

`BucketStore` is the whole contract: `MemoryBucketStore` keeps buckets in this process,
`RedisBucketStore` in a Redis server shared by every process and server that uses it.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


@runtime_checkable
class BucketStore(Protocol):
    """Where token buckets live."""

    async def take(
        self, key: str, capacity: float, rate: float, now: float
    ) -> tuple[bool, int, float]:
        """Take one token from the bucket `key`, creating it full when it is unknown.

        :param key: the bucket's key.
        :param capacity: the most tokens the bucket holds.
        :param rate: tokens gained per second.
        :param now: the current time, in seconds (monotonic).
        :return: `(allowed, remaining, reset_seconds)`: whether a token was taken, the whole
            tokens left, and the seconds until the bucket is full again.
        """
        ...


class MemoryBucketStore:
    """Buckets in this process's memory, at most `max_keys` of them.

    Buckets are kept in least-recently-used order. A new key beyond `max_keys` evicts the
    least recently used bucket, and buckets that have refilled are swept from the old end
    as new keys arrive, so memory stays bounded whatever the number of clients. An evicted
    bucket starts full when its key comes back, which is what an idle bucket would be.
    """

    __slots__ = ("_buckets", "max_keys")

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        # key -> [tokens, updated_at, capacity, rate]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(
        self, key: str, capacity: float, rate: float, now: float
    ) -> tuple[bool, int, float]:
        """Take one token from bucket `key` (see `BucketStore.take`)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            self._make_room(now)
            tokens = capacity
            bucket = buckets[key] = [tokens, now, capacity, rate]
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            tokens = min(capacity, bucket[0] + elapsed * rate) if elapsed > 0 else bucket[0]
            tokens = min(tokens, capacity)
            bucket[2], bucket[3] = capacity, rate
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        bucket[0], bucket[1] = tokens, now
        remaining = math.floor(tokens)
        reset = (capacity - tokens) / rate if rate > 0 else math.inf
        return allowed, remaining, reset

    def _make_room(self, now: float) -> None:
        """Sweep refilled buckets from the old end, then evict to stay under max_keys."""
        buckets = self._buckets
        # A bucket full again at `now` is indistinguishable from no bucket: drop it. Look
        # at a few only, so a new key costs O(1).
        for _ in range(2):
            if not buckets:
                break
            key, (tokens, updated, capacity, rate) = next(iter(buckets.items()))
            if tokens + (now - updated) * rate >= capacity:
                del buckets[key]
            else:
                break
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)


# Redis ----------------------------------------------------------------------------------

KEY_PREFIX = "courtyard:gateway:"

# The token-bucket take, atomic in Redis. KEYS[1]: the bucket (a hash of `tokens` and
# `ts`); ARGV: capacity, rate. The time is the Redis server's own (TIME), so every runtime
# sharing the server agrees on it. The key expires when the bucket would be full again:
# a missing bucket and a full one are the same thing. Returns {allowed (0/1), whole tokens
# left, reset seconds (a string: Lua numbers returned to Redis are truncated to integers)}.
TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1])
local ts = tonumber(bucket[2])
if tokens == nil or ts == nil then
  tokens = capacity
else
  local elapsed = now - ts
  if elapsed > 0 then
    tokens = tokens + elapsed * rate
  end
  if tokens > capacity then
    tokens = capacity
  end
end
local allowed = 0
if tokens >= 1 then
  allowed = 1
  tokens = tokens - 1
end
local reset = (capacity - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(reset * 1000)))
return {allowed, math.floor(tokens), string.format('%.17g', reset)}
"""


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (or its client library is missing)."""


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<redis_url>"


class RedisBucketStore:
    """Buckets in a Redis server, shared by every runtime (process, server) using it.

    Each take is one atomic Lua script (`TAKE_SCRIPT`) on the key
    `courtyard:gateway:<key>` (the gateway's keys are `<rule index>:<kind>:<value>`). The
    `now` argument is ignored: the script uses the Redis server's clock so that all runtimes
    agree. Idle keys expire once their bucket has refilled.

    When Redis fails during a take, the request is allowed (fail open): the store answers
    `(True, capacity - 1, 1 / rate)` and logs a warning once per outage, and an info line
    when Redis answers again.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = KEY_PREFIX,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.logger = logger or log
        self.down = False  # in an outage: its warning has been logged
        self._take = client.register_script(TAKE_SCRIPT)

    @classmethod
    async def connect(
        cls,
        url: str,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        timeout: float = 2.0,
    ) -> RedisBucketStore:
        """A store on the Redis server at `url`, checked with a PING.

        :raises StoreUnavailable: when redis-py is missing or the server does not answer.
        """
        try:
            from redis.asyncio import Redis
        except ImportError:
            raise StoreUnavailable(
                "redis_url is set but the Python package 'redis' is not installed"
            ) from None
        try:
            client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        except ValueError as exc:
            raise StoreUnavailable(f"redis_url {redact(url)!r} is not valid: {exc}") from None
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise StoreUnavailable(
                f"cannot reach Redis at {redact(url)} (redis_url): {exc}"
            ) from None
        return cls(client, logger=logger)

    async def take(
        self, key: str, capacity: float, rate: float, now: float
    ) -> tuple[bool, int, float]:
        """Take one token from bucket `key` (see `BucketStore.take`); fail open."""
        from redis.exceptions import RedisError

        try:
            allowed, remaining, reset = await self._take(
                keys=[self.prefix + key], args=[repr(float(capacity)), repr(float(rate))]
            )
        except (RedisError, OSError) as exc:
            if not self.down:
                self.down = True
                self.logger.warning(
                    "Redis failed (%s: %s); allowing rate-limited requests until it is back",
                    type(exc).__name__,
                    exc,
                )
            return True, max(0, math.floor(capacity - 1)), 1 / rate if rate > 0 else math.inf
        if self.down:
            self.down = False
            self.logger.info("Redis is back; rate limits apply again")
        return bool(allowed), int(remaining), float(reset)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()
