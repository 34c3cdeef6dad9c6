"""Calling plugin hooks: the one place that does it.

A generation owns a `Hooks`: its pluggy plugin manager, and every way the runtime calls a
hook (hookspecs in `courtyard_sdk.hookspecs`):

- `call`: one plugin's implementation, through pluggy, with the plugin's own context
  (`courtyard_provides`, and the building blocks below);
- `each` and `each_async`: one hook across plugins in the order given (the generation's
  dependency order), each result normalised to a list (None / item / list) and each
  plugin's failure contained in its `Outcome` (`courtyard_routes`, `courtyard_commands`,
  `courtyard_menus`);
- `lifecycle`: `courtyard_startup` and `courtyard_shutdown`, within a timeout, a failure
  returned rather than raised;
- `chain`: the request path's `courtyard_request` and `courtyard_response`, calling each
  implementation directly with the arguments it declares, as pluggy would, without
  pluggy's per-call machinery (a few microseconds per call and plugin).

An implementation may be a plain function or a coroutine function; whatever it returns
that is awaitable is awaited (except by `call`, whose caller decides). With hook tracing on
(`COURTYARD_TRACE_HOOKS=1`, tracing.py) every call, the request path's too, goes through
pluggy, whose monitoring logs it.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar

import pluggy
from courtyard_sdk import PluginContext, hookspecs
from courtyard_sdk.hook_paths import hook_paths

from . import tracing


class Plugin(Protocol):
    """What calling a plugin's hooks needs of it (the generation's `PluginRecord`)."""

    @property
    def name(self) -> str:
        """The plugin's name."""
        ...

    @property
    def module(self) -> types.ModuleType | None:
        """The registered module, None when the plugin was not imported."""
        ...

    @property
    def ctx(self) -> PluginContext | None:
        """The context every call of the plugin's hooks receives."""
        ...


P = TypeVar("P", bound=Plugin)


@dataclass(frozen=True, slots=True)
class Failure:
    """A hook that raised, or ran out of time (`error` is then a TimeoutError)."""

    hook: str
    error: Exception
    timeout: float | None = None

    @property
    def reason(self) -> str:
        """One line for the plugin's `error`: `<hook> raised <Type>: <message>`, or
        `<hook> exceeded <timeout> s`."""
        if self.timeout is not None and isinstance(self.error, TimeoutError):
            return f"{self.hook} exceeded {self.timeout:g} s"
        return f"{self.hook} raised {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True)
class Outcome(Generic[P]):
    """One plugin's answer to a hook called across plugins: its items, or its failure."""

    plugin: P
    items: list[Any]
    failure: Failure | None = None


def as_list(result: Any, kind: type | tuple[type, ...], hook: str) -> list[Any]:
    """Normalise a hook's `None | item | iterable of items` result to a list of `kind`.

    :raises TypeError: for an item that is not a `kind`.
    """
    if result is None:
        return []
    items = (
        list(result) if isinstance(result, Iterable) and not isinstance(result, kind) else [result]
    )
    for item in items:
        if not isinstance(item, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            names = " or ".join(k.__name__ for k in kinds)
            raise TypeError(f"{hook} must return {names} objects, got {type(item).__name__}")
    return items


Arguments = Callable[[dict[str, Any]], tuple[Any, ...]]


def _arguments(names: tuple[str, ...]) -> Arguments:
    """A function picking the values of `names`, in order, out of the call's keyword
    arguments (an itemgetter: half the time of a comprehension, per call and plugin)."""
    if len(names) > 1:
        return itemgetter(*names)
    if names:
        name = names[0]
        return lambda kwargs: (kwargs[name],)
    return lambda kwargs: ()


class Paths:
    """The paths a chained implementation concerns (`courtyard_sdk.only_under`), in the form
    that is quick to test on every request."""

    __slots__ = ("below", "exact")

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.exact = frozenset(prefixes)
        self.below = tuple(prefix + "/" for prefix in prefixes)

    def __contains__(self, path: object) -> bool:
        return path in self.exact or (isinstance(path, str) and path.startswith(self.below))


Call = tuple[Callable[..., Any], Arguments, Any, Paths | None]


class Chain:
    """One request-path hook across plugins, ready to call on every request.

    Each entry is an implementation's function, a picker of the arguments it declares, the
    plugin's context and the paths it concerns (None: all); the loops below call it as
    pluggy would (positional arguments in the declared order), await what is awaitable,
    and apply the hook's rule. An entry for other paths than the request's is skipped.
    """

    __slots__ = ("_calls", "_scoped")

    def __init__(self, calls: list[Call]) -> None:
        self._calls = calls
        self._scoped = any(paths is not None for *_, paths in calls)

    def __len__(self) -> int:
        return len(self._calls)

    async def first(self, **kwargs: Any) -> Any:
        """Call in order until one answers: the first result that is not None, or None
        (`courtyard_request`)."""
        path = kwargs["request"].path if self._scoped else None
        for function, arguments, ctx, paths in self._calls:
            if paths is not None and path not in paths:
                continue
            kwargs["ctx"] = ctx
            result = function(*arguments(kwargs))
            if result is None:  # most calls: spare the awaitable check (an ABC's)
                continue
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def fold(self, name: str, convert: Callable[[Any], Awaitable[Any]], **kwargs: Any) -> Any:
        """Call each in order, passing on the argument `name`; a result that is not None
        replaces it, through `convert` (`courtyard_response`).

        :return: the argument `name` after the last call.
        """
        path = kwargs["request"].path if self._scoped else None
        for function, arguments, ctx, paths in self._calls:
            if paths is not None and path not in paths:
                continue
            kwargs["ctx"] = ctx
            result = function(*arguments(kwargs))
            if result is None:
                continue
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                kwargs[name] = await convert(result)
        return kwargs[name]


class Hooks:
    """A plugin manager holding the courtyard hookspecs, and the ways to call them."""

    def __init__(self, *, trace: bool = False) -> None:
        """:param trace: log every hook call (tracing.py); the request path then goes
        through pluggy too."""
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.traced = trace
        if trace:
            tracing.trace(self.pm)
        # One plugin's view of a hook, by (hook, plugin name); registering clears it.
        self._subsets: dict[tuple[str, str], pluggy.HookCaller] = {}

    # Registering -------------------------------------------------------------------------

    def register(self, module: types.ModuleType, name: str) -> None:
        """Register a plugin's module; on an error (an implementation that matches no
        hookspec, or with unknown arguments) it is left unregistered."""
        try:
            self.pm.register(module, name=name)
            self._subsets.clear()  # cached subset callers would not exclude the newcomer
            self.pm.check_pending()
        except Exception:
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            raise

    def implemented_by(self, plugin: Plugin) -> list[str]:
        """The hooks `plugin` implements, sorted."""
        if plugin.module is None or not self.pm.is_registered(plugin.module):
            return []
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin.module) or [])

    def implementation(self, plugin: Plugin, hook: str) -> pluggy.HookImpl | None:
        """`plugin`'s implementation of `hook`, if it has one."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        return next((impl for impl in impls if impl.plugin is plugin.module), None)

    # Calling -----------------------------------------------------------------------------

    def _subset(self, plugin: Plugin, hook: str) -> pluggy.HookCaller:
        caller = self._subsets.get((hook, plugin.name))
        if caller is None:
            others = [p for p in self.pm.get_plugins() if p is not plugin.module]
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            self._subsets[(hook, plugin.name)] = caller
        return caller

    def call(self, plugin: Plugin, hook: str, **kwargs: Any) -> Any:
        """Call `plugin`'s implementation of `hook` through pluggy (so tracing sees it),
        with the plugin's own context.

        :return: the plugin's result as it is (a coroutine function's is not awaited), or
            None when it does not implement the hook.
        """
        results = self._subset(plugin, hook)(ctx=plugin.ctx, **kwargs)
        if isinstance(results, list):  # firstresult hooks answer the result itself
            return results[0] if results else None
        return results

    async def call_async(self, plugin: Plugin, hook: str, **kwargs: Any) -> Any:
        """`call`, its result awaited when it is awaitable."""
        result = self.call(plugin, hook, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def each(
        self, plugins: Iterable[P], hook: str, kind: type | tuple[type, ...], **kwargs: Any
    ) -> Iterator[Outcome[P]]:
        """Call `hook` of each of `plugins` in turn (lazily: the caller sees an outcome
        before the next plugin is called), its result as a list of `kind` (`as_list`); an
        exception, or an item of another kind, is that plugin's `failure`."""
        for plugin in plugins:
            try:
                items = as_list(self.call(plugin, hook, **kwargs), kind, hook)
            except Exception as exc:
                yield Outcome(plugin, [], Failure(hook, exc))
            else:
                yield Outcome(plugin, items)

    async def each_async(
        self, plugins: Iterable[P], hook: str, kind: type | tuple[type, ...], **kwargs: Any
    ) -> AsyncIterator[Outcome[P]]:
        """`each`, for hooks that may be coroutine functions: each result is awaited."""
        for plugin in plugins:
            try:
                items = as_list(await self.call_async(plugin, hook, **kwargs), kind, hook)
            except Exception as exc:
                yield Outcome(plugin, [], Failure(hook, exc))
            else:
                yield Outcome(plugin, items)

    async def lifecycle(self, plugin: Plugin, hook: str, timeout: float) -> Failure | None:
        """Run a startup or shutdown hook within `timeout` seconds.

        A coroutine function runs on the event loop; a plain function in a worker thread,
        so that it cannot stall the generation that is serving.

        :return: None when it succeeded (or is not implemented), else the failure.
        """
        impl = self.implementation(plugin, hook)
        if impl is None:
            return None
        try:
            # asyncio.timeout, unlike wait_for, needs no task: a hook that never suspends
            # costs no trip round a busy event loop.
            async with asyncio.timeout(timeout):
                if inspect.iscoroutinefunction(impl.function):
                    result = self.call(plugin, hook)  # only creates the coroutine
                else:
                    result = await asyncio.to_thread(self.call, plugin, hook)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            return Failure(hook, exc, timeout)
        return None

    def chain(self, plugins: Iterable[Plugin], hook: str) -> Chain:
        """The implementations of `hook` among `plugins`, in the order given, to call on
        every request (`Chain.first`, `Chain.fold`).

        Each is called directly, skipping pluggy's dispatch; with tracing on, through
        pluggy, so that every call is logged.
        """
        calls: list[Call] = []
        for plugin in plugins:
            impl = self.implementation(plugin, hook)
            if impl is None:
                continue
            prefixes = hook_paths(impl.function)
            paths = Paths(prefixes) if prefixes and "/" not in prefixes else None
            if self.traced:
                function, arguments = self._traced_call(plugin, hook)
            else:
                function, arguments = impl.function, _arguments(tuple(impl.argnames))
            calls.append((function, arguments, plugin.ctx, paths))
        return Chain(calls)

    def _traced_call(self, plugin: Plugin, hook: str) -> tuple[Callable[..., Any], Arguments]:
        """A chain entry's call through pluggy: takes every argument of the hookspec."""
        spec = getattr(self.pm.hook, hook).spec
        assert spec is not None
        names = tuple(spec.argnames)

        def call(*args: Any) -> Any:
            arguments = dict(zip(names, args, strict=True))
            del arguments["ctx"]  # call() passes the plugin's own
            return self.call(plugin, hook, **arguments)

        return call, _arguments(names)
