"""Refresh what the operator console vendors: htmx, the lucide icons its menus use, and
(for the browser tests only) axe-core.

    uv run python runtime/scripts/vendor_console.py htmx 2.0.11
    uv run python runtime/scripts/vendor_console.py lucide 1.62.0
    uv run python runtime/scripts/vendor_console.py axe 4.14.1

Each package comes from the npm registry through `npm pack` (checked by npm against the
registry's integrity). htmx goes to runtime/src/courtyard/vendor/htmx/ (`htmx.min.js`),
the icons named in `ICONS` to runtime/src/courtyard/vendor/lucide/ (one SVG each), and
axe-core to tests/runtime/console/fixtures/ (`axe.min.js`), each with its license and a
JSON file recording version, license and SHA-384 integrity. Run the console tests
afterwards: `uv run pytest tests/runtime/console -q -m "slow or not slow"`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "runtime" / "src" / "courtyard" / "vendor"

# The first-party plugins' menu icons, the console's own navigation, and the fallback
# (`puzzle`) drawn for any icon not vendored.
ICONS = (
    "folder-git-2",
    "list-checks",
    "rocket",
    "server-cog",
    "key-round",
    "layout-dashboard",
    "blocks",
    "package",
    "key",
    "scroll-text",
    "puzzle",
)

PACKAGES = {
    # name: (npm package, {member in the tarball: file name}, target folder)
    "htmx": ("htmx.org", {"package/dist/htmx.min.js": "htmx.min.js"}, VENDOR / "htmx"),
    "lucide": (
        "lucide-static",
        {f"package/icons/{icon}.svg": f"{icon}.svg" for icon in ICONS},
        VENDOR / "lucide",
    ),
    "axe": (
        "axe-core",
        {"package/axe.min.js": "axe.min.js"},
        ROOT / "tests" / "runtime" / "console" / "fixtures",
    ),
}


def integrity(data: bytes) -> str:
    """The subresource-integrity value of `data` (SHA-384)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def main(name: str, version: str) -> None:
    """Fetch `version` of the package `name` and write its files beside their metadata."""
    package, members, target = PACKAGES[name]
    target.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--json", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            text=True,
        )
        packed = json.loads(out.stdout)[0]
        with tarfile.open(Path(scratch) / packed["filename"]) as archive:
            for member, file in members.items():
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                (target / file).write_bytes(data)
                files[file] = integrity(data)
            (target / "LICENSE").write_bytes(
                archive.extractfile("package/LICENSE").read()  # type: ignore[union-attr]
            )
            manifest = json.load(archive.extractfile("package/package.json"))  # type: ignore[arg-type]
    metadata = {
        "package": package,
        "version": manifest["version"],
        "license": manifest["license"],
        "files": files,
        "npm_integrity": packed["integrity"],
    }
    (target / f"{name}.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"{package} {metadata['version']} ({metadata['license']}): {len(files)} file(s)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in PACKAGES:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
