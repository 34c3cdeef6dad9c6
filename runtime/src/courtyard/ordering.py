"""Dependency order: a plugin comes after every plugin it depends on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from courtyard_sdk import Manifest


def dependency_order(
    manifests: Mapping[str, Manifest],
) -> tuple[list[str], dict[str, str]]:
    """Order plugins so that each follows its dependencies.

    Optional dependencies order too when they are present. A plugin whose required
    dependency is missing or excluded, or that sits on a cycle, is excluded, and so is
    every plugin that depends on it. Among plugins free to go, discovery order holds.

    :param manifests: the plugins to order, by name, in discovery order.
    :return: the ordered names, and the excluded names with the reason for each.
    """
    excluded: dict[str, str] = {}
    names = list(manifests)

    def deps(name: str) -> list[str]:
        m = manifests[name]
        return [*m.dependencies, *(d for d in m.optional_dependencies if d in manifests)]

    for name in names:
        missing = [d for d in manifests[name].dependencies if d not in manifests]
        if missing:
            excluded[name] = f"missing dependency: {', '.join(missing)}"

    order: list[str] = []
    placed: set[str] = set()
    pending = [n for n in names if n not in excluded]
    while pending:
        ready = [n for n in pending if all(d in placed or d in excluded for d in deps(n))]
        if not ready:
            for name in pending:
                excluded[name] = f"dependency cycle: {_cycle(name, deps, set(pending))}"
            break
        for name in ready:
            failed = [d for d in manifests[name].dependencies if d in excluded]
            if failed:
                excluded[name] = f"dependency {failed[0]} failed"
            else:
                order.append(name)
                placed.add(name)
        pending = [n for n in pending if n not in placed and n not in excluded]
    return order, excluded


def _cycle(start: str, deps: Callable[[str], Iterable[str]], among: set[str]) -> str:
    """Describe the cycle reached from `start` as 'a -> b -> a' (or what leads into one)."""
    path: list[str] = [start]
    node = start
    while True:
        nxt = next((d for d in deps(node) if d in among), None)
        if nxt is None:
            return " -> ".join(path)
        if nxt in path:
            return " -> ".join([*path, nxt])
        path.append(nxt)
        node = nxt


def dependents_of(name: str, manifests: Mapping[str, Manifest], among: Sequence[str]) -> list[str]:
    """Every plugin in `among` that requires `name`, directly or through others."""
    found: list[str] = []
    frontier = {name}
    for other in among:  # `among` is in dependency order, so one pass suffices
        if other != name and frontier & set(manifests[other].dependencies):
            found.append(other)
            frontier.add(other)
    return found
