"""The log store contract, run against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from logging_service.store import LogFilter, LogStore, MemoryLogStore, SqliteLogStore, store_from_url
from shared.contract import LogRecord
from shared.errors import Unavailable

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def rec(offset_s: float, message: str, *, service: str = "worker", level: str = "info", **meta: Any) -> LogRecord:
    return LogRecord(timestamp=T0 + timedelta(seconds=offset_s), service=service, level=level, message=message,
                     meta=meta)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogStore]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/logs.db"
    s = store_from_url(url)
    await s.open()
    yield s
    await s.close()


def messages(records: list[LogRecord]) -> list[str]:
    return [r.message for r in records]


async def test_newest_first_with_ties_in_arrival_order(store: LogStore) -> None:
    await store.append([rec(1, "b"), rec(0, "a"), rec(2, "c")])
    await store.append([rec(2, "d")])
    assert messages(await store.query(LogFilter())) == ["d", "c", "b", "a"]
    assert messages(await store.query(LogFilter(limit=2))) == ["d", "c"]
    assert await store.count() == 4


async def test_filters(store: LogStore) -> None:
    await store.append([
        rec(0, "a", service="api", level="info", job_id="j1", request_id="r1"),
        rec(1, "b", service="worker", level="error", job_id="j1"),
        rec(2, "c", service="worker", level="debug", job_id=7, request_id="r1"),
    ])
    assert messages(await store.query(LogFilter(service="worker"))) == ["c", "b"]
    assert messages(await store.query(LogFilter(levels=frozenset({"info", "error"})))) == ["b", "a"]
    assert messages(await store.query(LogFilter(levels=frozenset()))) == []
    assert messages(await store.query(LogFilter(job_id="j1"))) == ["b", "a"]
    assert messages(await store.query(LogFilter(job_id="7"))) == ["c"]
    assert messages(await store.query(LogFilter(request_id="r1"))) == ["c", "a"]
    assert messages(await store.query(LogFilter(request_id="r1", service="api"))) == ["a"]
    window = LogFilter(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=2))
    assert messages(await store.query(window)) == ["b"]  # since inclusive, until exclusive


async def test_records_come_back_whole_in_utc(store: LogStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    sent = LogRecord(timestamp=datetime(2030, 1, 1, 14, 0, 0, 123456, tzinfo=plus2), service="api",
                     level="warning", message="hé", meta={"job_id": "j", "n": 1, "nested": {"a": [1, 2]}})
    naive = LogRecord(timestamp=datetime(2030, 1, 1, 11, 0), service="api", level="info", message="naive")
    await store.append([sent, naive])
    got, got_naive = await store.query(LogFilter())
    assert got.timestamp == datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert got.timestamp.utcoffset() == timedelta(0)
    assert (got.service, got.level, got.message, got.meta) == ("api", "warning", "hé", sent.meta)
    assert got_naive.timestamp == datetime(2030, 1, 1, 11, 0, tzinfo=timezone.utc)


async def test_delete_before(store: LogStore) -> None:
    await store.append([rec(0, "a"), rec(1, "b"), rec(2, "c")])
    assert await store.delete_before(T0 + timedelta(seconds=2)) == 2
    assert messages(await store.query(LogFilter())) == ["c"]
    assert await store.delete_before(T0) == 0


async def test_ping_fails_once_closed(store: LogStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ping()
    await store.close()  # safe twice


async def test_sqlite_keeps_records_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "logs.db"  # a missing folder is created
    first = SqliteLogStore(str(path))
    await first.open()
    await first.append([rec(0, "kept", job_id="j1")])
    await first.close()
    second = SqliteLogStore(str(path))
    await second.open()
    try:
        assert messages(await second.query(LogFilter(job_id="j1"))) == ["kept"]
    finally:
        await second.close()


async def test_memory_store_is_bounded() -> None:
    store = MemoryLogStore(capacity=3)
    await store.open()
    await store.append([rec(i, str(i)) for i in range(5)])
    assert messages(await store.query(LogFilter())) == ["4", "3", "2"]


def test_url_selects_the_backend(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://?capacity=5"), MemoryLogStore)
    sqlite = store_from_url("sqlite:///var/logs.db")
    assert isinstance(sqlite, SqliteLogStore) and sqlite.path == "var/logs.db"
    assert store_from_url(f"sqlite:///{tmp_path}/x.db").path == f"{tmp_path}/x.db"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        store_from_url("redis://localhost")
    with pytest.raises(ValueError):
        store_from_url("sqlite://")
