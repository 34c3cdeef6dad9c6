"""The request bodies, one pydantic model each, and how a body is read.

Bodies are read as JSON whatever their Content-Type (curl users forget it), checked
against their model, and refused with 400 `VALIDATION_ERROR` naming the bad key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from quart import request

from . import errors
from .config import describe

M = TypeVar("M", bound=BaseModel)
ID = Field(min_length=1, max_length=200)


def _unix(value: Any) -> Any:
    """Unix seconds, or an RFC 3339 time (`2024-01-15T10:30:00Z`) turned into them."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be Unix seconds or an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise ValueError("an RFC 3339 time needs its offset (Z for UTC)")
        return moment.timestamp()
    return value


class TaskOptions(BaseModel):
    """Courtyard's options for one task, beside runqy's `queue`, `timeout` and `data`."""

    model_config = ConfigDict(extra="forbid")

    timeout: float | None = Field(default=None, ge=0, description="seconds; 0: no limit")
    type: str | None = Field(default=None, min_length=1, max_length=200)
    max_retry: int | None = Field(default=None, ge=0)
    process_at: float | None = Field(
        default=None, description="Unix seconds or an RFC 3339 time: run no earlier"
    )
    process_in: float | None = Field(default=None, ge=0, description="seconds from now")
    unique_key: str | None = Field(default=None, min_length=1, max_length=400)
    unique: bool = Field(default=False, description="unique by queue, type and payload")
    unique_ttl: float | None = Field(default=None, gt=0)
    retention: float | None = Field(default=None, ge=0)

    @field_validator("process_at", mode="before")
    @classmethod
    def _when(cls, value: Any) -> Any:
        return _unix(value)


class AddTask(TaskOptions):
    """`POST /queue/add` and `POST /api/cli/tasks`: runqy's body (`queue`, `timeout`,
    `data`) with Courtyard's optional task options. Without `data`, every key but `queue`
    and `timeout` is the payload (runqy's flat form), and options do not apply."""

    model_config = ConfigDict(extra="forbid")

    queue: str = Field(min_length=1, max_length=200)
    data: Any = None


class FlatTask(BaseModel):
    """runqy's flat form of `POST /queue/add`: `queue`, `timeout`, then the payload."""

    model_config = ConfigDict(extra="allow")

    queue: str = Field(min_length=1, max_length=200)
    timeout: float | None = Field(default=None, ge=0)


class Job(TaskOptions):
    """One job of a batch: `data` is its payload; a job without `data` is its payload."""

    data: Any = None


class AddBatch(BaseModel):
    """`POST /queue/add-batch`: many jobs for one queue, with a default timeout."""

    model_config = ConfigDict(extra="forbid")

    queue: str = Field(min_length=1, max_length=200)
    timeout: float | None = Field(default=None, ge=0)
    jobs: list[Any]


class Register(BaseModel):
    """`POST /worker/register`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str = ID
    queue: str = Field(min_length=1, max_length=200)
    hostname: str = Field(default="", max_length=255)
    version: str = Field(default="", max_length=64)
    concurrency: int = Field(default=1, ge=1)


class Dequeue(BaseModel):
    """`POST /worker/dequeue`: `wait` is how long to wait for a task (at most 30 s)."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str = ID
    queue: str = Field(min_length=1, max_length=200)
    wait: float = Field(default=0, ge=0, le=30)


class WorkerOnly(BaseModel):
    """`POST /worker/tasks/{id}/renew` and `.../release`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str = ID


class Complete(WorkerOnly):
    """`POST /worker/tasks/{id}/complete`: with `next_queue`, the answer also leases the
    next task of that queue (`next`, null when none is ready): one request per task."""

    result: Any = None
    next_queue: str | None = Field(default=None, min_length=1, max_length=200)


class Fail(WorkerOnly):
    """`POST /worker/tasks/{id}/fail`: `retry` false archives the task at once."""

    error: str = Field(default="task failed", max_length=65536)
    retry: bool = True


class Heartbeat(BaseModel):
    """`POST /worker/heartbeat`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str = ID
    queue: str = Field(default="", max_length=200)
    status: str = Field(default="ready", max_length=64)
    active_tasks: list[str] = Field(default_factory=list, max_length=10000)
    concurrency: int = Field(default=1, ge=1)
    hostname: str = Field(default="", max_length=255)
    version: str = Field(default="", max_length=64)


class TaskListQuery(BaseModel):
    """The query of `GET /api/cli/queues/{queue}/tasks` (documented; checked by hand)."""

    state: str = Field(default="pending", description="pending, active, scheduled, ...")
    limit: int = Field(default=10, ge=1, le=1000)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class StatusQuery(BaseModel):
    """The query of `GET /queue/{task_id}`."""

    wait: bool = Field(default=False, description="wait up to 30 s for the task to finish")


class CreateConfig(BaseModel):
    """`POST /api/cli/configs`: a queue as runqy's YAML writes it, with its `name`."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64)


async def raw_json() -> Any:
    """The request's JSON body (any Content-Type); None when there is none.

    :raises ApiError: 400 when the body is not JSON.
    """
    body = await request.get_data(as_text=False)
    if not body.strip():
        return None
    data = await request.get_json(force=True, silent=True)
    if data is None:
        raise errors.invalid("the request body is not valid JSON")
    return data


def check(model: type[M], data: Any) -> M:
    """`data` as `model`. :raises ApiError: 400 VALIDATION_ERROR naming the bad key."""
    if not isinstance(data, dict):
        raise errors.invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.invalid(describe(exc)) from None


async def body(model: type[M]) -> M:
    """The request's JSON body as `model`."""
    return check(model, await raw_json())
