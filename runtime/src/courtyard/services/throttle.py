"""Failed authentications counted per client address, to slow down guessing.

A refused credential answers 401 before any route, so the rate-limiting gateway plugin
(which sees routed requests) never counts them: the auth service does, here. Once an
address has failed `limit` times within `WINDOW` seconds, its next credential is refused
with 429 before being checked, until the oldest of those failures is a minute old.

Memory is bounded: at most `limit` timestamps per address, and at most `MAX_TRACKED`
addresses (the one that failed least recently is forgotten first; those with no failure
in the last minute are forgotten as new failures come). IPv6 addresses count
by their /64 network, which one client usually holds whole.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW = 60.0  # seconds
MAX_TRACKED = 10_000  # addresses


def client_key(address: str) -> str:
    """What failures count against: the address, or an IPv6 address's /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a unix socket, "<local>": count it as it is
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureThrottle:
    """Failed authentications per client address within a sliding minute."""

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str | None) -> int | None:
        """Seconds until `address` may try again, or None when it may now."""
        if address is None or not self._failures:
            return None
        times = self._failures.get(client_key(address))
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + WINDOW - self.clock()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from `address`."""
        if address is None:
            return
        now = self.clock()
        # Least recently failed first: forget those whose failures are all over a minute old.
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest[-1] > now - WINDOW:
                break
            self._failures.popitem(last=False)
        key = client_key(address)
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)
