"""The token bucket on its own, on both backends (in process and on Redis), with a clock the tests move by
hand; what only one backend does (eviction in process, key expiry, Redis's clock and the fallback when
Redis fails on Redis) is tested on that one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from loguru import logger

from gateway.ratelimit import MemoryRateLimiter, RateLimiter, client_key
from gateway.ratelimit.redis import RedisBuckets, RedisRateLimiter
from tests.support import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[MakeLimiter]:
    """Limiters of the backend under test, on the test's clock."""
    if request.param == "memory":
        yield lambda rate, burst: MemoryRateLimiter(rate, burst, clock=clock)
        return
    # A generous timeout: a loaded test machine must not look like an unreachable Redis.
    buckets = RedisBuckets.from_url(request.getfixturevalue("redis_url"), timeout_s=5.0)
    await buckets.open()
    names = iter(range(1000))
    yield lambda rate, burst: RedisRateLimiter(buckets, f"l{next(names)}", rate, burst, clock=clock)
    await buckets.close()
    assert buckets.fallbacks == 0  # every decision was Redis's


async def test_burst_then_refused(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(2.0, 5)
    decisions = [await limiter.take("a") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = await limiter.take("a")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.limit == 5


async def test_clients_have_separate_buckets(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(1.0, 1)
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed
    assert (await limiter.take("b")).allowed


async def test_refill_at_the_rate(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(2.0, 2)
    assert (await limiter.take("a")).allowed
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed
    clock.now += 0.25  # half a token
    assert not (await limiter.take("a")).allowed
    clock.now += 0.25
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed
    clock.now += 10  # never more than the burst
    assert [(await limiter.take("a")).allowed for _ in range(3)] == [True, True, False]


async def test_retry_after_is_whole_seconds_at_least_one(make_limiter: MakeLimiter, clock: Clock) -> None:
    fast = make_limiter(10.0, 1)
    assert (await fast.take("a")).allowed
    assert (await fast.take("a")).retry_after_s == 1  # 0.1 s rounds up to the 1 s minimum

    slow = make_limiter(0.25, 1)
    assert (await slow.take("a")).allowed
    refused = await slow.take("a")
    assert refused.retry_after_s == 4
    clock.now += 2.5
    assert (await slow.take("a")).retry_after_s == 2  # 1.5 s left, rounded up


async def test_reset_counts_until_the_bucket_is_full(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(1.0, 3)
    assert (await limiter.take("a")).reset_s == 1
    assert (await limiter.take("a")).reset_s == 2
    assert (await limiter.take("a")).reset_s == 3


async def test_headers(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(0.5, 1)
    ok = (await limiter.take("a")).headers()
    assert ok == {"RateLimit-Limit": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "2"}
    refused = (await limiter.take("a")).headers()
    assert refused["Retry-After"] == "2"
    assert refused["RateLimit-Remaining"] == "0"


async def test_idle_buckets_are_evicted(clock: Clock) -> None:
    limiter = MemoryRateLimiter(1.0, 4, clock=clock)  # a bucket is full again after 4 s
    for key in ("a", "b", "c"):
        await limiter.take(key)
    assert len(limiter) == 3
    clock.now += 2
    await limiter.take("c")
    assert len(limiter) == 3
    clock.now += 2  # a and b idle for 4 s: full again, forgotten; c seen 2 s ago stays
    await limiter.take("d")
    assert len(limiter) == 2
    # A forgotten client starts over with a full bucket, exactly what it would have had.
    assert (await limiter.take("a")).remaining == 3


async def test_eviction_keeps_a_refused_client_refused(clock: Clock) -> None:
    limiter = MemoryRateLimiter(1.0, 2, clock=clock)
    await limiter.take("a")
    await limiter.take("a")
    clock.now += 1.5
    await limiter.take("other")  # triggers a sweep; "a" is not full yet and must stay
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed


async def test_memory_is_capped(clock: Clock) -> None:
    limiter = MemoryRateLimiter(1.0, 10, max_clients=100, clock=clock)
    for i in range(1000):
        await limiter.take(f"client-{i}")
    assert len(limiter) == 100


async def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter(0, 1)
    with pytest.raises(ValueError):
        MemoryRateLimiter(1.0, 0)


def test_client_key() -> None:
    assert client_key("Bearer abc", "10.0.0.1") == "token:abc"
    assert client_key("bearer abc", "10.0.0.1") == "token:abc"
    assert client_key("Basic dXNlcjpwYXNz", "10.0.0.1") == "addr:10.0.0.1"
    assert client_key("Bearer ", "10.0.0.1") == "addr:10.0.0.1"
    assert client_key(None, "10.0.0.1") == "addr:10.0.0.1"
    # Behind a trusted proxy, the address it saw is the last entry; earlier ones are the client's word.
    assert client_key(None, "10.0.0.1", "6.6.6.6, 192.0.2.7") == "addr:192.0.2.7"
    long_a, long_b = "Bearer " + "x" * 100 + "a", "Bearer " + "x" * 100 + "b"
    assert client_key(long_a, None) != client_key(long_b, None)
    assert len(client_key(long_a, None)) < 64


async def test_peek_tells_where_a_bucket_stands_and_takes_nothing(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(1.0, 2)
    fresh = await limiter.peek("a")
    assert (fresh.allowed, fresh.remaining, fresh.reset_s) == (True, 2, 0)
    await limiter.take("a")
    await limiter.take("a")
    empty = await limiter.peek("a")
    assert (empty.allowed, empty.remaining, empty.retry_after_s) == (True, 0, 0)
    assert "Retry-After" not in empty.headers()
    assert not (await limiter.take("a")).allowed  # peeking gave nothing back
    clock.now += 1.0
    assert (await limiter.peek("a")).remaining == 1
    assert (await limiter.take("a")).allowed


async def test_a_peek_remembers_nothing(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter(1.0, 2)
    assert (await limiter.peek("a")).remaining == 2
    assert [(await limiter.take("a")).remaining for _ in range(2)] == [1, 0]
    if isinstance(limiter, MemoryRateLimiter):
        assert len(limiter) == 1


# On Redis only: its own clock, key expiry, and what happens when it cannot be reached.


async def redis_keys(redis_url: str, pattern: str) -> list[str]:
    prefix = redis_url.rsplit("prefix=", 1)[1]
    client = aioredis.from_url(redis_url.split("?", 1)[0], decode_responses=True)
    try:
        return sorted([key async for key in client.scan_iter(match=f"{prefix}:{pattern}")])
    finally:
        await client.aclose()


async def test_redis_refills_on_its_own_clock_and_forgets_full_buckets(redis_url: str) -> None:
    buckets = RedisBuckets.from_url(redis_url, timeout_s=5.0)
    await buckets.open()
    try:
        limiter = RedisRateLimiter(buckets, "default", 20.0, 2)  # full again 0.1 s after one take
        assert (await limiter.peek("addr:a")).remaining == 2
        assert await redis_keys(redis_url, "*") == []  # a look writes nothing
        assert [(await limiter.take("addr:a")).allowed for _ in range(3)] == [True, True, False]
        assert await redis_keys(redis_url, "*") == [redis_url.rsplit("prefix=", 1)[1] + ":ratelimit:default:addr:a"]
        # Time passes on Redis's clock: a token comes back, and once the bucket is full its key is gone.
        async def a_token_back() -> bool:
            return (await limiter.peek("addr:a")).remaining >= 1

        await wait_until(a_token_back, what="a token back")
        await wait_until(lambda: _true_if_empty(redis_keys(redis_url, "*")), what="the full bucket's key to expire")
        assert (await limiter.take("addr:a")).remaining == 1
        assert buckets.fallbacks == 0
    finally:
        await buckets.close()


async def _true_if_empty(keys: Any) -> bool:
    return not await keys


class Forwarder:
    """A TCP forwarder to Redis that the test can stop and start again on the same port: Redis going away
    and coming back, without touching the Redis other tests use."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_unreachable_falls_back_to_buckets_in_process(redis_url: str) -> None:
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    buckets = RedisBuckets(f"redis://127.0.0.1:{_closed_port()}/0", "x", retry_s=0)
    fallbacks: list[int] = []
    buckets.on_fallback = lambda: fallbacks.append(1)
    await buckets.open()
    try:
        limiter = RedisRateLimiter(buckets, "default", 0.01, 2)
        # Still limited, by this process's buckets: never lifted, never a 503.
        assert [(await limiter.take("addr:a")).allowed for _ in range(3)] == [True, True, False]
        assert buckets.fallbacks == len(fallbacks) == 3
        assert buckets.stats() == {"backend": "redis", "redis_up": False, "fallbacks": 3}
        assert len([w for w in warnings if "rate limit store unreachable" in w]) == 1  # once per outage
    finally:
        await buckets.close()
        logger.remove(sink)


async def test_redis_coming_back_is_used_again(redis_url: str) -> None:
    target = aioredis.from_url(redis_url.split("?", 1)[0])
    host, port = target.connection_pool.connection_kwargs["host"], target.connection_pool.connection_kwargs["port"]
    await target.aclose()
    forwarder = Forwarder(host, port)
    await forwarder.start()
    prefix = redis_url.rsplit("prefix=", 1)[1]
    buckets = RedisBuckets(f"redis://127.0.0.1:{forwarder.port}/0", prefix, timeout_s=1.0, retry_s=0)
    await buckets.open()
    try:
        limiter = RedisRateLimiter(buckets, "default", 0.01, 3)
        assert (await limiter.take("addr:a")).remaining == 2
        await forwarder.stop()
        assert (await limiter.take("addr:a")).remaining == 2  # in process: a bucket of its own
        assert buckets.fallbacks == 1 and not buckets.stats()["redis_up"]
        await forwarder.start()
        # Back on Redis: the bucket there, not the one in process, answers.
        async def redis_answers() -> bool:
            await limiter.take("addr:b")
            return bool(buckets.stats()["redis_up"])

        await wait_until(redis_answers, what="Redis to answer again")
        assert (await limiter.take("addr:a")).remaining == 1
    finally:
        await buckets.close()
        await forwarder.stop()


async def test_redis_buckets_are_one_budget_under_concurrent_gateways(redis_url: str) -> None:
    # Two gateways' connections, taking at once: the script is atomic, so exactly the burst gets through.
    gateways = [RedisBuckets.from_url(redis_url, timeout_s=5.0) for _ in range(2)]
    for buckets in gateways:
        await buckets.open()
    try:
        limiters = [RedisRateLimiter(buckets, "default", 0.01, 25) for buckets in gateways]
        decisions = await asyncio.gather(*(limiters[i % 2].take("addr:a") for i in range(100)))
        assert sum(d.allowed for d in decisions) == 25
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(25))
        assert all(g.fallbacks == 0 for g in gateways)
    finally:
        for buckets in gateways:
            await buckets.close()
