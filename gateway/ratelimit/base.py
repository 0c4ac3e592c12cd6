"""What every rate limiter backend answers, and whose bucket a request takes from.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes one token or is
refused. A bucket left alone until it is full again is exactly like a new one, so a backend may forget
it then.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


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

    @classmethod
    def of(cls, tokens: float, *, allowed: bool, rate_per_s: float, burst: int) -> Decision:
        """The decision for a bucket holding ``tokens`` after the request (taken from or not)."""
        retry_after_s = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate_per_s))
        reset_s = math.ceil((burst - tokens) / rate_per_s)
        return cls(allowed, burst, int(tokens), reset_s, retry_after_s)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter(ABC):
    """Token buckets of one rate and burst, by client key."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        #: Seconds after which an untouched bucket is full again.
        self.idle_s = burst / rate_per_s

    @abstractmethod
    async def take(self, key: str) -> Decision:
        """Take one token from ``key``'s bucket."""

    @abstractmethod
    async def peek(self, key: str) -> Decision:
        """What ``key``'s bucket holds, taking nothing: always allowed (for answers that are never limited
        but still tell the client where it stands)."""

    def stats(self) -> dict[str, Any]:
        """The limiter's own numbers for ``/status``."""
        return {"per_s": self.rate_per_s, "burst": self.burst}


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
