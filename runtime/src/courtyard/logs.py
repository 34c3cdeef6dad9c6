"""Logging set-up: text or JSON lines, each carrying the current request id."""

from __future__ import annotations

import json
import logging
import sys
import time

from courtyard_sdk.request_ids import REQUEST_ID


class RequestIdFilter(logging.Filter):
    """Stamp every record with the id of the request being handled (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `record.request_id`; never drops a record."""
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as JSON with time, level, logger, request id and message."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in `fmt` ('text' or 'json') at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration context at INFO; courtyard.database says, per
    # owner, which revisions it applied. Its warnings still show.
    if root.level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
