"""Talking to a running Courtyard server: its URL, the API key, the internal header, errors.

Every request says `X-Courtyard-Internal: true` (the CLI is not a browser: CSRF checks are
for browsers) and, given an API key, sends it as `Authorization: Bearer <key>` and
`X-API-Key`. Every failure is a `RemoteError`: the server's code and message, or one of
CONNECTION_FAILED, TIMEOUT, UPLOAD_INTERRUPTED, INVALID_URL, BAD_RESPONSE, HTTP_<status>
and HTTP_ERROR. httpx is imported by the first request, so that `courtyard --help` stays
fast. Printing is the commands' business (see output.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import CommandError

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
INTERNAL_HEADER = "X-Courtyard-Internal"
TIMEOUT = 300.0  # an upload waits for the install and the plugin reload it triggers
CONNECT_TIMEOUT = 10.0


class RemoteError(CommandError):
    """A request that failed: the server's error `code` and `message`, or the CLI's own."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class Server:
    """The Courtyard server at `url` (no trailing slash), as `api_key` may use it."""

    url: str
    api_key: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request and return the JSON of its 2xx answer.

        :raises RemoteError: the server's error code and message, or the CLI's own code.
        """
        import httpx

        url = self.url
        try:
            with self._client() as client:
                answer = client.request(method, path, params=params, files=files)
        except httpx.TimeoutException as exc:
            raise RemoteError(
                "TIMEOUT", f"{url} did not answer in time ({_describe(exc)})"
            ) from None
        except httpx.WriteError as exc:
            raise RemoteError(
                "UPLOAD_INTERRUPTED",
                f"{url} closed the connection during the upload ({_describe(exc)}); "
                "the archive may exceed the server's upload limit",
            ) from None
        except httpx.UnsupportedProtocol as exc:
            raise RemoteError("INVALID_URL", f"{url}: {_describe(exc)}") from None
        except httpx.TransportError as exc:
            raise RemoteError(
                "CONNECTION_FAILED",
                f"cannot connect to {url}: {_describe(exc)} "
                "(is the server running? set --url or COURTYARD_URL)",
            ) from None
        except httpx.InvalidURL as exc:
            raise RemoteError("INVALID_URL", f"{url}: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            raise RemoteError("HTTP_ERROR", f"{url}: {_describe(exc)}") from None
        return _answer(answer)

    def rows(self, path: str) -> list[dict[str, Any]]:
        """`GET path`, whose answer must be a list of objects (else BAD_RESPONSE)."""
        body = self.request("GET", path)
        if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
            raise RemoteError("BAD_RESPONSE", "expected a JSON list of objects: is --url right?")
        return body

    def upload(
        self,
        path: str,
        archive: Path,
        *,
        params: dict[str, str] | None = None,
        moved: Callable[[int], None] | None = None,
    ) -> Any:
        """Stream `archive` to `POST path` as the multipart field `file`, calling `moved`
        with the position in the file as it is read."""
        content_type = (
            "application/zip" if archive.name.lower().endswith(".zip") else "application/gzip"
        )
        with archive.open("rb") as raw:
            reader = ProgressReader(raw, moved or (lambda _: None))
            files = {"file": (archive.name, reader, content_type)}
            return self.request("POST", path, params=params, files=files)

    def _client(self) -> httpx.Client:
        import httpx

        from .. import __version__

        headers = {
            INTERNAL_HEADER: "true",
            "Accept": "application/json",
            "User-Agent": f"courtyard-cli/{__version__}",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
            headers["X-API-Key"] = self.api_key
        return httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(TIMEOUT, connect=CONNECT_TIMEOUT),
            follow_redirects=False,  # a redirect would mean a wrong --url; never resend the key
        )


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _answer(answer: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; a RemoteError for anything else."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    where = f"{answer.request.method} {answer.request.url}"
    if answer.is_success:
        if body is None:
            raise RemoteError(
                "BAD_RESPONSE",
                f"{where} answered {answer.status_code} without JSON: is this a Courtyard server?",
                answer.status_code,
            )
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        raise RemoteError(error["code"], str(error.get("message", "")), answer.status_code)
    text = " ".join(answer.text.split())[:200]
    raise RemoteError(
        f"HTTP_{answer.status_code}",
        f"{where} answered {answer.status_code} {answer.reason_phrase}"
        + (f": {text}" if text else ""),
        answer.status_code,
    )


class ProgressReader:
    """A binary file that reports how far it has been read (httpx reads it in chunks)."""

    def __init__(self, raw: BinaryIO, moved: Callable[[int], None]) -> None:
        self._raw = raw
        self._moved = moved

    def read(self, size: int = -1) -> bytes:
        """Read from the file and report the new position."""
        chunk = self._raw.read(size)
        self._moved(self._raw.tell())
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek (httpx rewinds before sending) and report the new position."""
        position = self._raw.seek(offset, whence)
        self._moved(position)
        return position

    def tell(self) -> int:
        """The position in the file."""
        return self._raw.tell()

    def fileno(self) -> int:
        """The file's descriptor: httpx measures the file with it (Content-Length)."""
        return self._raw.fileno()
