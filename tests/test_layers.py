"""The import layering of the runtime and the SDK (docs/architecture.md#layers).

Imports point down only, and nothing imports in a circle. Every import counts, also one
inside a function or under `TYPE_CHECKING`: a circle held together by either is still a
circle for the reader. A new module must be placed in a layer below, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "sdk" / "src", ROOT / "runtime" / "src", *(ROOT / "plugins").glob("*/src"))

# Bottom to top. A module belongs to the first layer one of whose prefixes it matches.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("sdk", ("courtyard_sdk",)),
    (
        "leaves",
        (
            "courtyard.__init__",
            "courtyard.settings",
            "courtyard.database_urls",
            "courtyard.asgi",
            "courtyard.errors",
            "courtyard.outages",
            "courtyard.mistakes",
            "courtyard.security",
            "courtyard.redaction",
            "courtyard.limits",
            "courtyard.proxies",
            "courtyard.logs",
            "courtyard.routes",
            "courtyard.discovery",
            "courtyard.ordering",
            "courtyard.loading",
            "courtyard.tracing",
            "courtyard.hooks",
            "courtyard.archives",
            "courtyard.installs",
            "courtyard.apps",
        ),
    ),
    ("services", ("courtyard.services",)),
    ("generation", ("courtyard.generation",)),
    ("core API", ("courtyard.core", "courtyard.console")),
    (
        "app assembly",
        (
            "courtyard.app",
            "courtyard.quart_app",
            "courtyard.json_provider",
            "courtyard.request_audit",
        ),
    ),
    ("dispatcher", ("courtyard.dispatcher",)),
    ("server and CLI", ("courtyard",)),
    ("plugins", ("courtyard_",)),
]


def _modules() -> dict[str, Path]:
    found = {}
    for source in SOURCES:
        for path in source.rglob("*.py"):
            parts = path.relative_to(source).with_suffix("").parts
            if parts[-1] == "__init__" and len(parts) > 2:
                parts = parts[:-1]  # a subpackage is its name; a top package `x.__init__`
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (
                module == prefix
                or module.startswith(prefix + ".")
                or (prefix.endswith("_") and module.startswith(prefix))
            ):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _package(module: str) -> str:
    path = MODULES[module]
    return module.removesuffix(".__init__") if path.name == "__init__.py" else module


def _imports(module: str) -> set[str]:
    """The project modules `module` imports (a submodule when one is named)."""
    found = set()
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module).split(".")
                if MODULES[module].name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            targets = [
                f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and f"{target}.__init__" not in MODULES:
                target = target.rpartition(".")[0]
            if f"{target}.__init__" in MODULES and target not in MODULES:
                target = f"{target}.__init__"
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a higher layer, described."""
    return [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in graph.items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules importing each other in a circle (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in list(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_points_up_a_layer():
    assert not (found := upward_imports(GRAPH)), "\n".join(found)


def test_no_import_cycle():
    assert not (found := import_cycles(GRAPH)), "\n".join(" <-> ".join(c) for c in found)


def test_an_upward_import_or_a_cycle_would_be_caught():
    # An import under TYPE_CHECKING counts like any other.
    settings = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n")
    assert any(isinstance(node, ast.Import) for node in ast.walk(settings))
    bad = {**GRAPH, "courtyard.settings": GRAPH["courtyard.settings"] | {"courtyard.dispatcher"}}
    assert upward_imports(bad) == [
        "courtyard.settings (leaves) imports courtyard.dispatcher (dispatcher)"
    ]
    assert import_cycles(bad)  # the host imports the settings
