"""Memory: resident memory (RSS) of each server after start-up and after 100 000 requests
(a leak shows as growth), and what each first-party plugin adds to `courtyard serve`.

    uv run python bench/memory.py [--requests 100000] [--no-per-plugin]

Servers, each serving the bench routes (servers.py) and loaded on `GET /bench/noop`:

- quart: a bare Quart app on Hypercorn (servers.py);
- courtyard: the runtime's Dispatcher on the same Hypercorn set-up (servers.py), with
  every installed plugin;
- courtyard serve: the real `courtyard serve` command as a checkout runs it (its default
  server and event loop, every installed first-party plugin).

"After start-up" is read once the server is ready and a short warm-up load has run.
Then, per plugin: `courtyard serve` with no first-party plugin (`COURTYARD_ONLY_PLUGINS`
naming the bench plugin alone), and with each first-party plugin (and the plugins it
depends on), after start-up; the difference to its dependencies alone (to none, for a
plugin without) is what the plugin costs. A library two plugins share counts for each.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from courtyard_sdk import read_manifest
from harness import SMOKE_LOAD_SECONDS, load, save, serving, smoke, table

SERVERS = {"quart": "quart", "courtyard": "courtyard", "courtyard serve": "courtyard-cli"}
CHUNK = smoke(5.0, SMOKE_LOAD_SECONDS)  # seconds of load between two looks at the count


def first_party_plugins() -> dict[str, tuple[str, ...]]:
    """The installed entry-point plugins (the first-party ones, from a checkout), each
    with the plugins it depends on (its manifest's `dependencies`, transitively)."""
    direct: dict[str, tuple[str, ...]] = {}
    for point in entry_points(group="courtyard.plugins"):
        spec = importlib.util.find_spec(point.value.split(".")[0])
        assert spec is not None and spec.submodule_search_locations is not None
        manifest = read_manifest(Path(next(iter(spec.submodule_search_locations))))
        direct[point.name] = tuple(manifest.dependencies)

    def closure(name: str) -> tuple[str, ...]:
        found = {d for dep in direct.get(name, ()) for d in (dep, *closure(dep))}
        return tuple(sorted(found))

    return {name: closure(name) for name in sorted(direct)}


def under_load(requests: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, kind in SERVERS.items():
        with serving(kind) as server:
            url = server.url + "/bench/noop"
            load(url, 1, 8)  # warm up
            before = server.rss_mb
            served = 0
            while served < requests:
                figures = load(url, CHUNK, 32)
                if figures["errors"]:
                    raise SystemExit(f"{name}: {figures['errors']} requests failed")
                served += int(figures["rps"] * CHUNK)
            after = server.rss_mb
        rows.append(
            {
                "server": name,
                "requests": served,
                "rss_start_mb": before,
                "rss_after_mb": after,
                "growth_mb": after - before,
            }
        )
    return rows


def per_plugin(plugins: dict[str, tuple[str, ...]]) -> list[dict[str, object]]:
    """RSS after start-up with no first-party plugin, then with each (and the plugins it
    depends on): what it adds is the difference to its dependencies alone."""
    measured: dict[frozenset[str], float] = {}

    def rss_with(names: frozenset[str]) -> float:
        if names not in measured:
            only = ",".join(["bench", *sorted(names)])
            with serving("courtyard-cli", env={"COURTYARD_ONLY_PLUGINS": only}) as server:
                load(server.url + "/bench/noop", 1, 8)  # warm up
                measured[names] = server.rss_mb
        return measured[names]

    rows: list[dict[str, object]] = [
        {"plugin": "none", "with": "", "rss_start_mb": rss_with(frozenset()), "added_mb": 0.0}
    ]
    for name, dependencies in plugins.items():
        rss = rss_with(frozenset({name, *dependencies}))
        rows.append(
            {
                "plugin": name,
                "with": ",".join(dependencies),
                "rss_start_mb": rss,
                "added_mb": rss - rss_with(frozenset(dependencies)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=smoke(100_000, 500))
    parser.add_argument("--no-per-plugin", action="store_true", help="leave the plugins out")
    args = parser.parse_args()
    servers = under_load(args.requests)
    print(table(servers))
    results: dict[str, object] = {"servers": servers}
    if not args.no_per_plugin:
        plugins = first_party_plugins()
        # Smoke mode: one plugin with a dependency, if any, goes through the whole loop.
        some = [n for n, deps in plugins.items() if deps][:1] or list(plugins)[:1]
        results["plugins"] = rows = per_plugin(smoke(plugins, {n: plugins[n] for n in some}))
        print()
        print(table(rows))
    print(f"\nsaved {save('memory', results)}")


if __name__ == "__main__":
    main()
