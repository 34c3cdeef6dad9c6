"""courtyard-gateway: per-route rate limits (token buckets, tiers) and CORS for Courtyard.

The hooks live in `courtyard_gateway.plugin`; rules in `rules` and `cors`, their per-request
work in `gateway`, and the bucket stores in `store`. Documented in docs/gateway.md.
"""

from .rules import ConfigError
from .store import BucketStore, MemoryBucketStore, RedisBucketStore

__all__ = ["BucketStore", "ConfigError", "MemoryBucketStore", "RedisBucketStore"]
