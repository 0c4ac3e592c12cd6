"""The gateway's cache of users' token epochs on its own: bounded, one fetch for concurrent askers, and a
failure that is never cached. (Through a real registry: tests/gateway/test_identity.py.)"""

from __future__ import annotations

import asyncio

import pytest

from gateway.epochs import EpochCache


class Registry:
    """What the cache asks: each user's epoch, and a record of every question."""

    def __init__(self, epochs: dict[str, int]) -> None:
        self.epochs = epochs
        self.asked: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False

    async def fetch(self, user_id: str) -> int | None:
        self.asked.append(user_id)
        await self.gate.wait()
        if self.failing:
            raise ConnectionError("registry down")
        return self.epochs.get(user_id)


async def test_answers_are_kept_and_the_cache_is_bounded() -> None:
    registry = Registry({"a": 1, "b": 2, "c": 3})
    cache = EpochCache(ttl_s=600, max_users=2, fetch=registry.fetch)
    assert [await cache.current(u) for u in ("a", "a", "b", "a")] == [1, 1, 2, 1]
    assert registry.asked == ["a", "b"]
    assert await cache.current("c") == 3  # the least recently used (b) goes
    assert len(cache) == 2
    assert await cache.current("a") == 1 and await cache.current("b") == 2
    assert registry.asked == ["a", "b", "c", "b"]
    assert await cache.current("nobody") is None  # a removed user is remembered as gone too
    assert cache.stats()["fetches"] == 5 and cache.stats()["users"] == 2


async def test_concurrent_askers_share_one_fetch() -> None:
    registry = Registry({"a": 7})
    registry.gate.clear()
    cache = EpochCache(ttl_s=600, max_users=10, fetch=registry.fetch)
    waiting = [asyncio.create_task(cache.current("a")) for _ in range(10)]
    await asyncio.sleep(0)  # let every asker reach the fetch
    waiting[0].cancel()  # one asker going away does not cancel the fetch the others wait for
    registry.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError) and results[1:] == [7] * 9
    assert registry.asked == ["a"]


async def test_a_failure_reaches_every_asker_and_is_not_kept() -> None:
    registry = Registry({"a": 1})
    registry.failing = True
    cache = EpochCache(ttl_s=600, max_users=10, fetch=registry.fetch)
    results = await asyncio.gather(*(cache.current("a") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and registry.asked == ["a"]
    registry.failing = False
    assert await cache.current("a") == 1
    assert registry.asked == ["a", "a"]


async def test_no_caching_at_zero_seconds() -> None:
    registry = Registry({"a": 1})
    cache = EpochCache(ttl_s=0, max_users=10, fetch=registry.fetch)
    for _ in range(3):
        assert await cache.current("a") == 1
    assert registry.asked == ["a", "a", "a"]


async def test_without_a_registry_nobody_is_let_in() -> None:
    with pytest.raises(RuntimeError, match="no registry"):
        await EpochCache(ttl_s=5, max_users=10).current("a")
