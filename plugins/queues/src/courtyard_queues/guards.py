"""Checks the plugin's blueprints run before their routes."""

from __future__ import annotations

from courtyard_sdk.identity import PERMISSIONS_ATTRIBUTE, check
from quart import current_app, request

from . import errors

MAX_PARAMETER = 200  # the longest id or name any row can hold


async def refuse_unusable_path() -> None:
    """A `before_request` of the plugin's blueprints: a path parameter holding a NUL
    character, a lone surrogate or more than `MAX_PARAMETER` characters names nothing that
    can exist (and PostgreSQL cannot even compare text with NUL), so it answers the route's
    404 at once, after the route's own permission check (a 401 or 403 comes first).

    :raises ApiError: 404 with the code of what the parameter names.
    """
    for key, value in (request.view_args or {}).items():
        if not isinstance(value, str) or not _unusable(value):
            continue
        view = current_app.view_functions.get(request.endpoint or "")
        check(*getattr(view, PERMISSIONS_ATTRIBUTE, ()))
        shown = value[:MAX_PARAMETER]
        if key == "task_id":
            raise errors.task_not_found(shown)
        if key == "worker_id":
            raise errors.worker_not_found(shown)
        if key == "name":
            raise errors.config_not_found(shown)
        raise errors.queue_not_found(shown)


def _unusable(value: str) -> bool:
    if "\x00" in value or len(value) > MAX_PARAMETER:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
