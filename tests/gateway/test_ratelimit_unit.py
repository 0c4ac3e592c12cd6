"""The token bucket on its own, with a clock the tests move by hand."""

from __future__ import annotations

import pytest

from gateway.ratelimit import RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_burst_then_refused(clock: Clock) -> None:
    limiter = RateLimiter(2.0, 5, clock=clock)
    decisions = [limiter.take("a") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = limiter.take("a")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.limit == 5


def test_clients_have_separate_buckets(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    assert limiter.take("b").allowed


def test_refill_at_the_rate(clock: Clock) -> None:
    limiter = RateLimiter(2.0, 2, clock=clock)
    assert limiter.take("a").allowed
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    clock.now += 0.25  # half a token
    assert not limiter.take("a").allowed
    clock.now += 0.25
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    clock.now += 10  # never more than the burst
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]


def test_retry_after_is_whole_seconds_at_least_one(clock: Clock) -> None:
    fast = RateLimiter(10.0, 1, clock=clock)
    assert fast.take("a").allowed
    assert fast.take("a").retry_after_s == 1  # 0.1 s rounds up to the 1 s minimum

    slow = RateLimiter(0.25, 1, clock=clock)
    assert slow.take("a").allowed
    refused = slow.take("a")
    assert refused.retry_after_s == 4
    clock.now += 2.5
    assert slow.take("a").retry_after_s == 2  # 1.5 s left, rounded up


def test_reset_counts_until_the_bucket_is_full(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 3, clock=clock)
    assert limiter.take("a").reset_s == 1
    assert limiter.take("a").reset_s == 2
    assert limiter.take("a").reset_s == 3


def test_headers(clock: Clock) -> None:
    limiter = RateLimiter(0.5, 1, clock=clock)
    ok = limiter.take("a").headers()
    assert ok == {"RateLimit-Limit": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "2"}
    refused = limiter.take("a").headers()
    assert refused["Retry-After"] == "2"
    assert refused["RateLimit-Remaining"] == "0"


def test_idle_buckets_are_evicted(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 4, clock=clock)  # a bucket is full again after 4 s
    for key in ("a", "b", "c"):
        limiter.take(key)
    assert len(limiter) == 3
    clock.now += 2
    limiter.take("c")
    assert len(limiter) == 3
    clock.now += 2  # a and b idle for 4 s: full again, forgotten; c seen 2 s ago stays
    limiter.take("d")
    assert len(limiter) == 2
    # A forgotten client starts over with a full bucket, exactly what it would have had.
    assert limiter.take("a").remaining == 3


def test_eviction_keeps_a_refused_client_refused(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.take("a")
    limiter.take("a")
    clock.now += 1.5
    limiter.take("other")  # triggers a sweep; "a" is not full yet and must stay
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed


def test_memory_is_capped(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 10, max_clients=100, clock=clock)
    for i in range(1000):
        limiter.take(f"client-{i}")
    assert len(limiter) == 100


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)


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


def test_peek_tells_where_a_bucket_stands_and_takes_nothing(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 2, clock=clock)
    fresh = limiter.peek("a")
    assert (fresh.allowed, fresh.remaining, fresh.reset_s) == (True, 2, 0) and len(limiter) == 0
    limiter.take("a")
    limiter.take("a")
    empty = limiter.peek("a")
    assert (empty.allowed, empty.remaining, empty.retry_after_s) == (True, 0, 0)
    assert "Retry-After" not in empty.headers()
    assert not limiter.take("a").allowed  # peeking gave nothing back
    clock.now += 1.0
    assert limiter.peek("a").remaining == 1
    assert limiter.take("a").allowed
