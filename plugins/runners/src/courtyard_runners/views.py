"""Rows as RustCI's runner API shows them."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.engine import RowMapping

from .formats import iso, loads

LEVEL_ORDER = {"debug": 0, "info": 1, "warn": 2, "error": 3}
MIN_DISK_GB = 1.0
MIN_MEMORY_GB = 0.25


def current_load(row: RowMapping) -> dict[str, Any]:
    """The load the agent last reported (zeros before its first heartbeat)."""
    load = loads(row["load"], {})
    return {
        "active_jobs": int(load.get("active_jobs", 0)),
        "cpu_usage": float(load.get("cpu_usage", 0.0)),
        "memory_usage": float(load.get("memory_usage", 0.0)),
        "disk_usage": float(load.get("disk_usage", 0.0)),
    }


def runner(row: RowMapping) -> dict[str, Any]:
    """A runner, as listed and shown (without `statistics`)."""
    metadata = loads(row["metadata"], {})
    metadata["registered_at"] = iso(row["registered_at"])
    metadata["last_seen"] = iso(row["last_heartbeat"])
    return {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "status": row["status"],
        "state": row["state"],
        "host": row["host"],
        "port": row["port"],
        "capabilities": loads(row["capabilities"], []),
        "tags": loads(row["tags"], []),
        "metadata": metadata,
        "resources": loads(row["resources"], {}),
        "current_load": current_load(row),
    }


def job(row: RowMapping) -> dict[str, Any]:
    """A job, with its times, duration (seconds) and exit code."""
    started, completed = row["started_at"], row["completed_at"]
    if started is not None and completed is not None:
        duration: float | None = round(completed - started, 3)
    elif started is not None and row["status"] == "running":
        duration = round(time.time() - started, 3)
    else:
        duration = None
    return {
        "job_id": row["id"],
        "runner_id": row["runner_id"],
        "name": row["name"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(started),
        "completed_at": iso(completed),
        "duration": duration,
        "exit_code": row["exit_code"],
        "attempt": row["attempt"],
        "retry_count": row["retry_count"],
        "timeout": row["timeout"],
        "error": row["error"],
        "cancel_requested": bool(row["cancel_requested"]),
        "steps": loads(row["steps"], []),
        "step_results": loads(row["step_results"], []),
    }


def log(row: RowMapping) -> dict[str, Any]:
    """A log entry: `timestamp`, `level`, `message`, `context` (`job_id`, `step`)."""
    return {
        "id": row["seq"],
        "timestamp": iso(row["ts"]),
        "level": row["level"],
        "message": row["message"],
        "context": {"job_id": row["job_id"], "step": row["step"]},
    }


def health(row: RowMapping, connected: bool) -> dict[str, Any]:
    """The health checks: connectivity from the last heartbeat (with the round trip the
    agent measured), disk space and memory as the agent measured them, and the Docker
    daemon when the runner declares `docker`."""
    report = loads(row["report"], {})
    checks_in = report.get("checks") or {}
    connectivity: dict[str, Any] = {"status": "pass" if connected else "fail"}
    rtt = (checks_in.get("connectivity") or {}).get("response_time_ms")
    if connected and isinstance(rtt, int | float):
        connectivity["response_time_ms"] = round(float(rtt), 1)
    if not connected:
        connectivity["message"] = (
            "no heartbeat yet" if row["last_heartbeat"] is None else "heartbeats stopped"
        )
    checks: dict[str, Any] = {"connectivity": connectivity}
    if "docker" in loads(row["capabilities"], []):
        docker = checks_in.get("docker_daemon")
        checks["docker_daemon"] = (
            docker if isinstance(docker, dict) else {"status": "fail", "message": "not checked"}
        )
    for name, floor in (("disk_space", MIN_DISK_GB), ("memory", MIN_MEMORY_GB)):
        found = checks_in.get(name) or {}
        available = found.get("available_gb")
        if isinstance(available, int | float):
            checks[name] = {
                "status": "pass" if available >= floor else "fail",
                "available_gb": round(float(available), 1),
            }
        else:
            checks[name] = {"status": "fail", "message": "not reported"}
    if not connected:
        overall = "unhealthy"
    elif report.get("error") or any(c.get("status") != "pass" for c in checks.values()):
        overall = "degraded"
    else:
        overall = "healthy"
    return {
        "runner_id": row["id"],
        "health": overall,
        "checks": checks,
        "last_check": iso(report.get("received_at")),
    }


def capabilities_status(row: RowMapping, connected: bool) -> dict[str, str]:
    """Each declared capability as the agent found it (`unknown` without an agent)."""
    found = (loads(row["report"], {}).get("capabilities_status")) or {}
    return {
        name: (found.get(name, "unavailable") if connected else "unknown")
        for name in loads(row["capabilities"], [])
    }
