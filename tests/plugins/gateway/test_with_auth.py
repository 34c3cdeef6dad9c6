"""The gateway's `identity` and `api_key` keys and its tiers with the runtime's real auth:
JWT bearer tokens (HS256, `jwt_secret`) and API keys, resolved before the gateway runs."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_kit import SECRET, bearer

TIERED = {
    "path": "/svc/items",
    "key": "identity",
    "tiers": {"premium": {"limit": 3, "per": 60}, "standard": {"limit": 1, "per": 60}},
    "tier": ["claim:tier", "role"],
    "default_tier": "standard",
}


async def codes(client: Any, n: int, **kw: Any) -> list[int]:
    return [(await client.get("/svc/items", **kw)).status_code for _ in range(n)]


@pytest.fixture
async def authed(start: Any) -> Any:
    """A runtime with the gateway's tiered rule, verifying tokens signed with SECRET."""
    return await start(rules=[TIERED], runtime={"jwt_secret": SECRET})


async def test_token_callers_get_their_tier_and_their_own_bucket(authed):
    ann = bearer(sub="ann", tier="premium")
    ann_again = bearer(sub="ann", tier="premium")  # another token, the same caller
    bob = bearer(sub="bob", roles=["premium"])
    cid = bearer(sub="cid")

    assert await codes(authed.client, 2, headers=ann) == [200, 200]
    assert await codes(authed.client, 2, headers=ann_again) == [200, 429]
    answers = [await authed.client.get("/svc/items", headers=bob) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    assert "(tier premium)" in answers[-1].json()["error"]["message"]
    assert await codes(authed.client, 2, headers=cid) == [200, 429]


async def test_anonymous_callers_share_the_default_tier_by_address(authed):
    answers = [await authed.client.get("/svc/items") for _ in range(2)]

    assert [a.status_code for a in answers] == [200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "1"


async def test_a_refused_credential_takes_no_token(authed):
    forged = {"Authorization": "Bearer not-a-token"}

    for _ in range(3):
        refused = await authed.client.get("/svc/items", headers=forged)
        assert refused.status_code == 401
        assert "X-RateLimit-Limit" not in refused.headers

    # The 401s took none of the address's one token.
    assert await codes(authed.client, 2) == [200, 429]


async def test_api_keys_by_identity_and_by_credential(start):
    rules = [
        {"path": "/svc/items", "limit": 1, "per": 60, "key": "identity"},
        {"path": "/svc/open", "limit": 1, "per": 60, "key": "api_key"},
    ]
    rt = await start(rules=rules)
    first = await rt.client_as(roles=["viewer"])
    second = await rt.client_as(roles=["viewer"])

    # identity: each key holder has its own bucket (keyed "key:<key id>").
    assert await codes(first, 2) == [200, 429]
    assert await codes(second, 1) == [200]
    # api_key: the same key, as a Bearer credential or as X-API-Key, is one bucket.
    secret = first.headers["Authorization"].removeprefix("Bearer ")
    assert (await first.get("/svc/open")).status_code == 200
    assert (await rt.client.get("/svc/open", headers={"X-API-Key": secret})).status_code == 429
    assert (await second.get("/svc/open")).status_code == 200


async def test_api_key_holders_get_the_tier_of_their_role(start):
    rt = await start(rules=[TIERED], runtime={"roles": {"premium": ["svc:read"]}})
    premium = await rt.client_as(roles=["premium"])
    viewer = await rt.client_as(roles=["viewer"])

    assert await codes(premium, 4) == [200, 200, 200, 429]
    answers = [await viewer.get("/svc/items") for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "1"
