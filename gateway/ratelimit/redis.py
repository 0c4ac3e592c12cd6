"""Token buckets on Redis, shared by every gateway that names the same Redis and prefix:
``redis://host:port/db?prefix=NAME`` (``rediss://`` for TLS; the prefix defaults to ``conveyor``).

Each bucket is one hash, ``{prefix}:ratelimit:{limiter}:{client key}`` with fields ``tokens`` and ``seen``,
and each request is one Lua script, so it is atomic across gateways: refill by the time elapsed since
``seen`` on Redis's own clock (``TIME``: the gateways' clocks never enter into it), take a token or not,
answer. A bucket's key expires when the bucket would be full again, which is the same as having none, so
idle clients cost nothing.

When Redis cannot be reached (or answers slower than the timeout), the request is decided by buckets in
this process instead, a warning is logged once per outage, and every such request is counted
(``fallbacks`` in ``/status``, ``conveyor_gateway_rate_limit_fallbacks_total`` in ``/metrics``). The limit
is never lifted and never turns into a 503; while Redis is away each gateway counts on its own, so a
client may get one budget per gateway. Redis is tried again ``retry_s`` after a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loguru import logger

from gateway.ratelimit.base import Decision, RateLimiter
from gateway.ratelimit.memory import MemoryRateLimiter
from shared.redis_conn import close_redis

try:
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError:  # pragma: no cover - depends on the install; RedisBuckets() says what to do
    aioredis = None  # type: ignore[assignment]

# KEYS[1]: the bucket. ARGV: rate per second, burst, take (1) or peek (0), now in seconds ('': Redis's
# clock), the least time the key is kept in ms (0 but in tests, whose clocks are not Redis's).
# Returns {allowed (1/0), tokens left}; tokens as a string, since Redis would truncate a Lua number.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[4])
end
local f = redis.call('HMGET', KEYS[1], 'tokens', 'seen')
local tokens = burst
if f[1] then
  tokens = tonumber(f[1])
  local elapsed = now - tonumber(f[2])
  if elapsed > 0 then tokens = math.min(burst, tokens + elapsed * rate) end
end
if ARGV[3] ~= '1' then return {1, string.format('%.17g', tokens)} end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'seen', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.max(math.ceil((burst - tokens) / rate * 1000), tonumber(ARGV[5])))
return {allowed, string.format('%.17g', tokens)}
"""


class RedisBuckets:
    """The connection to Redis that every limiter of a gateway shares, and what it does when Redis fails."""

    def __init__(self, url: str, prefix: str = "conveyor", *, timeout_s: float = 0.25, retry_s: float = 1.0) -> None:
        if aioredis is None:
            raise RuntimeError("a rate limit on Redis needs the redis package: pip install 'conveyor[redis]'")
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        #: Requests decided in process because Redis failed (or had failed less than ``retry_s`` ago).
        self.fallbacks = 0
        #: Called on each of them (the gateway counts them in ``/metrics``).
        self.on_fallback: Callable[[], None] | None = None
        self._redis: Any = None
        self._script: Any = None
        self._down_until = 0.0
        self._down = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, retry_s: float = 1.0) -> RedisBuckets:
        """``redis://host:port/db?prefix=NAME``: the ``prefix`` parameter is ours, the rest goes to redis-py."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), "") or "conveyor"
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix, timeout_s=timeout_s, retry_s=retry_s)

    async def open(self) -> None:
        """Make the client; nothing is sent until the first request (a gateway starts without Redis)."""
        # One quick retry on a fresh connection (a pooled one may be stale after Redis restarted), no
        # backoff: a request waits on this.
        self._redis = aioredis.from_url(self.url, decode_responses=True, socket_timeout=self.timeout_s,
                                        socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 1))
        self._script = self._redis.register_script(_TAKE)

    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await close_redis(redis, "rate limit")

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "redis_up": not self._down, "fallbacks": self.fallbacks}

    async def run(self, bucket: str, rate_per_s: float, burst: int, *, take: bool, now: float | None,
                  keep_ms: int = 0) -> tuple[bool, float] | None:
        """Take from (or look at) ``bucket`` on Redis: whether allowed and the tokens left; None when Redis
        failed and the caller should decide in process."""
        if self._redis is None or time.monotonic() < self._down_until:
            return self._fell_back()
        key = f"{self.prefix}:ratelimit:{bucket}"
        try:
            allowed, tokens = await self._script(keys=[key], args=[
                repr(rate_per_s), burst, int(take), "" if now is None else repr(now), keep_ms])
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_s
            if not self._down:
                self._down = True
                logger.warning("rate limit store unreachable ({!r}): each gateway limits on its own until "
                               "it is back", exc)
            return self._fell_back()
        if self._down:
            self._down = False
            logger.info("rate limit store reachable again: buckets are shared again")
        return bool(allowed), float(tokens)

    def _fell_back(self) -> None:
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback()
        return None


class RedisRateLimiter(RateLimiter):
    """Buckets of one rate and burst on Redis, named ``name`` there (the default limiter and each role's
    have their own); ``clock`` replaces Redis's ``TIME`` in tests."""

    def __init__(self, buckets: RedisBuckets, name: str, rate_per_s: float, burst: int, *,
                 max_clients: int = 100_000, clock: Callable[[], float] | None = None) -> None:
        super().__init__(rate_per_s, burst)
        self.buckets = buckets
        self.name = name
        self.clock = clock
        #: Decides while Redis is unreachable.
        self.fallback = MemoryRateLimiter(rate_per_s, burst, max_clients=max_clients,
                                          **({"clock": clock} if clock is not None else {}))
        # A test clock is not Redis's: keep its keys long enough that real time never expires them first.
        self._keep_ms = 0 if clock is None else 3_600_000

    async def take(self, key: str) -> Decision:
        return await self._decide(key, take=True)

    async def peek(self, key: str) -> Decision:
        return await self._decide(key, take=False)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "fallback_clients": len(self.fallback)}

    async def _decide(self, key: str, *, take: bool) -> Decision:
        now = self.clock() if self.clock is not None else None
        answer = await self.buckets.run(f"{self.name}:{key}", self.rate_per_s, self.burst, take=take, now=now,
                                        keep_ms=self._keep_ms)
        if answer is None:
            return self.fallback.decide(key, take=take)
        allowed, tokens = answer
        return Decision.of(tokens, allowed=allowed, rate_per_s=self.rate_per_s, burst=self.burst)
