"""Start-up leaves out the libraries serving does not need until a feature is used
(docs/performance.md, memory): the CLI, the server and every first-party plugin's module
import none of them."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

# Each is imported where it is used: Redis event bus or queue store, JWT tokens, the
# releases plugin reaching a target (httpx loads rich), platform repositories and
# manifest checks, migrations and `courtyard db` (Alembic loads mako and pygments).
LAZY = (
    "redis",
    "joserfc",
    "httpx",
    "rich",
    "dulwich",
    "jsonschema",
    "kubernetes_validate",
    "alembic",
    "mako",
    "pygments",
)

CHECK = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_start_up_imports_no_library_it_does_not_need():
    plugins = [point.value for point in entry_points(group="courtyard.plugins")]
    assert plugins, "the first-party plugins are installed in a checkout"
    done = subprocess.run(
        [sys.executable, "-c", CHECK, "courtyard.cli", "courtyard.server", *plugins],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert "quart" in loaded  # the check sees what was imported
    assert loaded.isdisjoint(LAZY), sorted(loaded & set(LAZY))
