"""Refresh the vendored Scalar script the docs page serves (`/api/docs/scalar.js`).

    uv run python runtime/scripts/vendor_scalar.py 1.72.1

Fetches `@scalar/api-reference@<version>` with `npm pack` (the npm registry, checked
against the registry's integrity by npm), takes its browser build
`dist/browser/standalone.js`, and writes it with `scalar.json` (version, license, SHA-384
integrity) into runtime/src/courtyard/vendor/scalar/. Run the OpenAPI tests afterwards:
`uv run pytest tests/runtime/test_openapi.py -q`.
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

PACKAGE = "@scalar/api-reference"
MEMBER = "package/dist/browser/standalone.js"
TARGET = Path(__file__).resolve().parents[1] / "src" / "courtyard" / "vendor" / "scalar"
SCRIPT = "api-reference.standalone.js"


def integrity(data: bytes) -> str:
    """The subresource-integrity value of `data` (SHA-384)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def main(version: str) -> None:
    """Fetch `version` and write it beside its metadata."""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            text=True,
        )
        packed = json.loads(out.stdout)[0]
        with tarfile.open(Path(scratch) / packed["filename"]) as archive:
            script = archive.extractfile(MEMBER).read()  # type: ignore[union-attr]
            manifest = json.load(archive.extractfile("package/package.json"))  # type: ignore[arg-type]
    (TARGET / SCRIPT).write_bytes(script)
    metadata = {
        "package": PACKAGE,
        "version": manifest["version"],
        "license": manifest["license"],
        "file": SCRIPT,
        "from": MEMBER.removeprefix("package/"),
        "integrity": integrity(script),
        "npm_integrity": packed["integrity"],
    }
    (TARGET / "scalar.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"{PACKAGE} {metadata['version']} ({metadata['license']}): {metadata['integrity']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
