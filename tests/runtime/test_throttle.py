"""Failed authentications throttled per client address (services/throttle.py, auth.py)."""

from __future__ import annotations

import httpx
from courtyard.services.throttle import FailureThrottle, client_key
from courtyard.testing import ORIGIN

BAD = {"Authorization": "Bearer cyk_0123456789abcdef_not-a-real-secret"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_from(rt, address: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.dispatcher, client=(address, 40000)),
        base_url=ORIGIN,
        headers={"Origin": ORIGIN, **(headers or {})},
    )
    rt.clients.append(client)
    return client


async def test_an_address_past_its_failures_is_refused_before_its_credential_is_checked(
    courtyard,
) -> None:
    rt = await courtyard(entry_points=False, auth_failures_per_minute=3)
    good = await rt.create_key(roles=["admin"])
    attacker = client_from(rt, "203.0.113.7")
    for _ in range(3):
        answer = await attacker.get("/api/plugins/", headers=BAD)
        assert answer.status_code == 401
    refused = await attacker.get("/api/plugins/", headers=BAD)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Even a good credential waits: the address is refused before anything is checked.
    good_header = {"Authorization": f"Bearer {good}"}
    assert (await attacker.get("/api/plugins/", headers=good_header)).status_code == 429
    # Requests without a credential are not throttled (public routes stay reachable) ...
    assert (await attacker.get("/api/health/live")).status_code == 200
    # ... and other addresses are not affected.
    neighbour = client_from(rt, "203.0.113.8")
    assert (await neighbour.get("/api/plugins/", headers=good_header)).status_code == 200
    assert (await neighbour.get("/api/plugins/", headers=BAD)).status_code == 401


async def test_every_kind_of_bad_credential_counts(courtyard) -> None:
    rt = await courtyard(entry_points=False, auth_failures_per_minute=4)
    await rt.create_key(roles=["admin"])
    attacker = client_from(rt, "198.51.100.1")
    kinds = [
        BAD,
        {"Authorization": "Bearer not-a-key-at-all"},
        {"Authorization": "Bearer aaaa.bbbb.cccc"},  # a JWT while no issuer is set
        {"Authorization": "Bearer one", "X-API-Key": "two"},  # two different credentials
    ]
    for headers in kinds:
        assert (await attacker.get("/api/health/", headers=headers)).status_code == 401
    assert (await attacker.get("/api/health/", headers=BAD)).status_code == 429


async def test_an_open_runtime_counts_nothing(courtyard) -> None:
    rt = await courtyard(entry_points=False, auth_failures_per_minute=1)
    for _ in range(3):  # no credential exists: a bad one is ignored, not refused
        assert (await rt.client.get("/api/plugins/", headers=BAD)).status_code == 200
    assert len(rt.dispatcher.services.auth.failures) == 0


def test_failures_slide_out_of_the_minute() -> None:
    clock = Clock()
    throttle = FailureThrottle(3, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("192.0.2.1") is None
        throttle.failed("192.0.2.1")
        clock.now += 10
    assert throttle.retry_after("192.0.2.1") == 30  # the first failure is 30 s old
    clock.now += 29.5
    assert throttle.retry_after("192.0.2.1") == 1
    clock.now += 1
    assert throttle.retry_after("192.0.2.1") is None  # one failure left the window
    throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 10
    assert throttle.retry_after("192.0.2.2") is None
    assert throttle.retry_after(None) is None


def test_memory_is_bounded() -> None:
    clock = Clock()
    throttle = FailureThrottle(5, clock=clock, max_tracked=100)
    for i in range(1000):
        for _ in range(10):
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100  # addresses
    assert all(len(times) == 5 for times in throttle._failures.values())  # times each
    assert throttle.retry_after("10.0.3.231") is not None  # the latest are kept
    assert throttle.retry_after("10.0.0.0") is None  # the least recent forgotten
    clock.now += 61
    throttle.failed("10.9.9.9")  # stale addresses go as new failures come
    assert len(throttle) == 1


def test_ipv6_addresses_count_by_their_network() -> None:
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1234") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("<local>") == "<local>"
    throttle = FailureThrottle(2)
    throttle.failed("2001:db8::1")
    throttle.failed("2001:db8::2")
    assert throttle.retry_after("2001:db8::3") is not None
