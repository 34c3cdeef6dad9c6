"""Importing plugin code: private per-generation module names, fresh source on reload."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from courtyard_sdk import Manifest
from courtyard_sdk.names import slug
from packaging.requirements import Requirement

if TYPE_CHECKING:
    from typing_extensions import Buffer

PRIVATE_PREFIX = "_courtyard_g"


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compile plugin sources every time: a cached .pyc could hide an edit made within
    the same second that kept the file's size."""

    def path_stats(self, path: str) -> dict[str, float]:
        raise OSError("plugin sources are always recompiled")

    def set_data(self, path: str, data: Buffer, *, _mode: int = 0o666) -> None:
        return None  # write no .pyc into the plugin folder


_plugin_roots: set[Path] = set()


def _path_hook(entry: str) -> importlib.machinery.FileFinder:
    path = Path(entry)
    if any(path == root or root in path.parents for root in _plugin_roots):
        return importlib.machinery.FileFinder(
            entry, (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES)
        )
    raise ImportError  # not ours: let the next path hook handle it


sys.path_hooks.insert(0, _path_hook)


def package_name(generation: int, plugin: str) -> str:
    """The private top-level package a directory plugin is imported under."""
    return f"{PRIVATE_PREFIX}{generation}_{slug(plugin)}"


def import_directory_plugin(root: Path, manifest: Manifest, generation: int) -> types.ModuleType:
    """Import `manifest.module` from the plugin folder `root` under a private name.

    The folder becomes a package named for this generation and plugin, so two plugins
    never clash in `sys.modules`, relative imports work, and each reload imports anew.
    """
    assert manifest.module is not None
    root = root.resolve()
    if root not in _plugin_roots:
        _plugin_roots.add(root)
        sys.path_importer_cache.pop(str(root), None)
    name = package_name(generation, manifest.name)
    package = types.ModuleType(name, f"Courtyard plugin {manifest.name}")
    package.__path__ = [str(root)]
    package.__package__ = name
    package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    package.__spec__.submodule_search_locations = [str(root)]
    sys.modules[name] = package
    importlib.invalidate_caches()
    return importlib.import_module(f"{name}.{manifest.module}")


def import_installed_plugin(module: str) -> types.ModuleType:
    """Import an entry-point plugin's module (installed code is imported once per process)."""
    return importlib.import_module(module)


def forget_generation(generation: int) -> None:
    """Drop a retired generation's private modules from `sys.modules`."""
    prefix = f"{PRIVATE_PREFIX}{generation}_"
    for name in [n for n in sys.modules if n.startswith(prefix)]:
        del sys.modules[name]


def unmet_requirements(manifest: Manifest) -> list[str]:
    """The manifest's `requires` entries that the installed distributions do not satisfy."""
    problems: list[str] = []
    for text in manifest.requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{text} (found {installed})")
    return problems
