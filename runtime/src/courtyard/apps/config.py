"""How an ASGI app's workers run: the one definition of those settings and their checks,
and `WorkerApp`, the app version the worker pool is handed.

The manifest model (`registry.AppConfig`) extends `AppSettings` with what only the
registry and the static server read (`entry`, `index`, `spa`); the worker pool takes an
`AppSettings` (an `AppConfig` is one). Pure data: nothing here keeps state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AppSettings(BaseModel):
    """How one app's workers run. Durations are in seconds.

    :ivar timeout: for one request, until its response is complete; past it 504 APP_TIMEOUT
        and the worker is killed. For a WebSocket, the handshake only.
    :ivar idle_timeout: a worker idle this long is stopped.
    :ivar ttl: a worker older than this is recycled (a successor starts; it retires once
        that one is ready and its own requests are done); 0 starts a fresh process for
        every request and stops it after.
    :ivar max_requests: a worker is recycled, as for `ttl`, after serving this many.
    :ivar processes: how many workers of the version may serve at once: one serves, and
        another starts when each has several requests in flight; 0 for one per usable
        core.
    :ivar max_body_size: a request body above it (bytes) is refused with 413.
    :ivar max_memory_mb: the resident memory of the worker and what it started, past
        which it is recycled (its address space is capped at four times that), and the size of
        its private /tmp; 0 for none.
    :ivar env: the app's own environment variables, the only ones it gets besides a short
        allow-list (`launch.ENV_ALLOW_LIST`) and the runtime's own few.
    :ivar public_routes: stored for the auth layer; no effect here.
    :ivar network: False runs the sandboxed worker without a network (loopback only).
    :ivar forward_credentials: True forwards `Authorization`, `Cookie`, `X-API-Key` and the
        runtime's internal headers to the app; by default they are removed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=30.0, gt=0)
    idle_timeout: float = Field(default=300.0, gt=0)
    ttl: float = Field(default=3600.0, ge=0)
    max_requests: int = Field(default=1000, ge=1)
    processes: int = Field(default=0, ge=0)  # 0: one per usable core
    max_body_size: int = Field(default=10 * 1024**2, ge=0)
    max_memory_mb: int = Field(default=1024, ge=0)  # 0: no limit
    env: dict[str, str] = Field(default_factory=dict)
    public_routes: tuple[str, ...] = ()
    network: bool = True
    forward_credentials: bool = False

    @field_validator("max_memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("must be 0 (no limit) or at least 16")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not ENV_NAME_RE.fullmatch(name) or "\0" in text:
                raise ValueError(f"{name!r} is not a valid environment variable")
        return value

    def __hash__(self) -> int:
        # `env` (a dict) is left out; equal settings still hash equal.
        return hash(tuple(v for k, v in self if k != "env"))


@dataclass(frozen=True)
class WorkerApp:
    """An app version to run in workers.

    :ivar key: unique id of the version, e.g. "@acme/shop@1.2.0"; workers are per key.
    :ivar root: the version folder: the worker's working directory, first on `sys.path`.
    :ivar entry: "module:attr" of the ASGI application (attr may be dotted).
    """

    key: str
    root: Path
    entry: str
    settings: AppSettings = field(default_factory=AppSettings)

    def __post_init__(self) -> None:
        module, _, attr = self.entry.partition(":")
        if not module or not attr:
            raise ValueError(f"entry {self.entry!r} is not of the form module:attr")

    @property
    def name(self) -> str:
        """The app's name: the key without its version ("@acme/shop")."""
        return self.key.rpartition("@")[0] or self.key
