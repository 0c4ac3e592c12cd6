"""The queue store of the contract suites (``test_queue_store_contract.py``, ``test_queue_store_priorities.py``):
each test runs on every backend, memory, SQLite and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.store import QueueStore, store_from_url


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queues/scheduler.db"
    return request.getfixturevalue("redis_url")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[QueueStore]:
    store = store_from_url(store_url)
    await store.open()
    yield store
    await store.close()
