"""Finding plugins without importing them: plugin directories, then entry points."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from courtyard_sdk import Manifest, ManifestError, read_manifest
from courtyard_sdk.manifest import MANIFEST_FILE

from .settings import Settings

ENTRY_POINT_GROUP = "courtyard.plugins"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A plugin found on disk: its folder, and its manifest or why the manifest is bad.

    :ivar root: the folder holding `plugin.toml`.
    :ivar source: "directory" or "entry point".
    :ivar module: for an entry-point plugin, the module to import (the entry point's value).
    :ivar shadowed_by: the root of an earlier plugin with the same name, which wins.
    """

    root: Path
    source: str
    manifest: Manifest | None = None
    error: str | None = None
    module: str | None = None
    shadowed_by: Path | None = None

    @property
    def name(self) -> str:
        """The manifest's name, or the folder's name when the manifest is unreadable."""
        if self.manifest is not None:
            return self.manifest.name
        if self.root.parent.name.startswith("@"):
            return f"{self.root.parent.name}/{self.root.name}"
        return self.root.name

    @property
    def shadow_note(self) -> str | None:
        """Why this candidate is not used, when an earlier one has its name."""
        if self.shadowed_by is None:
            return None
        return f"shadowed: {self.name} is already provided by {self.shadowed_by}"


def _plugin_folders(plugin_dir: Path) -> list[Path]:
    """`name/` and `@scope/name/` folders of one plugin directory; dot entries skipped.
    A directory that holds a `plugin.toml` itself is that one plugin (`courtyard dev`)."""
    if not plugin_dir.is_dir():
        return []
    if (plugin_dir / MANIFEST_FILE).is_file():
        return [plugin_dir]
    found: list[Path] = []
    for entry in sorted(plugin_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name.startswith("@"):
            found.extend(
                sub
                for sub in sorted(entry.iterdir())
                if sub.is_dir() and not sub.name.startswith(".")
            )
        else:
            found.append(entry)
    return found


def _read(root: Path, source: str, module: str | None = None) -> Candidate:
    try:
        return Candidate(root, source, read_manifest(root), module=module)
    except ManifestError as exc:
        return Candidate(root, source, error=str(exc), module=module)


def _entry_point_candidates() -> list[Candidate]:
    found: list[Candidate] = []
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        module = ep.value.split(":", 1)[0].strip()
        if module in seen:  # the same distribution twice on sys.path
            continue
        seen.add(module)
        # find_spec of a top-level package locates it without running its code.
        try:
            spec = importlib.util.find_spec(module.split(".", 1)[0])
        except (ImportError, ValueError) as exc:
            spec, error = None, f"entry point {ep.name} = {ep.value}: {exc}"
        else:
            error = f"entry point {ep.name} = {ep.value}: package not found"
        if spec is None or not spec.submodule_search_locations:
            found.append(Candidate(Path(module), "entry point", error=error, module=module))
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        found.append(_read(root, "entry point", module))
    return found


def scan(settings: Settings) -> list[Candidate]:
    """Every plugin the settings point at, in discovery order.

    Plugin directories come first, in the order given, then installed distributions'
    entry points. When two candidates share a name the first wins; the other is returned
    with `shadowed_by` set.
    """
    candidates = [
        _read(folder, "directory")
        for plugin_dir in settings.plugin_folders
        for folder in _plugin_folders(plugin_dir)
    ]
    if settings.entry_points:
        candidates.extend(_entry_point_candidates())
    first: dict[str, Path] = {}
    result: list[Candidate] = []
    for cand in candidates:
        winner = first.setdefault(cand.name, cand.root)
        if winner != cand.root:
            cand = Candidate(**{**cand.__dict__, "shadowed_by": winner})
        result.append(cand)
    return result
