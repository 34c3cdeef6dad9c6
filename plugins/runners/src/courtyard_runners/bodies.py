"""Request bodies of RustCI's runner API and of the agent protocol, one pydantic model
each, and the one way a body is read (`body`).

Bodies are read as JSON whatever their Content-Type (curl users forget it), except
`text/plain`, which a form on another site can post without a preflight. Anything
unusable (not UTF-8, not JSON, NaN, nested deeper than `MAX_DEPTH`, a NUL in a name, a
wrong type, a number out of bounds, an unknown key where none is allowed) is refused with
400 INVALID_REQUEST naming the field, before anything is stored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from quart import request

from . import errors

M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 32
MAX_JSON_TEXT = 64 * 1024  # metadata, resources, docker_config: each at most this as JSON
RUNNER_TYPES = ("docker", "kubernetes", "native", "local")
EXECUTORS = ("native", "isolation", "docker")
CLEANUP_POLICIES = ("always", "on_success", "on_failure", "never")
JOB_STATES = ("queued", "running", "completed", "failed", "cancelled", "timed_out")
LEVELS = ("debug", "info", "warn", "error")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SECONDS = 7 * 86400  # the longest job timeout: a week


def _clean(value: str) -> str:
    # Names go into columns as they are: PostgreSQL text cannot hold NUL.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _small_json(value: Any) -> Any:
    if len(json.dumps(value)) > MAX_JSON_TEXT:
        raise ValueError(f"must be at most {MAX_JSON_TEXT} bytes as JSON")
    return value


Text = Annotated[str, AfterValidator(_clean)]
Name = Annotated[Text, Field(min_length=1, max_length=200)]
Tag = Annotated[Text, Field(min_length=1, max_length=64)]
Obj = Annotated[dict[str, Any], AfterValidator(_small_json)]


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")


class Resources(_Body):
    """What a runner offers; RustCI's three numbers, and any others the runner adds."""

    model_config = ConfigDict(allow_inf_nan=False, extra="allow")

    cpu_cores: float | None = Field(default=None, ge=0, le=1_000_000)
    memory_gb: float | None = Field(default=None, ge=0, le=1_000_000_000)
    disk_gb: float | None = Field(default=None, ge=0, le=1_000_000_000)


class Register(_Body):
    """`POST /api/runners/register`."""

    name: Name
    type: Literal["docker", "kubernetes", "native", "local"]
    host: Text | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    capabilities: list[Tag] = Field(default_factory=list, max_length=64)
    metadata: Obj = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    resources: Resources = Field(default_factory=Resources)


class Update(_Body):
    """`PUT /api/runners/{id}`: what is given replaces what was; `metadata` is merged."""

    name: Name | None = None
    host: Text | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    capabilities: list[Tag] | None = Field(default=None, max_length=64)
    metadata: Obj | None = None
    tags: list[Tag] | None = Field(default=None, max_length=64)
    resources: Resources | None = None


class Step(_Body):
    """One step of a job: a shell command."""

    name: Name
    run: Annotated[Text, Field(min_length=1, max_length=65536)]


def _env(value: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key) or len(key) > 200:
            raise ValueError(f"{key[:40]!r} is not an environment variable name")
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise ValueError(f"{key}: values are strings, numbers or booleans")
        if "\x00" in item:
            raise ValueError(f"{key}: must not contain NUL characters")
        out[key] = item
    if len(json.dumps(out)) > 256 * 1024:
        raise ValueError("must be at most 256 KiB as JSON")
    return out


class Job(_Body):
    """`POST /api/runners/{id}/jobs`."""

    name: Name
    steps: list[Step] = Field(min_length=1, max_length=100)
    environment: Annotated[dict[str, Any], AfterValidator(_env)] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS, description="seconds")
    retry_count: int = Field(default=0, ge=0, le=10)


class ResourceLimits(_Body):
    """`resource_limits` of a runner's configuration (Kubernetes-style quantities)."""

    cpu_limit: Text | float | None = Field(default=None, description='"2000m" or cores')
    memory_limit: Text | float | None = Field(default=None, description='"4Gi" or bytes')
    disk_limit: Text | float | None = Field(default=None, description='"10Gi" or bytes')


class Config(_Body):
    """`PUT /api/runners/{id}/config` (and bulk `update_config`): only what is given."""

    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=1000)
    job_timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    cleanup_policy: Literal["always", "on_success", "on_failure", "never"] | None = None
    resource_limits: ResourceLimits | None = None
    executor: Literal["native", "isolation", "docker"] | None = None
    docker_config: Obj | None = None
    isolation_config: Obj | None = None


class Stop(_Body):
    """`POST /api/runners/{id}/stop` and `/restart`."""

    graceful: bool = False
    timeout: float = Field(default=300, ge=0, le=86400)
    reason: Text | None = Field(default=None, max_length=500)


class Filters(_Body):
    """Which runners a bulk operation acts on."""

    status: Literal["active", "inactive", "error"] | None = None
    type: Literal["docker", "kubernetes", "native", "local"] | None = None
    tags: list[Tag] | Text | None = None


class Bulk(_Body):
    """`POST /api/runners/bulk`."""

    operation: Literal["update_config", "start", "stop", "restart", "delete"]
    filters: Filters = Field(default_factory=Filters)
    data: Obj = Field(default_factory=dict)


# The agent protocol ---------------------------------------------------------------------

Session = Annotated[Text, Field(min_length=1, max_length=64)]


class Poll(_Body):
    """`POST /api/runners/{id}/agent/poll`: wait up to `wait` seconds for work."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    session: Session
    wait: float = Field(default=25, ge=0, le=60)
    capacity: int = Field(default=1, ge=0, le=1000)
    running: list[Session] = Field(default_factory=list, max_length=1000)
    state: Literal["starting", "running", "stopping", "stopped", "restarting"] = "running"
    config_version: float | None = Field(
        default=None, description="the configuration the agent has: a newer one answers"
    )


class Load(_Body):
    """An agent's load, as psutil measures it (percentages)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    cpu_usage: float = Field(default=0, ge=0, le=100)
    memory_usage: float = Field(default=0, ge=0, le=100)
    disk_usage: float = Field(default=0, ge=0, le=100)
    active_jobs: int = Field(default=0, ge=0, le=100000)


class Heartbeat(_Body):
    """`POST /api/runners/{id}/agent/heartbeat`."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    session: Session
    state: Literal["starting", "running", "stopping", "stopped", "restarting"] = "running"
    load: Load = Field(default_factory=Load)
    checks: Obj = Field(default_factory=dict)
    capabilities_status: dict[str, Literal["available", "unavailable"]] = Field(
        default_factory=dict
    )
    error: Text | None = Field(default=None, max_length=2000)
    sent_at: float | None = Field(default=None, ge=0)


class Line(_Body):
    """One log line an agent sends."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    ts: float = Field(ge=0, le=253_402_300_799)
    level: Literal["debug", "info", "warn", "error"] = "info"
    message: str = Field(max_length=65536)
    step: Text | None = Field(default=None, max_length=200)


class Lines(_Body):
    """`POST /api/runners/{id}/agent/jobs/{job_id}/logs` (or `/agent/logs`)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    session: Session
    lines: list[Line] = Field(max_length=10000)


class StepResult(_Body):
    """How one step ended."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    name: Name
    exit_code: int | None = None
    duration: float = Field(default=0, ge=0)


class Finish(_Body):
    """`POST /api/runners/{id}/agent/jobs/{job_id}/finish`."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    session: Session
    status: Literal["completed", "failed", "cancelled", "timed_out"]
    exit_code: int | None = None
    error: str | None = Field(default=None, max_length=4000)
    steps: list[StepResult] = Field(default_factory=list, max_length=100)


# Reading a body -------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _depth_exceeds(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON (None when empty), strictly: UTF-8, finite numbers, no lone
    surrogates, at most `MAX_DEPTH` levels.

    :raises RunnerError: 400 INVALID_REQUEST saying what is wrong (never the body).
    """
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except UnicodeDecodeError as exc:
        raise errors.invalid(f"the request body is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise errors.invalid("the request body nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise errors.invalid(f"the request body is not valid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise errors.invalid(f"the request body is not usable JSON: {exc}") from None
    if _depth_exceeds(data):
        raise errors.invalid(f"the request body nests deeper than {MAX_DEPTH} levels")
    try:
        text.encode("utf-8")
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.invalid("the request body holds a lone surrogate: not valid Unicode") from None
    return data


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error, naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"


def check(model: type[M], data: Any, *, optional: bool = False) -> M:
    """`data` as `model`; an empty body is `{}` when `optional`.

    :raises RunnerError: 400 INVALID_REQUEST naming the bad field.
    """
    if data is None and optional:
        data = {}
    if not isinstance(data, dict):
        raise errors.invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.invalid(describe(exc)) from None


async def body(model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body as `model`.

    :raises RunnerError: 400 INVALID_REQUEST (a `text/plain` body included).
    """
    if request.mimetype == "text/plain":
        raise errors.invalid("send the body as application/json, not text/plain")
    return check(model, parse_json(await request.get_data(as_text=False)), optional=optional)
