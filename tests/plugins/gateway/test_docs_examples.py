"""docs/gateway.md cannot rot: every TOML example in it (and in the plugin's README) loads
as a `courtyard.toml` and passes the gateway's checks, and the two complete examples, the
limits of seeds 002 and 004, do what the seeds say on real routes."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from courtyard.settings import load_settings
from courtyard.testing import write_plugin
from courtyard_gateway.gateway import Gateway
from courtyard_gateway.rules import ConfigError
from courtyard_sdk import read_manifest
from gateway_kit import GATEWAY, SECRET, bearer

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "gateway.md"
README = ROOT / "plugins" / "gateway" / "README.md"
_BLOCK = re.compile(r"(?:<!-- example: (?P<name>[\w-]+) -->\n)?```toml\n(?P<body>.*?)```", re.S)


def toml_blocks(path: Path) -> dict[str, str]:
    """The TOML code blocks of a Markdown file, by example name (or `<file>:<n>`)."""
    return {
        m["name"] or f"{path.name}:{n}": m["body"]
        for n, m in enumerate(_BLOCK.finditer(path.read_text(encoding="utf-8")))
    }


EXAMPLES = {**toml_blocks(DOCS), **toml_blocks(README)}


def gateway_settings(text: str, tmp_path: Path) -> dict[str, Any]:
    """Load `text` as a courtyard.toml, then check its gateway settings as the runtime does
    (the plugin's config schema) and as the plugin does (`Gateway.from_settings`)."""
    config = tmp_path / "courtyard.toml"
    config.write_text(text, encoding="utf-8")
    settings = load_settings(environ={}, config=config)
    values = read_manifest(GATEWAY).validate_settings(dict(settings.plugins["gateway"]))
    Gateway.from_settings(values)
    return values


def test_the_docs_have_the_two_seed_examples():
    assert {"seed-002", "seed-004"} <= EXAMPLES.keys()
    assert len(EXAMPLES) >= 8  # every ```toml block of both files


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_toml_example_is_valid(name, tmp_path):
    values = gateway_settings(EXAMPLES[name], tmp_path)

    assert values["rules"] or values["cors"] or values["trusted_proxies"] or values["redis_url"]


def test_the_documented_error_message_is_the_real_one(tmp_path):
    docs = DOCS.read_text(encoding="utf-8")
    shown = re.search(r"courtyard_startup raised ConfigError: (.*)\n", docs)[1]
    config = "\n".join(
        [
            '[[plugins."gateway".rules]]\npath = "/api/runners/register"\nlimit = 10\nper = 60',
            '[[plugins."gateway".rules]]\npath = "/api/runners/bulk"\nlimit = 5\nper = 0',
        ]
    )

    with pytest.raises(ConfigError) as caught:
        gateway_settings(config, tmp_path)

    assert f"invalid gateway configuration: {caught.value}" == shown


def test_seed_002_example_expresses_the_seeds_four_limits(tmp_path):
    rules = gateway_settings(EXAMPLES["seed-002"], tmp_path)["rules"]
    summary = [(r["path"], r.get("methods"), r["limit"], r["per"], r["key"]) for r in rules]

    assert summary == [
        ("/api/runners/register", ["POST"], 10, 60, "ip"),
        ("/api/runners/bulk", ["POST"], 5, 60, "identity"),
        (
            ["/api/runners/{runner_id}/status", "/api/runners/{runner_id}/health"],
            ["GET"],
            100,
            60,
            "param:runner_id",
        ),
        ("/api/runners/{runner_id}/jobs", ["POST"], 50, 60, "param:runner_id"),
    ]


RUNNERS = """\
from courtyard_sdk import Blueprint, hookimpl


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("runners", __name__, url_prefix="/api/runners")

    @bp.post("/register")
    async def register():
        return {"success": True}

    @bp.post("/bulk")
    async def bulk():
        return {"success": True}

    @bp.get("/<runner_id>/status")
    async def status(runner_id):
        return {"success": True}

    @bp.get("/<runner_id>/health")
    async def health(runner_id):
        return {"success": True}

    @bp.post("/<runner_id>/jobs")
    async def jobs(runner_id):
        return {"success": True}

    return bp
"""

V1 = """\
from courtyard_sdk import Blueprint, hookimpl


@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("v1", __name__, url_prefix="/api/v1")

    @bp.get("/releases")
    async def releases():
        return {"success": True, "data": []}

    return bp
"""


@pytest.fixture
def documented(courtyard: Any, plugin_dir: Path, tmp_path: Path) -> Any:
    """Start a runtime with a documented example's gateway settings, routes at the seeds'
    paths, and JWT bearer tokens signed with `SECRET` (see `bearer`)."""
    shutil.copytree(GATEWAY, plugin_dir / "gateway")
    write_plugin(plugin_dir, "runners", code=RUNNERS)
    write_plugin(plugin_dir, "v1", code=V1)

    async def go(example: str) -> Any:
        gateway = gateway_settings(EXAMPLES[example], tmp_path)
        return await courtyard(entry_points=False, plugins={"gateway": gateway}, jwt_secret=SECRET)

    return go


async def statuses(client: Any, method: str, path: str, n: int, **kw: Any) -> list[int]:
    return [(await client.request(method, path, **kw)).status_code for _ in range(n)]


async def granted_until_refused(client: Any, method: str, path: str, **kw: Any) -> int:
    """Send requests until one is refused; how many were served before it."""
    served, _ = await until_refused(client, method, path, **kw)
    return served


async def until_refused(client: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """Send requests until one is refused: how many were served before it, and the 429."""
    for served in range(10_000):
        answer = await client.request(method, path, **kw)
        if answer.status_code == 429:
            return served, answer
    raise AssertionError(f"{method} {path}: no 429 after 10000 requests")


def assert_budget(granted: int, burst: int, per_minute: int, since: float) -> None:
    """`granted` is the burst plus at most what refilled since `since` (the seeds' rates
    refill while a test sends, a token every 12 ms for premium)."""
    refilled = (time.monotonic() - since) * per_minute / 60
    assert burst <= granted <= burst + refilled


async def test_seed_002_limits_hold_on_the_runner_routes(documented):
    rt = await documented("seed-002")
    c = rt.client

    # Registration: 10 per minute per IP.
    since = time.monotonic()
    assert_budget(await granted_until_refused(c, "POST", "/api/runners/register"), 10, 10, since)
    # Status and health: 100 per minute per runner, one budget for both.
    since = time.monotonic()
    assert await statuses(c, "GET", "/api/runners/r1/status", 60) == [200] * 60
    health = await granted_until_refused(c, "GET", "/api/runners/r1/health")
    assert_budget(60 + health, 100, 100, since)
    assert await statuses(c, "GET", "/api/runners/r2/status", 1) == [200]
    # Job submission: 50 per minute per runner.
    since = time.monotonic()
    assert_budget(await granted_until_refused(c, "POST", "/api/runners/r1/jobs"), 50, 50, since)
    assert await statuses(c, "POST", "/api/runners/r2/jobs", 1) == [200]
    # Bulk operations: 5 per minute per user.
    ann, bob = bearer(sub="ann"), bearer(sub="bob")
    since = time.monotonic()
    granted = await granted_until_refused(c, "POST", "/api/runners/bulk", headers=ann)
    assert_budget(granted, 5, 5, since)
    assert await statuses(c, "POST", "/api/runners/bulk", 1, headers=bob) == [200]

    answer = await c.get("/api/runners/r3/status")
    assert answer.headers["X-RateLimit-Limit"] == "100"
    assert answer.headers["X-RateLimit-Remaining"] == "99"
    assert 0 < int(answer.headers["X-RateLimit-Reset"]) - time.time() <= 2


async def test_seed_004_tiers_hold_on_the_v1_routes(documented):
    rt = await documented("seed-004")
    standard = bearer(sub="ann", tier="standard")
    premium = bearer(sub="bob", roles=["premium"])

    for headers, limit, burst in ((standard, 1000, 100), (premium, 5000, 500)):
        since = time.monotonic()
        granted, refused = await until_refused(
            rt.client, "GET", "/api/v1/releases", headers=headers
        )
        assert_budget(granted, burst, limit, since)
        assert refused.headers["X-RateLimit-Limit"] == str(limit)
        assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # No credential: the default tier, standard.
    answer = await rt.client.get("/api/v1/releases")
    assert answer.headers["X-RateLimit-Limit"] == "1000"
