"""What the worker receives from the server and hands to the task process.

`Registration` is the answer of `POST /worker/register`, `Assignment` one task of
`POST /worker/dequeue`, and `Outcome` what the task process answered for it. Parsing is
strict where a wrong value would do harm (a missing task id, a negative timeout) and
lenient where runqy's own worker is (unknown keys are ignored).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

LONG_RUNNING = "long_running"
ONE_SHOT = "one_shot"
MODES = (LONG_RUNNING, ONE_SHOT)

DEFAULT_STARTUP_TIMEOUT = 60.0  # runqy's default when startup_timeout_secs is 0 or unset
DEFAULT_LEASE = 30.0
DEFAULT_HEARTBEAT = 10.0


class ProtocolError(ValueError):
    """The server answered something the worker protocol does not allow."""


def _number(value: Any, default: float, name: str, *, minimum: float = 0.0) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ProtocolError(f"{name} must be a number, not {value!r}")
    if value < minimum:
        raise ProtocolError(f"{name} must be at least {minimum}, not {value!r}")
    return float(value)


def _text(value: Any, name: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string, not {value!r}")
    return value


@dataclass(frozen=True)
class DeploymentSpec:
    """The `deployment` block of a queue: where the task code lives and how it starts."""

    git_url: str
    branch: str
    startup_cmd: str
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    requirements_file: str = ""
    mode: str = LONG_RUNNING
    code_path: str = ""
    vaults: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any, mode: str = LONG_RUNNING) -> DeploymentSpec:
        """Read a `deployment` object; `mode` is the queue's, which the block may override."""
        if not isinstance(data, dict):
            raise ProtocolError("the registration has no deployment object")
        startup_cmd = _text(data.get("startup_cmd"), "deployment.startup_cmd").strip()
        if not startup_cmd:
            raise ProtocolError("deployment.startup_cmd is empty")
        git_url = _text(data.get("git_url"), "deployment.git_url").strip()
        if not git_url:
            raise ProtocolError("deployment.git_url is empty")
        mode = _text(data.get("mode"), "deployment.mode", mode) or mode
        if mode not in MODES:
            raise ProtocolError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        vaults = data.get("vaults") or []
        if not isinstance(vaults, list) or not all(isinstance(v, str) for v in vaults):
            raise ProtocolError("deployment.vaults must be a list of vault names")
        timeout = _number(
            data.get("startup_timeout_secs"), DEFAULT_STARTUP_TIMEOUT, "startup_timeout_secs"
        )
        return cls(
            git_url=git_url,
            branch=_text(data.get("branch"), "deployment.branch").strip(),
            startup_cmd=startup_cmd,
            startup_timeout=timeout or DEFAULT_STARTUP_TIMEOUT,
            requirements_file=_text(data.get("requirements_file"), "requirements_file").strip(),
            mode=mode,
            code_path=_text(data.get("code_path"), "deployment.code_path").strip(),
            vaults=tuple(vaults),
        )


@dataclass(frozen=True)
class Registration:
    """The server's answer to `POST /worker/register`."""

    queue: str
    priority: int
    deployment: DeploymentSpec
    vaults: dict[str, str] = field(default_factory=dict)
    lease_seconds: float = DEFAULT_LEASE
    heartbeat_seconds: float = DEFAULT_HEARTBEAT

    @property
    def mode(self) -> str:
        """`long_running` (one process for every task) or `one_shot` (one per task)."""
        return self.deployment.mode

    @classmethod
    def parse(cls, data: Any) -> Registration:
        """Read the answer; :raises ProtocolError: when it lacks what the worker needs."""
        if not isinstance(data, dict):
            raise ProtocolError("the registration answer is not a JSON object")
        queue = data.get("queue")
        if not isinstance(queue, dict):
            raise ProtocolError("the registration answer has no queue object")
        name = _text(queue.get("name"), "queue.name")
        mode = _text(queue.get("mode"), "queue.mode", LONG_RUNNING) or LONG_RUNNING
        priority = queue.get("priority", 0)
        vaults = data.get("vaults") or {}
        if not isinstance(vaults, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in vaults.items()
        ):
            raise ProtocolError("vaults must be an object of strings")
        timing = data.get("courtyard") or {}
        if not isinstance(timing, dict):
            raise ProtocolError("the courtyard block must be an object")
        return cls(
            queue=name,
            priority=priority if isinstance(priority, int) else 0,
            deployment=DeploymentSpec.parse(data.get("deployment"), mode),
            vaults=dict(vaults),
            lease_seconds=_number(
                timing.get("lease_seconds"), DEFAULT_LEASE, "lease_seconds", minimum=1
            ),
            heartbeat_seconds=_number(
                timing.get("heartbeat_seconds"), DEFAULT_HEARTBEAT, "heartbeat_seconds", minimum=0.1
            ),
        )


@dataclass(frozen=True)
class Assignment:
    """One task the server leased to this worker."""

    task_id: str
    type: str
    payload: Any
    retry_count: int
    max_retry: int
    queue: str
    timeout: float  # seconds; 0 means no limit
    lease_expires_at: Any = None

    @classmethod
    def parse(cls, data: Any) -> Assignment:
        """Read the `task` object of a dequeue answer."""
        if not isinstance(data, dict):
            raise ProtocolError("the dequeue answer has no task object")
        task_id = data.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProtocolError("the dequeued task has no task_id")
        retry_count = data.get("retry_count") or 0
        max_retry = data.get("max_retry") or 0
        if not isinstance(retry_count, int) or not isinstance(max_retry, int):
            raise ProtocolError("retry_count and max_retry must be integers")
        return cls(
            task_id=task_id,
            type=_text(data.get("type"), "type"),
            payload=data.get("payload"),
            retry_count=retry_count,
            max_retry=max_retry,
            queue=_text(data.get("queue"), "queue"),
            timeout=_number(data.get("timeout"), 0.0, "timeout"),
            lease_expires_at=data.get("lease_expires_at"),
        )

    def request_line(self) -> bytes:
        """The JSON line runqy's stdio protocol sends to the task process for this task."""
        message = {
            "task_id": self.task_id,
            "type": self.type,
            "payload": self.payload,
            "retry_count": self.retry_count,
            "max_retry": self.max_retry,
            "queue": self.queue,
        }
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Outcome:
    """What the task process answered: a result, or an error and whether to retry."""

    result: Any = None
    error: str | None = None
    retry: bool = False

    @property
    def ok(self) -> bool:
        """True when the task succeeded."""
        return self.error is None

    @classmethod
    def from_response(cls, message: dict[str, Any]) -> Outcome:
        """Read `{"task_id", "result", "error", "retry"}`; an empty error is success."""
        error = message.get("error")
        if error is None or error == "":
            return cls(result=message.get("result"))
        if not isinstance(error, str):
            error = json.dumps(error)
        return cls(error=error, retry=message.get("retry") is True)
