"""Fixtures of the cluster tests: several `courtyard serve` instances on one PostgreSQL
and one Redis (`cluster`), and nginx in front of them (`load_balancer`).

The instances are the runtime's scale-out set-up (docs/deployment.md): each has its own
data folder and port, all share `database_url`, `redis_url` and `event_bus = "redis"`.
PostgreSQL and Redis are the session's (tests/conftest.py), each test on a fresh database
and a Redis database of its own. Every test module here is marked slow (several
processes, seconds each).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

# Helpers of the runtime's tests: archive_kit (archives), test_events (an SSE reader).
sys.path.append(str(Path(__file__).resolve().parent.parent / "runtime"))

from cluster_kit import FEED_PLUGIN, MESSAGE_PLUGIN, Cluster, Instance
from courtyard.throwaway import NGINX, Balancer, nginx_balancer

_redis_databases = itertools.count()


@pytest.fixture
def redis_url(redis) -> str:
    """A Redis database of this test's own (1 to 15, emptied first) on the session's
    server: the event stream, and the queues' keys, of one test never meet another's."""
    from redis import Redis

    url = redis.url.rsplit("/", 1)[0] + f"/{next(_redis_databases) % 15 + 1}"
    client = Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Cluster]:
    """Instances to make (`cluster.instance("node-a")`) and start
    (`cluster.start(a, b)`), stopped after the test. The shared plugin folder holds
    `hello` (`/hello` answers {"message": "hello"}) and `feed` (`/feed/sse`,
    `/feed/publish`)."""
    made = Cluster(tmp_path, postgres_url, redis_url)
    made.write_shared_plugin("hello", MESSAGE_PLUGIN.format(message="hello", blueprint="hello"))
    made.write_shared_plugin("feed", FEED_PLUGIN)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def pair(cluster: Cluster) -> tuple[Instance, Instance]:
    """Two instances, node-a and node-b, started."""
    a, b = cluster.instance("node-a"), cluster.instance("node-b")
    cluster.start(a, b)
    return a, b


@pytest.fixture
def load_balancer(tmp_path: Path) -> Iterator[Callable[..., Balancer]]:
    """Start nginx in front of instances: `lb = load_balancer(a, b)` (skipped without
    nginx). Stopped after the test."""
    if not Path(NGINX).is_file():
        pytest.skip("needs nginx (Debian package nginx)")
    count = itertools.count()
    with ExitStack() as stack:

        def start(*instances: Instance, tuning: str = "") -> Balancer:
            folder = tmp_path / f"nginx-{next(count)}"
            ports = [instance.port for instance in instances]
            return stack.enter_context(nginx_balancer(folder, ports, tuning))

        yield start
