"""PLUGIN: Courtyard's own plugins as the API's plugin registry (`/api/v1/plugins`), per
tenant, and plugin instances (`/api/v1/plugin-instances`), a tenant's named settings of
a plugin, checked against the plugin's settings schema.

The plugins are those of the serving generation (`ctx.plugins`, read-only). A tenant may
disable one for itself: its callers then get `403 PLUGIN_DISABLED` from every route of
that plugin (`courtyard_request`, through `refuse_disabled`), the other tenants are not
touched. The releases plugin itself cannot be disabled (its own API would go with it).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Awaitable
from typing import Any

from courtyard_sdk import ApiError, Blueprint, Response, SettingsError, request
from courtyard_sdk.identity import current_identity, require
from courtyard_sdk.openapi import errors
from courtyard_sdk.plugins import PluginInfo, current_plugin
from pydantic import Field as Spec
from quart_schema import document_request
from sqlmodel import select

from . import listing
from .common import (
    OPEN_TENANT,
    READ,
    WRITE,
    Api,
    Body,
    answers,
    blueprint,
    body,
    caller,
    dumps,
    listed,
    loads,
)
from .envelope import ReleasesError, conflict, created, no_content, not_found, now_text, ok
from .environments import NAME
from .listing import Field
from .tables import PluginInstance, PluginSetting

SELF = "releases"
CACHE_SECONDS = 1.0  # how long a tenant's disabled plugins are trusted by the check
INSTANCE_FIELDS = [
    Field("name", PluginInstance.name),
    Field("pluginId", PluginInstance.plugin_id),
    Field("createdAt", PluginInstance.created_at, "datetime"),
]


class InstanceBody(Body):
    """A plugin instance: a tenant's named settings of a plugin."""

    plugin_id: str = Spec(min_length=1, max_length=214)
    name: str = Spec(min_length=1, max_length=100, pattern=NAME)
    config: dict[str, Any] = Spec(default_factory=dict)


class InstanceUpdate(Body):
    """Changes to a plugin instance."""

    name: str | None = Spec(default=None, min_length=1, max_length=100, pattern=NAME)
    config: dict[str, Any] | None = None


class Disabled:
    """Each tenant's disabled plugins, as read at most `CACHE_SECONDS` ago (every request
    to a plugin's route asks; a change made here is seen at once).

    One read at a time per tenant: once the answer is old, the request that notices starts
    a read, and the others keep the old answer meanwhile rather than each reading too (a
    stampede of queries every `CACHE_SECONDS` under load)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._read: dict[str, tuple[float, frozenset[str]]] = {}
        self._reading: dict[str, asyncio.Task[frozenset[str]]] = {}

    async def of(self, tenant: str) -> frozenset[str]:
        """The plugins `tenant` disabled."""
        known = self.known(tenant)
        if known is not None:
            return known
        return await asyncio.shield(self._reading[tenant])

    def known(self, tenant: str) -> frozenset[str] | None:
        """The plugins `tenant` disabled as last read, without waiting (a read starts when
        that answer is old); None before the first read is done."""
        read = self._read.get(tenant)
        if read is not None and time.monotonic() - read[0] < CACHE_SECONDS:
            return read[1]
        if tenant not in self._reading:
            # A fresh context: a copy of the request's would keep the request alive.
            reading = asyncio.get_running_loop().create_task(
                self._fetch(tenant), context=contextvars.Context()
            )
            reading.add_done_callback(_retrieve)
            self._reading[tenant] = reading
        return None if read is None else read[1]

    async def _fetch(self, tenant: str) -> frozenset[str]:
        me = asyncio.current_task()
        try:
            async with self.api.session_for(tenant) as session:
                statement = select(PluginSetting.plugin).where(PluginSetting.enabled == False)  # noqa: E712
                names = frozenset((await session.exec(statement)).all())
            if self._reading.get(tenant) is me:  # not begun before a `forget`
                self._read[tenant] = (time.monotonic(), names)
            return names
        finally:
            if self._reading.get(tenant) is me:
                del self._reading[tenant]

    def forget(self, tenant: str) -> None:
        """Read `tenant`'s choices again at the next request (a read begun before the
        change answers the requests waiting for it, and is not kept)."""
        self._read.pop(tenant, None)
        self._reading.pop(tenant, None)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Take a read's failure off the task: the requests waiting for it got it."""
    if not task.cancelled():
        task.exception()


def refuse_disabled(disabled: Disabled) -> Awaitable[None] | None:
    """Refuse a request to a plugin the caller's tenant disabled (`courtyard_request`, on
    every request: it waits only for the first read of a tenant's choices).

    :raises ApiError: 403 `PLUGIN_DISABLED`.
    :return: None, or what to await when the tenant's choices are not read yet.
    """
    identity = current_identity()
    tenant = OPEN_TENANT if identity.kind == "open" else identity.tenant_id
    if tenant is None:
        return None
    known = disabled.known(tenant)
    if known is not None and not known:  # most tenants disable nothing
        return None
    plugin = current_plugin()
    if plugin is None or plugin == SELF:
        return None
    if known is None:
        return _refuse_once_read(disabled, tenant, plugin)
    _refuse_if_in(plugin, known)
    return None


async def _refuse_once_read(disabled: Disabled, tenant: str, plugin: str) -> None:
    _refuse_if_in(plugin, await disabled.of(tenant))


def _refuse_if_in(plugin: str, disabled: frozenset[str]) -> None:
    if plugin in disabled:
        raise ApiError(403, "PLUGIN_DISABLED", f"plugin {plugin} is disabled for this tenant")


def plugin_data(info: PluginInfo, disabled: frozenset[str]) -> dict[str, Any]:
    """A plugin as answered, with whether the caller's tenant has it enabled."""
    return {
        "id": info.name,
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "status": str(info.status),
        "source": info.source,
        "base": info.base,
        "error": info.error,
        "enabledForTenant": info.name not in disabled,
        "menus": [menu.to_json() for menu in info.menus],
    }


def instance_data(instance: PluginInstance) -> dict[str, Any]:
    """A plugin instance as answered."""
    return {
        "id": instance.id,
        "pluginId": instance.plugin_id,
        "name": instance.name,
        "config": loads(instance.config),
        "createdBy": instance.created_by,
        "createdAt": instance.created_at,
        "updatedAt": instance.updated_at,
    }


def routes(api: Api, disabled: Disabled) -> Blueprint:
    """The plugin registry and plugin instance routes."""
    bp = blueprint("plugins")

    def found(plugin_id: str) -> PluginInfo:
        info = api.ctx.plugins.get(plugin_id)
        if info is None:
            raise not_found("plugin", plugin_id)
        return info

    def checked(info: PluginInfo, config: dict[str, Any]) -> dict[str, Any]:
        """`config` as the plugin's settings schema reads it (defaults filled in).

        :raises ReleasesError: 400 `VALIDATION_ERROR` naming the key and the problem.
        """
        if info.manifest is None:
            raise ReleasesError(400, "VALIDATION_ERROR", f"plugin {info.name} has no manifest")
        try:
            settings = info.manifest.validate_settings(config)
        except SettingsError as exc:
            raise ReleasesError(400, "VALIDATION_ERROR", f"config: {exc}") from None
        return json.loads(json.dumps(settings, default=str))

    @bp.get("/plugins")
    @require(READ)
    @listed("The server's plugins, with whether the caller's tenant has each enabled")
    async def list_plugins() -> Response:
        page_number, page_size = listing.window(request.args)
        off = await disabled.of(caller().tenant)
        everything = [plugin_data(info, off) for info in api.ctx.plugins.list()]
        shown, pages = listing.paged(everything, page_number, page_size)
        return ok(shown, pagination=pages)

    @bp.get("/plugins/<path:plugin_id>/health")
    @require(READ)
    @answers(200, "Whether the plugin serves")
    @errors((404, "PLUGIN_NOT_FOUND"))
    async def plugin_health(plugin_id: str) -> Response:
        info = found(plugin_id)
        off = info.name in await disabled.of(caller().tenant)
        status = "disabled" if off else ("healthy" if info.status == "loaded" else "unhealthy")
        return ok({"id": info.name, "status": status, "pluginStatus": str(info.status),
                   "error": info.error})  # fmt: skip

    @bp.post("/plugins/<path:plugin_id>/enable")
    @require(WRITE)
    @answers(200, "The plugin, enabled for the caller's tenant")
    @errors((404, "PLUGIN_NOT_FOUND"))
    async def enable(plugin_id: str) -> Response:
        return await _choose(found(plugin_id), True)

    @bp.post("/plugins/<path:plugin_id>/disable")
    @require(WRITE)
    @answers(200, "The plugin, disabled for the caller's tenant")
    @errors((404, "PLUGIN_NOT_FOUND"), (409, "PLUGIN_REQUIRED"))
    async def disable(plugin_id: str) -> Response:
        info = found(plugin_id)
        if info.name == SELF:
            raise conflict("PLUGIN_REQUIRED", "the releases plugin serves this API: it stays")
        return await _choose(info, False)

    @bp.get("/plugins/<path:plugin_id>")
    @require(READ)
    @answers(200, "The plugin")
    @errors((404, "PLUGIN_NOT_FOUND"))
    async def get_plugin(plugin_id: str) -> Response:
        return ok(plugin_data(found(plugin_id), await disabled.of(caller().tenant)))

    async def _choose(info: PluginInfo, enabled: bool) -> Response:
        who = caller()
        async with api.session() as session:
            row = (
                await session.exec(select(PluginSetting).where(PluginSetting.plugin == info.name))
            ).first()
            if row is None:
                row = PluginSetting(tenant_id=who.tenant, plugin=info.name, updated_by="",
                                    updated_at="")  # fmt: skip
            row.enabled, row.updated_by, row.updated_at = enabled, who.subject, now_text()
            session.add(row)
            await session.commit()
        disabled.forget(who.tenant)
        await api.audit("plugin.enabled" if enabled else "plugin.disabled", info.name)
        return ok(plugin_data(info, await disabled.of(who.tenant)))

    @bp.post("/plugin-instances")
    @require(WRITE)
    @document_request(InstanceBody)
    @answers(201, "The plugin instance")
    @errors((404, "PLUGIN_NOT_FOUND"), (409, "INSTANCE_EXISTS"))
    async def create_instance() -> Response:
        spec = await body(InstanceBody)
        info = found(spec.plugin_id)
        config = checked(info, spec.config)
        who = caller()
        async with api.session() as session:
            await _unique(session, info.name, spec.name)
            now = now_text()
            instance = PluginInstance(
                tenant_id=who.tenant,
                plugin_id=info.name,
                name=spec.name,
                config=dumps(config),
                created_by=who.subject,
                created_at=now,
                updated_at=now,
            )
            session.add(instance)
            await session.commit()
        await api.audit("plugin_instance.created", instance.id, pluginId=info.name)
        return created(instance_data(instance))

    @bp.get("/plugin-instances")
    @require(READ)
    @listed("The tenant's plugin instances")
    async def list_instances() -> Response:
        query = listing.parse(request.args, INSTANCE_FIELDS, "name")
        async with api.session() as session:
            rows, pages = await listing.page(
                session, select(PluginInstance), query, PluginInstance.id
            )
        return ok([instance_data(r) for r in rows], pagination=pages)

    @bp.put("/plugin-instances/<instance_id>")
    @require(WRITE)
    @document_request(InstanceUpdate)
    @answers(200, "The plugin instance")
    @errors((404, "PLUGIN_INSTANCE_NOT_FOUND"), (409, "INSTANCE_EXISTS"))
    async def update_instance(instance_id: str) -> Response:
        change = await body(InstanceUpdate)
        async with api.session() as session:
            instance = await session.get(PluginInstance, instance_id)
            if instance is None:
                raise not_found("plugin_instance", instance_id)
            if change.name is not None and change.name != instance.name:
                await _unique(session, instance.plugin_id, change.name)
                instance.name = change.name
            if change.config is not None:
                instance.config = dumps(checked(found(instance.plugin_id), change.config))
            instance.updated_at = now_text()
            session.add(instance)
            await session.commit()
        await api.audit("plugin_instance.updated", instance_id)
        return ok(instance_data(instance))

    @bp.delete("/plugin-instances/<instance_id>")
    @require(WRITE)
    @answers(204, "Deleted")
    @errors((404, "PLUGIN_INSTANCE_NOT_FOUND"))
    async def delete_instance(instance_id: str) -> Response:
        async with api.session() as session:
            instance = await session.get(PluginInstance, instance_id)
            if instance is None:
                raise not_found("plugin_instance", instance_id)
            await session.delete(instance)
            await session.commit()
        await api.audit("plugin_instance.deleted", instance_id)
        return no_content()

    return bp


async def _unique(session: Any, plugin: str, name: str) -> None:
    taken = select(PluginInstance.id).where(
        PluginInstance.plugin_id == plugin, PluginInstance.name == name
    )
    if (await session.exec(taken)).first() is not None:
        raise conflict("INSTANCE_EXISTS", f"{plugin} already has an instance named {name!r}")
