"""Job states, a new runner's defaults, and the service's options: what the parts of
the service (service.py) and the routes share."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

FINISHED = ("completed", "failed", "cancelled", "timed_out")
ACTIVE = ("queued", "running")
METRIC_PERIODS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
RESOLUTIONS = {"1m": 60, "5m": 300, "1h": 3600}
DEFAULT_RESOLUTION = {"1h": "1m", "24h": "5m", "7d": "1h", "30d": "1h"}
KEEP_SAMPLES = max(METRIC_PERIODS.values())
RETRYABLE = ("failed", "timed_out")

Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]


def hash_token(token: str) -> str:
    """The stored form of a registration token: its SHA-256 (the token is 256 random
    bits, so a fast hash is as safe as a slow one, and costs every agent request nothing)."""
    return hashlib.sha256(token.encode()).hexdigest()


def default_config(kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A new runner's configuration; `max_concurrent_jobs` from its metadata if given."""
    wanted = metadata.get("max_concurrent_jobs")
    concurrent = wanted if isinstance(wanted, int) and 1 <= wanted <= 1000 else 1
    return {
        "max_concurrent_jobs": concurrent,
        "job_timeout": 3600,
        "cleanup_policy": "always",
        "resource_limits": {"cpu_limit": None, "memory_limit": None, "disk_limit": None},
        "executor": "docker" if kind == "docker" else "native",
        "docker_config": {"privileged": False, "network_mode": "bridge", "volumes": []},
        "isolation_config": {"network": False},
    }


# What needs the agent to restart: the executor (the agent builds it when it starts).
RESTART_KEYS = ("executor",)


@dataclass
class Options:
    """The plugin's settings the service uses."""

    heartbeat_seconds: float = 10.0
    missed_heartbeats: int = 3
    sweep_seconds: float = 1.0
    log_retention_seconds: float = 30 * 86400


@dataclass
class Claimed:
    """What a poll hands an agent."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_version: float = 0.0
    capabilities: list[str] = field(default_factory=list)
