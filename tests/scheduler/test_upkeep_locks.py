"""Upkeep locks: one holder at a time, renewed by its holder, free again when given up or run out. On
every queue store backend, and across two schedulers that share one Redis (two store objects on one
prefix); over HTTP too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.app import create_app
from scheduler.settings import Settings
from scheduler.store import QueueStore, store_from_url
from shared.contract import utcnow
from tests.support import wait_until


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[QueueStore, QueueStore]]:
    """Two handles on one store, as two schedulers would see it: on Redis two stores sharing a prefix; on
    the stores of one process (memory, SQLite), the same store twice."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        one, two = store_from_url(url), store_from_url(url)
        await one.open()
        await two.open()
        yield one, two
        await one.close()
        await two.close()
        return
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/scheduler.db"
    store = store_from_url(url)
    await store.open()
    yield store, store
    await store.close()


async def test_one_holder_at_a_time(stores: tuple[QueueStore, QueueStore]) -> None:
    one, two = stores
    assert await one.acquire_lock("sweeper", "a", 30, utcnow()) is True
    assert await two.acquire_lock("sweeper", "b", 30, utcnow()) is False
    assert await two.acquire_lock("sweeper", "a", 30, utcnow()) is True  # its holder renews it, anywhere
    assert await one.acquire_lock("other", "b", 30, utcnow()) is True  # locks are by name
    assert await two.release_lock("sweeper", "b") is False  # not b's to give up
    assert await one.acquire_lock("sweeper", "b", 30, utcnow()) is False
    assert await two.release_lock("sweeper", "a") is True
    assert await two.release_lock("sweeper", "a") is False  # given up already
    assert await one.acquire_lock("sweeper", "b", 30, utcnow()) is True


async def test_a_lock_runs_out_when_its_holder_stops_renewing_it(stores: tuple[QueueStore, QueueStore]) -> None:
    one, two = stores
    assert await one.acquire_lock("sweeper", "dead", 0.2, utcnow()) is True
    assert await two.acquire_lock("sweeper", "b", 30, utcnow()) is False

    async def taken() -> bool:
        return await two.acquire_lock("sweeper", "b", 30, utcnow())

    await wait_until(taken, timeout_s=5, interval_s=0.05, what="the dead holder's lock to run out")
    assert await one.release_lock("sweeper", "dead") is False  # the late holder cannot free b's lock
    assert await one.acquire_lock("sweeper", "dead", 30, utcnow()) is False


async def test_locks_over_http(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(Settings(store_url="memory://")))
    resp = await client.post("/locks/sweeper", json={"holder": "receptionist-1:ab", "ttl_s": 30})
    assert resp.status == 200 and await resp.json() == {"name": "sweeper", "held": True}
    resp = await client.post("/locks/sweeper", json={"holder": "receptionist-2:cd", "ttl_s": 30})
    assert await resp.json() == {"name": "sweeper", "held": False}
    resp = await client.post("/locks/sweeper/release", json={"holder": "receptionist-1:ab"})
    assert await resp.json() == {"name": "sweeper", "released": True}
    resp = await client.post("/locks/sweeper", json={"holder": "receptionist-2:cd", "ttl_s": 0})
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "ttl_s"
    resp = await client.post("/locks/no%20spaces", json={"holder": "x", "ttl_s": 1})
    assert resp.status == 400
