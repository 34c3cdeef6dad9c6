"""The JSON provider of a generation's Quart app: answers encoded with orjson.

Quart's provider encodes with the `json` module, which builds an encoder per call: for
the small bodies most routes answer, that is most of the encoding's cost. orjson is
about ten times faster and encodes the same documents, with two differences of form that
JSON readers do not see: text outside ASCII is sent as UTF-8 rather than `\\u` escapes,
and NaN and infinities (which the `json` module writes as non-JSON words) become null.
Anything orjson refuses (an integer past 64 bits, a string holding a lone surrogate) and
every call with options (`indent`) goes through the `json` module as before. Decoding
stays with the `json` module: orjson reads integers past 64 bits as floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson
from quart import Quart, Response
from quart.json.provider import DefaultJSONProvider

# The types the `json` module hands to `default` are handed to it here too, so that both
# encode them alike (dates as HTTP dates, dataclasses and models as the provider says).
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_OPTIONS |= orjson.OPT_NON_STR_KEYS  # as the `json` module: {1: x} -> {"1": x}


class JSONProvider(DefaultJSONProvider):
    """Quart's provider (keys in their order, compact), encoding with orjson."""

    sort_keys = False  # the API documents' key order, as the routes build it

    def __init__(self, app: Quart, default: Callable[[Any], Any]) -> None:
        """:param default: what turns other objects into JSON values (quart-schema's
        provider's, for models)."""
        super().__init__(app)
        self.default = default  # an instance's own

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """`obj` as JSON text; with options, through the `json` module."""
        if not kwargs:
            encoded = self._encode(obj, _OPTIONS)
            if encoded is not None:
                return encoded.decode()
        return super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """The JSON answer holding the arguments (as `jsonify`); indented in debug mode,
        through the `json` module."""
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)  # type: ignore[return-value]
        obj = self._prepare_response_obj(args, kwargs)
        body = self._encode(obj, _OPTIONS | orjson.OPT_APPEND_NEWLINE)
        if body is None:
            return super().response(*args, **kwargs)  # type: ignore[return-value]
        return cast(Quart, self._app).response_class(body, mimetype=self.mimetype)

    def _encode(self, obj: Any, options: int) -> bytes | None:
        """orjson's encoding, or None where it refuses (the `json` module then decides)."""
        try:
            return orjson.dumps(obj, default=self.default, option=options)
        except orjson.JSONEncodeError:
            return None
