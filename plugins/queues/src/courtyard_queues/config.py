"""runqy's queue configuration: the YAML format, its checks, and the files it comes from.

A file holds a `queues` table; each queue has a `priority` or a list of `sub_queues`
(`inference.high`, `inference.low`; a queue with only a priority has one sub-queue,
`<name>.default`), a `deployment` (where the worker gets the task code and how it starts
it, with optional `limits`), and optional `input`/`output` field schemas::

    queues:
      inference:
        sub_queues:
          - {name: high, priority: 6}
          - {name: low, priority: 1}
        deployment:
          git_url: https://github.com/example/repo.git
          branch: main
          startup_cmd: python main.py
          startup_timeout_secs: 300
          mode: long_running        # or one_shot
          vaults: [api-keys]
          limits: {max_retry: 3, ttl_completed: 24h, active_timeout: 5m}
        input:
          - {name: prompt, type: [string]}

Courtyard adds two optional keys per queue: `strict_priority` (sub-queues are served
strictly by priority instead of weighted by it) and `description`. Unknown keys are
reported as warnings, not errors, so a file written for a newer runqy still loads.

Every number is finite and bounded (`limits`), and no string holds a NUL character or a
lone surrogate: a configuration becomes commands, paths and environment variables of
workers, and rows of the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .limits import MAX_DEPTH, MAX_PRIORITY, MAX_RETRY, MAX_SECONDS, json_depth_exceeds

SEPARATOR = "."
DEFAULT_SUB_QUEUE = "default"
MODES = ("long_running", "one_shot")
FIELD_TYPES = ("string", "int", "float", "bool", "array", "object")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
VAULT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # as the vaults plugin's
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ConfigError(Exception):
    """A queue configuration that cannot be used; the message names the file and key."""


def parse_duration(value: Any) -> float:
    """Seconds in a Go duration string (`"90s"`, `"1h30m"`, `"0"`), or a number of seconds.

    :raises ValueError: for anything else, a negative duration, or one that is not finite
        or longer than 365 days.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("0", "+0", "-0"):
            return 0.0
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        parts = _DURATION_RE.findall(body)
        if not body or "".join(n + u for n, u in parts) != body:
            raise ValueError(f'invalid duration {value!r} (use forms like "24h", "90s", "0")')
        seconds = sign * sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ValueError(f"invalid duration {value!r}")
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(
            f"must be at most {MAX_SECONDS // 3600}h (365 days), got {str(value)[:40]!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """`seconds` as Go prints a duration (`300` -> `5m0s`), as runqy's API shows timeouts.
    A value that is not a finite number (never accepted, but read from a store written
    before the bounds existed) shows as `0s`, no limit."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    fraction = seconds - whole
    secs_text = f"{secs + fraction:g}s" if fraction else f"{secs}s"
    if hours:
        return f"{hours}h{minutes}m{secs_text}"
    if minutes:
        return f"{minutes}m{secs_text}"
    return secs_text


class _Model(BaseModel):
    # Unknown keys are kept aside and reported as warnings (see `unknown_keys`).
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)


class FieldSchema(_Model):
    """One field of a queue's `input` or `output`: its name and allowed JSON types.

    A field is required unless `required: false`; an optional field missing from a
    payload gets its `default`, if any.
    """

    name: str = Field(min_length=1)
    type: tuple[Literal["string", "int", "float", "bool", "array", "object"], ...]
    required: bool = True
    default: Any = None
    description: str = ""

    @field_validator("type", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list | tuple) and not value:
            raise ValueError("must name at least one type")
        return value


class SubQueue(_Model):
    """A sub-queue: its short name (`high`) and its priority (1 or more)."""

    name: str
    priority: int = Field(ge=1, le=MAX_PRIORITY)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class Limits(_Model):
    """Per-queue task lifecycle overrides (`deployment.limits`), in seconds once parsed."""

    max_retry: int | None = Field(default=None, ge=0, le=MAX_RETRY)
    ttl_completed: float | None = None
    ttl_archived: float | None = None
    pending_timeout: float | None = None
    active_timeout: float | None = None

    @field_validator(
        "ttl_completed", "ttl_archived", "pending_timeout", "active_timeout", mode="before"
    )
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None or value == "" else parse_duration(value)

    def to_json(self) -> dict[str, Any]:
        """The limits as runqy writes them (durations as Go strings), unset ones left out."""
        out: dict[str, Any] = {}
        if self.max_retry is not None:
            out["max_retry"] = self.max_retry
        for key in ("ttl_completed", "ttl_archived", "pending_timeout", "active_timeout"):
            value = getattr(self, key)
            if value is not None:
                out[key] = format_duration(value)
        return out


class Deployment(_Model):
    """Where a worker gets the task code of a queue and how it runs it."""

    git_url: str = Field(min_length=1)
    branch: str = "main"
    code_path: str = ""
    startup_cmd: str = Field(min_length=1)
    startup_timeout_secs: int = Field(default=60, ge=0, le=MAX_SECONDS)
    requirements_file: str = "requirements.txt"
    mode: Literal["long_running", "one_shot"] | None = None
    vaults: tuple[Annotated[str, Field(pattern=VAULT_NAME_PATTERN)], ...] = ()
    redis_storage: bool | None = None
    git_token: str = ""
    limits: Limits = Field(default_factory=Limits)


class QueueConfig(_Model):
    """One queue of a runqy YAML file (`queues.<name>`), with its name."""

    name: str
    priority: int | None = Field(default=None, ge=1, le=MAX_PRIORITY)
    sub_queues: tuple[SubQueue, ...] = ()
    mode: Literal["long_running", "one_shot"] | None = None
    deployment: Deployment
    input: tuple[FieldSchema, ...] = ()
    output: tuple[FieldSchema, ...] = ()
    strict_priority: bool = False
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> QueueConfig:
        if not self.sub_queues and self.priority is None:
            raise ValueError("either priority or sub_queues is required")
        names = [sub.name for sub in self.sub_queues]
        if len(names) != len(set(names)):
            raise ValueError(f"sub_queues: two sub-queues share a name ({', '.join(names)})")
        if self.mode and self.deployment.mode and self.mode != self.deployment.mode:
            raise ValueError(
                f"mode {self.mode!r} and deployment.mode {self.deployment.mode!r} disagree"
            )
        return self

    @property
    def effective_mode(self) -> str:
        """`long_running` unless the queue or its deployment says `one_shot`."""
        return self.mode or self.deployment.mode or "long_running"

    @property
    def subs(self) -> tuple[SubQueue, ...]:
        """The sub-queues: those listed, or `default` with the queue's priority."""
        if self.sub_queues:
            return self.sub_queues
        return (SubQueue(name=DEFAULT_SUB_QUEUE, priority=self.priority or 1),)

    @property
    def full_names(self) -> list[str]:
        """Every sub-queue's full name (`inference.high`)."""
        return [full_name(self.name, sub.name) for sub in self.subs]

    @property
    def top_priority(self) -> int:
        """The highest priority among the sub-queues."""
        return max(sub.priority for sub in self.subs)

    def priority_of(self, full: str) -> int:
        """The priority of sub-queue `full`."""
        return next(sub.priority for sub in self.subs if full_name(self.name, sub.name) == full)

    def document(self) -> dict[str, Any]:
        """The queue's YAML entry as JSON (what the store keeps), without its name."""
        return self.model_dump(mode="json", exclude={"name"}, exclude_none=True)

    def unknown_keys(self) -> list[str]:
        """Dotted paths of keys runqy's format does not have (kept, but ignored)."""
        found = [f"{key}" for key in self.model_extra or {}]
        found += [f"deployment.{key}" for key in self.deployment.model_extra or {}]
        found += [f"deployment.limits.{k}" for k in self.deployment.limits.model_extra or {}]
        for index, sub in enumerate(self.sub_queues):
            found += [f"sub_queues[{index}].{key}" for key in sub.model_extra or {}]
        for kind in ("input", "output"):
            for index, schema in enumerate(getattr(self, kind)):
                found += [f"{kind}[{index}].{key}" for key in schema.model_extra or {}]
        return found

    def to_json(self) -> dict[str, Any]:
        """The queue as the configs API shows it."""
        deployment = self.deployment.model_dump(mode="json", exclude_none=True)
        deployment["mode"] = self.effective_mode
        deployment["limits"] = self.deployment.limits.to_json()
        out: dict[str, Any] = {
            "name": self.name,
            "priority": self.top_priority,
            "sub_queues": [{"name": s.name, "priority": s.priority} for s in self.subs],
            "mode": self.effective_mode,
            "strict_priority": self.strict_priority,
            "deployment": deployment,
        }
        if self.description:
            out["description"] = self.description
        for kind in ("input", "output"):
            schemas = getattr(self, kind)
            if schemas:
                out[kind] = [s.model_dump(mode="json", exclude_defaults=True) for s in schemas]
        return out


def _check_name(value: str) -> str:
    if SEPARATOR in value:
        raise ValueError(f"{value!r} cannot contain {SEPARATOR!r} (it separates sub-queues)")
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} must be 1 to 64 letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return value


def full_name(parent: str, sub: str) -> str:
    """`inference` + `high` -> `inference.high`."""
    return f"{parent}{SEPARATOR}{sub}"


def split_name(name: str) -> tuple[str, str | None]:
    """`inference.high` -> (`inference`, `high`); `inference` -> (`inference`, None)."""
    parent, dot, sub = name.partition(SEPARATOR)
    return parent, (sub if dot else None)


def normalize(name: str) -> str:
    """A queue name with its sub-queue: a bare name means `<name>.default`, as in runqy."""
    return name if SEPARATOR in name else full_name(name, DEFAULT_SUB_QUEUE)


def parse_queue(name: str, data: Any, source: str = "request") -> QueueConfig:
    """Check one queue entry; :raises ConfigError: naming `source` and the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: queues.{name}: must be a mapping")
    problem = unusable(data, f"queues.{name}")
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    try:
        return QueueConfig.model_validate({**data, "name": name})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc, f'queues.{name}')}") from None


def unusable(document: Any, prefix: str) -> str | None:
    """Why a configuration document cannot be used whatever its keys say, or None: nested
    deeper than `MAX_DEPTH`, a non-finite number (YAML's `.inf`, `.nan`), or a string
    with a NUL character or a lone surrogate (the message names the key, never a value)."""
    if json_depth_exceeds(document):
        return f"{prefix}: nests deeper than {MAX_DEPTH} levels"
    stack: list[tuple[Any, str]] = [(document, prefix)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                label = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]"
                if isinstance(key, str) and (_bad_string(key) or len(key) > 200):
                    return f"{path}: a key is not a short, plain string"
                stack.append((child, label))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{path}: must be a finite number"
        elif isinstance(item, str) and _bad_string(item):
            return f"{path}: must not contain NUL characters or lone surrogates"
    return None


def _bad_string(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def describe(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as `key.path: message; ...`."""
    problems = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        path = prefix
        for part in parts:
            path = f"{path}[{part}]" if part.isdigit() else f"{path}.{part}" if path else part
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required"
        problems.append(f"{path or '(top)'}: {message}")
    return "; ".join(problems)


@dataclass
class FileSet:
    """The queues read from the configured files, and what went wrong with them.

    :ivar queues: queue name -> (config, the file it came from).
    :ivar errors: one message per file that could not be used (its queues are absent).
    :ivar failed: the files that could not be used.
    :ivar warnings: unknown keys, ignored.
    """

    queues: dict[str, tuple[QueueConfig, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def config_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files `paths` name: files as given, folders' `*.yaml`/`*.yml` sorted.

    :raises ConfigError: for a path that does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder (config_files)")
    return found


def load_file(path: Path) -> list[QueueConfig]:
    """The queues of one runqy YAML file (an empty file, or one without `queues`, has none).

    :raises ConfigError: naming the file and the key.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping with a `queues` key")
    queues = data.get("queues")
    if queues is None:
        return []
    if not isinstance(queues, dict):
        raise ConfigError(f"{path}: queues: must be a mapping of queue name to settings")
    return [parse_queue(str(name), entry, str(path)) for name, entry in queues.items()]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The YAML error without the quoted line PyYAML adds: that line may hold a secret
    (a `git_token`), and the message goes to the log and to the reload's answer."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem or type(exc).__name__}{where}"


def load_files(paths: Iterable[str | Path]) -> FileSet:
    """Read every configured file. A bad file is reported and skipped, not fatal, so that
    one typo does not take every other queue down; a queue defined twice is an error of
    the later file."""
    result = FileSet()
    try:
        files = config_files(paths)
    except ConfigError as exc:
        result.errors.append(str(exc))
        return result
    for path in files:
        result.files.append(str(path))
        try:
            queues = load_file(path)
        except ConfigError as exc:
            result.errors.append(str(exc))
            result.failed.add(str(path))
            continue
        clash = next((q.name for q in queues if q.name in result.queues), None)
        if clash is not None:
            result.errors.append(
                f"{path}: queues.{clash}: already defined in {result.queues[clash][1]}"
            )
            result.failed.add(str(path))
            continue
        for queue in queues:
            result.queues[queue.name] = (queue, str(path))
            result.warnings += [
                f"{path}: queues.{queue.name}.{key}: unknown key, ignored"
                for key in queue.unknown_keys()
            ]
    return result
