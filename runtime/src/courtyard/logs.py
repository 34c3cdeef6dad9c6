"""Logging set-up: text or JSON lines, each carrying the current request id, and, in
one of the processes of `courtyard serve --workers N`, the worker's index (`set_worker`)."""

from __future__ import annotations

import json
import logging
import sys
import time

from courtyard_sdk.request_ids import REQUEST_ID

_worker: int | None = None  # this process's index among the server's processes


def set_worker(index: int | None) -> None:
    """Say that this process is worker `index` (from 0) of several server processes
    (servers/supervised.py); None: the only one. Call it before `configure_logging`."""
    global _worker
    _worker = index


class RequestIdFilter(logging.Filter):
    """Stamp every record with the id of the request being handled (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `record.request_id`; never drops a record."""
        record.request_id = REQUEST_ID.get()
        record.worker = _worker
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as JSON with time, level, logger, request id and message."""
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if (worker := getattr(record, "worker", None)) is not None:
            entry["worker"] = worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
# In worker N of several server processes: `worker N` before the logger's name.
WORKER_TEXT_FORMAT = (
    "%(asctime)s %(levelname)-7s worker %(worker)s %(name)s [%(request_id)s] %(message)s"
)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in `fmt` ('text' or 'json') at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    text = TEXT_FORMAT if _worker is None else WORKER_TEXT_FORMAT
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration context at INFO; courtyard.database says, per
    # owner, which revisions it applied. Its warnings still show.
    if root.level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
