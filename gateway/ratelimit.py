"""Per-client token buckets, kept in process.

Each client has a bucket of ``burst`` tokens that refills at ``rate_per_s``; a request takes one token
or is refused. A bucket left alone for ``burst / rate_per_s`` seconds is full again, exactly like a new
one, so it is forgotten then: memory holds only the clients seen recently (and never more than
``max_clients``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request: whether it may go on, and what the ``RateLimit-*`` headers say."""

    allowed: bool
    limit: int
    #: Whole tokens left after this request.
    remaining: int
    #: Seconds until the bucket is full again.
    reset_s: int
    #: Seconds until one token is back (0 when the request was allowed).
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class _Bucket:
    __slots__ = ("seen", "tokens")

    def __init__(self, tokens: float, seen: float) -> None:
        self.tokens = tokens
        self.seen = seen


class RateLimiter:
    """Token buckets by client key. ``clock`` returns seconds (monotonic); tests inject their own."""

    def __init__(self, rate_per_s: float, burst: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        #: Seconds after which an untouched bucket is full again.
        self.idle_s = burst / rate_per_s
        # Ordered from the least to the most recently seen client, so idle ones are at the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> Decision:
        """Take one token from ``key``'s bucket."""
        return self._decide(key, take=True)

    def peek(self, key: str) -> Decision:
        """What ``key``'s bucket holds, taking nothing: always allowed (for answers that are never limited
        but still tell the client where it stands)."""
        return self._decide(key, take=False)

    def _decide(self, key: str, *, take: bool) -> Decision:
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
        retry_after_s = 0
        if take and allowed:
            bucket.tokens -= 1.0
        elif take:
            retry_after_s = max(1, math.ceil((1.0 - bucket.tokens) / self.rate_per_s))
        reset_s = math.ceil((self.burst - bucket.tokens) / self.rate_per_s)
        return Decision(allowed, self.burst, int(bucket.tokens), reset_s, retry_after_s)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.seen < self.idle_s:
                return
            buckets.popitem(last=False)


def client_key(authorization: str | None, remote: str | None, forwarded_for: str | None = None) -> str:
    """Whose bucket a request takes from: its bearer token when it has one, else its address.

    ``forwarded_for`` is the ``X-Forwarded-For`` value, passed only when the proxy in front is trusted;
    its last entry is the address that proxy saw (the entries before it are whatever the client wrote).
    """
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        if token:
            # Long tokens (JWTs) are hashed so that a bucket's key stays small.
            if len(token) > 64:
                token = hashlib.blake2b(token.encode(), digest_size=16).hexdigest()
            return "token:" + token
    if forwarded_for:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        if last:
            return "addr:" + last
    return "addr:" + (remote or "unknown")
