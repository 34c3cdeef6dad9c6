"""Token-bucket stores: the interface the gateway uses, and the in-memory implementation.

A bucket holds at most `capacity` tokens and gains `rate` tokens per second. A request
takes one token; with none left it is refused. A store keeps one bucket per key.

`BucketStore` is the whole contract, so a shared store (Redis, say) can replace the
in-memory one without touching the rules or the hooks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol, runtime_checkable


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
