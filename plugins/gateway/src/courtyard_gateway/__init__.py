"""courtyard-gateway: per-route rate limits (token buckets) and CORS for Courtyard.

The hooks live in `courtyard_gateway.plugin`; the bucket store in `courtyard_gateway.store`.
"""

from .store import BucketStore, MemoryBucketStore, RedisBucketStore

__all__ = ["BucketStore", "MemoryBucketStore", "RedisBucketStore"]
