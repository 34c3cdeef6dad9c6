"""The request bodies, one pydantic model each, and how a body is read.

Every route that takes a body reads it with `raw_json` (or `body`, which also checks it
against its model): the one place that turns bytes into JSON. Bodies are read as JSON
whatever their Content-Type (curl users forget it), except `text/plain`, the type an HTML
form on another site can post without a preflight. Anything that is not a JSON object
runqy's API can use (not UTF-8, not JSON, `NaN`/`Infinity` or a number too large for a
float, nested deeper than `MAX_DEPTH`, a lone surrogate, a wrong type or a number out of
its bounds) is refused with 400 `VALIDATION_ERROR` before anything is stored.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from quart import request

from . import errors
from .config import describe
from .limits import (
    MAX_CONCURRENCY,
    MAX_DEPTH,
    MAX_EXCHANGE,
    MAX_RETRY,
    MAX_SECONDS,
    MAX_UNIX,
    bad_text,
    json_depth_exceeds,
)

M = TypeVar("M", bound=BaseModel)


def _no_nul(value: str) -> str:
    # Names and ids go into database columns as they are: PostgreSQL text cannot hold NUL.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
ID = Field(min_length=1, max_length=200)
# Durations in seconds: finite (the models refuse NaN and infinities), 0 to 365 days.
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


def _unix(value: Any) -> Any:
    """Unix seconds, or an RFC 3339 time (`2024-01-15T10:30:00Z`) turned into them."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be Unix seconds or an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise ValueError("an RFC 3339 time needs its offset (Z for UTC)")
        try:
            return moment.timestamp()
        except (OverflowError, OSError, ValueError):  # year 1 with a positive offset, ...
            raise ValueError("must be a time between 1970 and 9999") from None
    return value


class _Body(BaseModel):
    """Every body model: no NaN or infinity in any float field."""

    model_config = ConfigDict(allow_inf_nan=False)


class TaskOptions(_Body):
    """Courtyard's options for one task, beside runqy's `queue`, `timeout` and `data`."""

    model_config = ConfigDict(extra="forbid")

    timeout: Seconds | None = Field(default=None, description="seconds; 0: no limit")
    type: Text | None = Field(default=None, min_length=1, max_length=200)
    max_retry: int | None = Field(default=None, ge=0, le=MAX_RETRY)
    process_at: float | None = Field(
        default=None,
        ge=0,
        le=MAX_UNIX,
        description="Unix seconds or an RFC 3339 time: run no earlier (at most 365 days ahead)",
    )
    process_in: Seconds | None = Field(default=None, description="seconds from now")
    unique_key: Text | None = Field(default=None, min_length=1, max_length=400)
    unique: bool = Field(default=False, description="unique by queue, type and payload")
    unique_ttl: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    retention: Seconds | None = Field(default=None, description="seconds; 0: forever")

    @field_validator("process_at", mode="before")
    @classmethod
    def _when(cls, value: Any) -> Any:
        return _unix(value)


class AddTask(TaskOptions):
    """`POST /queue/add` and `POST /api/cli/tasks`: runqy's body (`queue`, `timeout`,
    `data`) with Courtyard's optional task options. Without `data`, every key but `queue`
    and `timeout` is the payload (runqy's flat form), and options do not apply."""

    model_config = ConfigDict(extra="forbid")

    queue: Text = Field(min_length=1, max_length=200)
    data: Any = None


class FlatTask(_Body):
    """runqy's flat form of `POST /queue/add`: `queue`, `timeout`, then the payload."""

    model_config = ConfigDict(extra="allow")

    queue: Text = Field(min_length=1, max_length=200)
    timeout: Seconds | None = None


class Job(TaskOptions):
    """One job of a batch: `data` is its payload; a job without `data` is its payload."""

    data: Any = None


class AddBatch(_Body):
    """`POST /queue/add-batch`: many jobs for one queue, with a default timeout."""

    model_config = ConfigDict(extra="forbid")

    queue: Text = Field(min_length=1, max_length=200)
    timeout: Seconds | None = None
    jobs: list[Any]


class Register(_Body):
    """`POST /worker/register`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: Text = ID
    queue: Text = Field(min_length=1, max_length=200)
    hostname: Text = Field(default="", max_length=255)
    version: Text = Field(default="", max_length=64)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)


class Dequeue(_Body):
    """`POST /worker/dequeue`: `wait` is how long to wait for a task (at most 30 s)."""

    model_config = ConfigDict(extra="ignore")

    worker_id: Text = ID
    queue: Text = Field(min_length=1, max_length=200)
    wait: float = Field(default=0, ge=0, le=30)


class WorkerOnly(_Body):
    """`POST /worker/tasks/{id}/renew` and `.../release`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: Text = ID


class Complete(WorkerOnly):
    """`POST /worker/tasks/{id}/complete`: with `next_queue`, the answer also leases the
    next task of that queue (`next`, null when none is ready): one request per task."""

    result: Any = None
    next_queue: Text | None = Field(default=None, min_length=1, max_length=200)


class Fail(WorkerOnly):
    """`POST /worker/tasks/{id}/fail`: `retry` false archives the task at once."""

    error: str = Field(default="task failed", max_length=65536)
    retry: bool = True

    @field_validator("error")
    @classmethod
    def _printable(cls, value: str) -> str:
        # A task's error text is its own output: keep the report, lose only the NULs
        # (which PostgreSQL text cannot hold).
        return value.replace("\x00", "\ufffd")


class BatchReport(_Body):
    """One report of `POST /worker/batch`: a completion with `result`, or, when `error` is
    given (not null), a failure as `POST /worker/tasks/{id}/fail` records it."""

    model_config = ConfigDict(extra="ignore")

    task_id: Text = ID
    result: Any = None
    error: str | None = Field(default=None, max_length=65536)
    retry: bool = True

    @field_validator("error")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return None if value is None else value.replace("\x00", "\ufffd")


class Batch(_Body):
    """`POST /worker/batch`: record `reports`, then lease up to `lease` tasks, waiting up
    to `wait` seconds when none is ready (at most 30 s)."""

    model_config = ConfigDict(extra="ignore")

    worker_id: Text = ID
    queue: Text = Field(min_length=1, max_length=200)
    reports: list[BatchReport] = Field(default_factory=list, max_length=MAX_EXCHANGE)
    lease: int = Field(default=0, ge=0, le=MAX_EXCHANGE)
    wait: float = Field(default=0, ge=0, le=30)


class LeasedTask(BaseModel):
    """A task leased to a worker, as `POST /worker/dequeue` and `POST /worker/batch` give
    it (`payload` is the task's JSON value; `lease_expires_at` is Unix seconds)."""

    task_id: str
    type: str
    payload: Any = None
    retry_count: int
    max_retry: int
    queue: str
    timeout: float | None
    lease_expires_at: float | None


class ReportError(BaseModel):
    """Why a report was not recorded: `TASK_NOT_FOUND` or `LEASE_LOST`."""

    code: str
    message: str


class ReportOutcome(BaseModel):
    """The outcome of one report: the task's new `state` (`completed`, `retry`, `pending`
    or `archived`), or the `error` that refused it."""

    task_id: str
    state: str | None = None
    error: ReportError | None = None


class BatchAnswer(BaseModel):
    """The answer of `POST /worker/batch`: one outcome per report, in order, and the
    tasks leased (none when none came within `wait`)."""

    reports: list[ReportOutcome]
    tasks: list[LeasedTask]


class Heartbeat(_Body):
    """`POST /worker/heartbeat`."""

    model_config = ConfigDict(extra="ignore")

    worker_id: Text = ID
    queue: Text = Field(default="", max_length=200)
    status: Text = Field(default="ready", max_length=64)
    active_tasks: list[Annotated[Text, Field(max_length=200)]] = Field(
        default_factory=list, max_length=10000
    )
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    hostname: Text = Field(default="", max_length=255)
    version: Text = Field(default="", max_length=64)


class TaskListQuery(BaseModel):
    """The query of `GET /api/cli/queues/{queue}/tasks` (documented; checked by hand)."""

    state: str = Field(default="pending", description="pending, active, scheduled, ...")
    limit: int = Field(default=10, ge=1, le=1000)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class StatusQuery(BaseModel):
    """The query of `GET /queue/{task_id}`."""

    wait: bool = Field(default=False, description="wait up to 30 s for the task to finish")


class CreateConfig(_Body):
    """`POST /api/cli/configs`: a queue as runqy's YAML writes it, with its `name`."""

    model_config = ConfigDict(extra="allow")

    name: Text = Field(min_length=1, max_length=64)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 parses as inf
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON, or None when it is empty (or only whitespace).

    Strict where Python's `json` is lenient: UTF-8 only, no `NaN`, `Infinity` or number
    that overflows a float, at most `MAX_DEPTH` levels of nesting, no lone surrogates.

    :raises ApiError: 400 VALIDATION_ERROR saying what is wrong (never echoing the body).
    """
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.invalid(f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise errors.invalid(f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise errors.invalid(f"the request body is not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # ours, or an integer past Python's digit limit
        raise errors.invalid(f"the request body is not usable JSON: {exc}") from None
    if json_depth_exceeds(data):
        raise errors.invalid(f"the request body nests deeper than {MAX_DEPTH} levels")
    problem = bad_text(data)
    if problem is not None:
        raise errors.invalid(f"the request body is not usable: {problem}")
    return data


async def raw_json() -> Any:
    """The request's JSON body, checked by `parse_json`; None when there is none. The one
    way routes of this plugin read a body.

    :raises ApiError: 400 VALIDATION_ERROR for a `text/plain` body or one `parse_json`
        refuses.
    """
    if request.mimetype == "text/plain":
        # What a form on another site can post without a preflight: never a client of ours.
        raise errors.invalid("send the body as application/json, not text/plain")
    return parse_json(await request.get_data(as_text=False))


def check(model: type[M], data: Any) -> M:
    """`data` as `model`. :raises ApiError: 400 VALIDATION_ERROR naming the bad key."""
    if not isinstance(data, dict):
        raise errors.invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.invalid(describe(exc)) from None
    except (TypeError, OverflowError, RecursionError):  # a validator's own failure
        raise errors.invalid("the request body has a value of the wrong type") from None


async def body(model: type[M]) -> M:
    """The request's JSON body as `model`."""
    return check(model, await raw_json())
