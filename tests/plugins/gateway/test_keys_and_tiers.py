"""The gateway's `identity` and `api_key` keys, rules with several paths, and tiers.

The caller's identity comes from `gateway_kit.IDENTITY_STUB`, a plugin whose request hook
runs before the gateway's and sets `g.courtyard_identity`, so that a test can present any
identity (a key whose id equals a token's subject, a list-valued claim) on demand. The same
features with the runtime's real tokens and keys: test_with_auth.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from courtyard.testing import ORIGIN
from courtyard_gateway.gateway import Gateway, presented_credential
from courtyard_gateway.rules import ConfigError
from gateway_kit import as_identity


def client_from(rt: Any, ip: str) -> httpx.AsyncClient:
    """A client on the same runtime whose direct peer address is `ip`."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher, client=(ip, 40000)),
        base_url=ORIGIN,
        headers={"Origin": ORIGIN},
    )


def bucket_keys(rt: Any) -> list[str]:
    """The keys of the serving generation's in-memory buckets."""
    rec = rt.dispatcher.current.record("gateway")
    return list(rec.ctx.state[rec.module.Gateway].store._buckets)


async def codes(client: httpx.AsyncClient, n: int, path: str = "/svc/items", **kw: Any) -> list:
    return [(await client.get(path, **kw)).status_code for _ in range(n)]


# identity -------------------------------------------------------------------------------


async def test_identity_key_gives_each_caller_one_bucket_wherever_it_calls_from(identified):
    rt = await identified(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "identity"}])
    alice, bob = as_identity("alice"), as_identity("bob")
    one, two = client_from(rt, "192.0.2.1"), client_from(rt, "192.0.2.2")
    async with one, two:
        assert (await one.get("/svc/items", headers=alice)).status_code == 200
        # The same caller from another address shares the bucket ...
        assert (await two.get("/svc/items", headers=alice)).status_code == 429
        # ... and another caller from the same address has its own.
        assert (await one.get("/svc/items", headers=bob)).status_code == 200

    assert sorted(bucket_keys(rt)) == ["0:identity:token:alice", "0:identity:token:bob"]


async def test_identity_key_keeps_kinds_apart(identified):
    rt = await identified(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "identity"}])

    # An API key whose id is "k1" and a token whose subject is "k1" are different callers.
    assert await codes(rt.client, 2, headers=as_identity("k1", kind="key")) == [200, 429]
    assert await codes(rt.client, 2, headers=as_identity("k1", kind="token")) == [200, 429]


async def test_anonymous_and_open_callers_fall_back_to_their_address(identified):
    rt = await identified(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "identity"}])
    anonymous = as_identity("anonymous", kind="anonymous")
    one, two = client_from(rt, "192.0.2.1"), client_from(rt, "192.0.2.2")
    async with one, two:
        assert await codes(one, 2, headers=anonymous) == [200, 429]
        assert await codes(two, 1, headers=anonymous) == [200]
        # No identity set: the runtime's OPEN identity (no auth configured), by address too.
        assert await codes(one, 1) == [429]
        assert await codes(two, 1) == [429]

    assert sorted(bucket_keys(rt)) == ["0:ip:192.0.2.1", "0:ip:192.0.2.2"]


# api_key --------------------------------------------------------------------------------


async def test_api_key_key_buckets_by_a_digest_of_the_credential(start):
    rt = await start(rules=[{"path": "/svc/items", "limit": 1, "per": 60, "key": "api_key"}])
    secret = "cy_live_0123456789abcdef"
    one, two = client_from(rt, "192.0.2.1"), client_from(rt, "192.0.2.2")
    async with one, two:
        assert (await one.get("/svc/items", headers={"X-API-Key": secret})).status_code == 200
        # The same key, presented as a Bearer credential from elsewhere: the same bucket.
        bearer = {"Authorization": f"Bearer {secret}"}
        assert (await two.get("/svc/items", headers=bearer)).status_code == 429
        other = {"Authorization": "bearer another-key"}  # the scheme is case-insensitive
        assert (await one.get("/svc/items", headers=other)).status_code == 200
        # No credential (or not a Bearer one): by address.
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        assert await codes(one, 2, headers=basic) == [200, 429]
        assert await codes(two, 1) == [200]

    keys = bucket_keys(rt)
    assert len(keys) == 4
    assert not any(secret in key or "another-key" in key for key in keys)
    assert sum(key.startswith("0:api_key:#") for key in keys) == 2


async def test_header_values_are_stored_as_digests(start):
    rule = {"path": "/svc/items", "limit": 1, "per": 60, "key": "header:Authorization"}
    rt = await start(rules=[rule])

    headers = {"Authorization": "Bearer s3cret-token"}
    assert await codes(rt.client, 2, headers=headers) == [200, 429]

    (key,) = bucket_keys(rt)
    assert key.startswith("0:header:#") and "s3cret" not in key


def test_presented_credential():
    assert presented_credential({"X-API-Key": " k "}) == "k"
    assert presented_credential({"X-API-Key": "k", "Authorization": "Bearer t"}) == "k"
    assert presented_credential({"Authorization": "BEARER  t "}) == "t"
    assert presented_credential({"Authorization": "Bearer"}) is None
    assert presented_credential({"Authorization": "Basic abc"}) is None
    assert presented_credential({}) is None


# Several paths, one budget ---------------------------------------------------------------


async def test_a_rule_with_several_paths_shares_one_budget_per_key(start):
    rule = {
        "path": ["/svc/runners/{runner}/status", "/svc/items"],
        "limit": 2,
        "per": 60,
        "key": "param:runner",
    }
    rt = await start(rules=[rule])

    # Both paths of the rule take from the same bucket of runner r1.
    assert (await rt.client.get("/svc/runners/r1/status")).status_code == 200
    assert (await rt.client.post("/svc/runners/r1/status")).status_code == 200
    assert (await rt.client.get("/svc/runners/r1/status")).status_code == 429
    assert (await rt.client.get("/svc/runners/r2/status")).status_code == 200
    # The second path has no {runner}: the query parameter, then the address.
    assert await codes(rt.client, 2, path="/svc/items?runner=r2") == [200, 429]
    assert await codes(rt.client, 3, path="/svc/items") == [200, 200, 429]


# Tiers ----------------------------------------------------------------------------------

TIERS = {
    "premium": {"limit": 4, "per": 60},
    "standard": {"limit": 100, "per": 60, "burst": 2},
}


def tiered(tier: Any, **extra: Any) -> dict[str, Any]:
    return {
        "path": "/svc/items",
        "key": "identity",
        "tiers": TIERS,
        "tier": tier,
        "default_tier": "standard",
        **extra,
    }


async def test_tier_from_a_claim(identified):
    rt = await identified(rules=[tiered("claim:tier")])
    premium = as_identity("ann", claims={"tier": "premium"})
    standard = as_identity("bob", claims={"tier": "standard"})
    unknown = as_identity("cid", claims={"tier": "gold"})  # not a tier: the default

    answers = [await rt.client.get("/svc/items", headers=premium) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"4"}
    assert answers[-1].json()["error"]["message"] == (
        "rate limit of 4 requests per 60 s (tier premium) exceeded; retry in 15 s"
    )
    answers = [await rt.client.get("/svc/items", headers=standard) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "100"
    assert answers[-1].headers["Retry-After"] == "1"
    assert await codes(rt.client, 3, headers=unknown) == [200, 200, 429]


async def test_tier_from_roles_in_the_order_the_tiers_are_written(identified):
    rt = await identified(rules=[tiered("role")])
    both = as_identity("ann", roles=["standard", "premium", "editor"])
    editor = as_identity("bob", roles=["editor"])

    # premium is written first: a caller holding both roles is premium.
    assert await codes(rt.client, 5, headers=both) == [200] * 4 + [429]
    assert await codes(rt.client, 3, headers=editor) == [200, 200, 429]


async def test_tier_sources_are_tried_in_order_and_anonymous_gets_the_default(identified):
    rt = await identified(rules=[tiered(["claim:plan", "role"])])
    by_role = as_identity("ann", roles=["premium"], claims={"plan": "none"})
    by_claim = as_identity("bob", roles=["premium"], claims={"plan": ["x", "standard"]})

    assert await codes(rt.client, 5, headers=by_role) == [200] * 4 + [429]
    assert await codes(rt.client, 3, headers=by_claim) == [200, 200, 429]
    # Anonymous: the default tier, keyed by address.
    anonymous = as_identity("anonymous", kind="anonymous", roles=["premium"])
    assert await codes(rt.client, 3, headers=anonymous) == [200, 200, 429]

    assert sorted(bucket_keys(rt)) == [
        "0@premium:identity:token:ann",
        "0@standard:identity:token:bob",
        "0@standard:ip:127.0.0.1",
    ]


async def test_buckets_of_different_tiers_never_share_state(identified):
    rt = await identified(rules=[tiered("claim:tier")])
    as_premium = as_identity("ann", claims={"tier": "premium"})
    as_standard = as_identity("ann", claims={"tier": "standard"})

    # The same caller, moved to another tier, starts with that tier's full bucket.
    assert await codes(rt.client, 5, headers=as_premium) == [200] * 4 + [429]
    assert await codes(rt.client, 3, headers=as_standard) == [200, 200, 429]
    assert await codes(rt.client, 1, headers=as_premium) == [429]


async def test_tiers_with_a_global_key(identified):
    rt = await identified(rules=[tiered("role", key="global")])

    # One bucket per tier, shared by every caller of that tier.
    assert await codes(rt.client, 2, headers=as_identity("a", roles=["premium"])) == [200] * 2
    assert await codes(rt.client, 3, headers=as_identity("b", roles=["premium"])) == [200, 200, 429]
    assert await codes(rt.client, 3, headers=as_identity("c")) == [200, 200, 429]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (tiered("role", limit=5), "limit goes in each tier when tiers is set, not in the rule"),
        (tiered("role", tiers={}), "tiers must be a table of tiers"),
        (tiered("role", tiers={"gold plan": {"limit": 1, "per": 1}}), "'gold plan' is not a tier"),
        (tiered("role", tiers={"gold": {"limit": 1}}), "tiers.gold: per is required"),
        (tiered("role", tiers={"gold": {"limit": 1, "per": 0}}), "tiers.gold: per must be"),
        (
            tiered("role", tiers={"gold": {"limit": 1, "per": 1, "rate": 2}}),
            "tiers.gold: unknown key 'rate'",
        ),
        (tiered("role", default_tier="gold"), "default_tier 'gold' is not one of the tiers"),
        (tiered("role", default_tier=None), "default_tier is required with tiers"),
        (tiered(3), "tier must be"),
        (tiered("claim:"), "tier: 'claim:' is not"),
        (tiered(["role", "header:X-Tier"]), "tier: 'header:X-Tier' is not"),
        ({"path": "/a", "limit": 1, "per": 1, "tier": "role"}, "tier needs tiers"),
        ({"path": "/a", "limit": 1, "per": 1, "default_tier": "x"}, "default_tier needs tiers"),
        ({"path": "/a", "limit": 1, "per": 1, "key": "identity:x"}, "identity takes no name"),
        ({"path": ["/a", "b"], "limit": 1, "per": 1}, 'path[1] ("b") must start with /'),
        ({"path": [], "limit": 1, "per": 1}, "path must be a pattern or a non-empty list"),
    ],
)
def test_bad_tiers_and_keys_are_named(rule, message):
    rule = {k: v for k, v in rule.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        Gateway.from_settings({"rules": [{"path": "/ok", "limit": 1, "per": 1}, rule]})

    assert str(caught.value).startswith("rules[1] (path " if rule["path"] else "rules[1]: ")
    assert message in str(caught.value)


async def test_a_bad_tier_fails_the_plugin_and_the_rest_serves(identified):
    rt = await identified(rules=[tiered("role", default_tier="gold")])

    listed = (await rt.client.get("/api/plugins/")).json()
    gateway = next(p for p in listed if p["name"] == "gateway")

    assert gateway["status"] == "failed"
    assert gateway["error"] == (
        "courtyard_startup raised ConfigError: invalid gateway configuration: "
        "rules[0] (path \"/svc/items\"): default_tier 'gold' is not one of the tiers "
        "(premium, standard)"
    )
    assert (await rt.client.get("/svc/items")).status_code == 200
