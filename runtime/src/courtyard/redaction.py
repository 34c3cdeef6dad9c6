"""Secrets kept out of what the runtime echoes: error messages, the audit log, log lines.

A credential sent where it does not belong, such as in a URL path (`GET /api/keys/cyk_...`,
`/anything/<jwt>`), would otherwise come back in a 404 message, be written to the audit
log and to log lines. `redact` replaces what looks like a secret:

- Courtyard API keys (`cyk_<id>_<secret>`): the secret goes, the id (public) stays;
- JWT-shaped tokens: `eyJ...` followed by two more dot-separated parts, or any three
  dot-separated base64url parts of at least 16 characters each;
- the plugin credentials' secrets this process has read (`remember`).

It is the one redaction function: errors.py, asgi.py (answers below Quart), the audit log
and the log filter (`RedactingFilter`) all call it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_REMEMBERED = 8  # characters: shorter secrets would redact ordinary words
MAX_REMEMBERED = 1000  # secrets remembered at most (each generation may re-read them)

_B64 = r"[A-Za-z0-9_\-]"  # a base64url character
_PATTERN = re.compile(
    # An API key: keep the public id, hide the secret. A malformed one goes whole.
    rf"(?<![A-Za-z0-9])cyk_(?:(?P<id>[0-9a-f]{{16}})_)?{_B64}+"
    # A JWT: its header is base64url JSON, so it starts with `eyJ`; or any long three parts.
    rf"|(?<![A-Za-z0-9_\-.])"
    rf"(?:eyJ{_B64}+\.{_B64}+\.{_B64}*|{_B64}{{16,}}\.{_B64}{{16,}}\.{_B64}{{16,}})"
)
_known: frozenset[str] = frozenset()
_known_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def _replace(match: re.Match[str]) -> str:
    text = match[0]
    if text.startswith("cyk_"):
        key_id = match["id"]
        return f"cyk_{key_id}_{REDACTED}" if key_id else f"cyk_{REDACTED}"
    return REDACTED


def redact(text: str) -> str:
    """`text` with every secret-looking part replaced by `[redacted]`."""
    if _known_pattern is not None:
        text = _known_pattern.sub(REDACTED, text)
    return _PATTERN.sub(_replace, text)


def remember(secrets: Iterable[str]) -> None:
    """Redact these secrets too from now on (plugin credentials' values, which have no
    recognisable shape). Secrets under `MIN_REMEMBERED` characters are not remembered."""
    global _known, _known_pattern
    wanted = {s for s in secrets if len(s) >= MIN_REMEMBERED}
    with _lock:
        if wanted <= _known:
            return
        known = _known | wanted
        if len(known) > MAX_REMEMBERED:  # start again from the secrets in use now
            known = frozenset(wanted)
        # Longest first, so that a secret containing another is replaced whole.
        alternatives = sorted(known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in alternatives))
        _known = frozenset(known)


def forget_all() -> None:
    """Forget the remembered secrets (for tests)."""
    global _known, _known_pattern
    with _lock:
        _known, _known_pattern = frozenset(), None


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message (and its traceback, when that
    holds a secret) before any formatter sees it. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact `record` in place."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the formatter to report
            return True
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            clean_trace = redact(trace)
            if clean_trace != trace:
                # Formatters print exc_info themselves (the JSON one ignores exc_text):
                # carry the redacted traceback in the message instead.
                clean = f"{clean}\n{clean_trace}"
                record.exc_info, record.exc_text = None, None
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a `RedactingFilter` to each handler of `logger` (the root logger by default),
    through which every record propagating there passes."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
