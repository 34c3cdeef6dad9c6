"""Shared set-up of the platform tests: specs, fast settings, and helpers that run the
go-web-nats platform API's flows against a runtime."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import httpx

# Fast clocks: leases, sweeps, retries and polls happen within a test.
QUEUES_FAST = {
    "lease_seconds": 1,
    "poll_seconds": 0.05,
    "sweep_seconds": 0.05,
    "heartbeat_seconds": 0.2,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
}
PLATFORM_FAST = {
    "wait_seconds": 20,
    "poll_seconds": 0.05,
    "maintenance_seconds": 0.1,
    "buildkit_addr": "",
}

SPEC: dict[str, Any] = {
    "apiVersion": "platform.example.com/v2",
    "kind": "App",
    "name": "demo-app",
    "runtime": "go_1.26",
    "capabilities": ["http"],
    "environments": {
        "dev": {"vars": {"LOG_LEVEL": "info"}},
        "staging": {"vars": {"LOG_LEVEL": "warn"}},
    },
    "networkPolicies": {"ingress": "internal", "egress": "none"},
}


def spec(**changes: Any) -> dict[str, Any]:
    """A copy of `SPEC` with top-level keys changed (None removes one)."""
    out = copy.deepcopy(SPEC)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def settings(
    queues: dict[str, Any] | None = None, vaults: bool = False, **platform: Any
) -> dict[str, Any]:
    """Runtime settings serving the queues and platform plugins (and `vaults`), with
    fast clocks."""
    return {
        "only_plugins": ["queues", "platform", *(["vaults"] if vaults else [])],
        "strict": True,
        "plugins": {
            "queues": {**QUEUES_FAST, **(queues or {})},
            "platform": {**PLATFORM_FAST, **platform},
        },
    }


async def register(client: httpx.AsyncClient, body_spec: dict[str, Any] | None = None) -> Any:
    """`create` through a registration event; returns the answer's JSON (asserting 200)."""
    answer = await client.post(
        "/api/events/registration", json={"action": "create", "spec": body_spec or SPEC}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def wait_op(client: httpx.AsyncClient, op_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The operation once finished (polling `GET /api/ops/{id}`)."""
    deadline = time.monotonic() + timeout
    while True:
        op = (await client.get(f"/api/ops/{op_id}")).json()
        if op["status"] in ("done", "error") or time.monotonic() > deadline:
            return op
        await asyncio.sleep(0.05)


def assert_done(op: dict[str, Any]) -> None:
    """Every step done and the operation with it."""
    assert op["status"] == "done", op
    assert all(step["status"] == "done" for step in op["steps"]), op["steps"]
