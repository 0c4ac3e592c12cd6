"""Token buckets kept in process: the default, and what a Redis limiter falls back on while Redis is
unreachable.

A bucket left alone for ``burst / rate_per_s`` seconds is full again, exactly like a new one, so it is
forgotten then: memory holds only the clients seen recently (and never more than ``max_clients``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.ratelimit.base import Decision, RateLimiter


class _Bucket:
    __slots__ = ("seen", "tokens")

    def __init__(self, tokens: float, seen: float) -> None:
        self.tokens = tokens
        self.seen = seen


class MemoryRateLimiter(RateLimiter):
    """Token buckets by client key, in this process. ``clock`` returns seconds (monotonic); tests inject
    their own."""

    def __init__(self, rate_per_s: float, burst: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate_per_s, burst)
        self.max_clients = max_clients
        self.clock = clock
        # Ordered from the least to the most recently seen client, so idle ones are at the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str) -> Decision:
        return self.decide(key, take=True)

    async def peek(self, key: str) -> Decision:
        return self.decide(key, take=False)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "clients": len(self._buckets)}

    def decide(self, key: str, *, take: bool) -> Decision:
        """:meth:`take` (or :meth:`peek`) without a coroutine: nothing here waits."""
        now = self.clock()
        self._evict(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if not take:  # an unknown client's bucket is full: nothing to remember
                return Decision(True, self.burst, self.burst, 0, 0)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_clients:
                # Forgetting a client that is not idle only lets it start over with a full bucket:
                # the lenient way to stay within memory.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket.seen
            if elapsed > 0:
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.seen = now
        allowed = bucket.tokens >= 1.0 or not take
        if take and allowed:
            bucket.tokens -= 1.0
        return Decision.of(bucket.tokens, allowed=allowed, rate_per_s=self.rate_per_s, burst=self.burst)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.seen < self.idle_s:
                return
            buckets.popitem(last=False)
