"""The log store contract, run against every backend (memory, SQLite, PostgreSQL), then what only one
backend does (persistence across a reopen, the bounded memory store, PostgreSQL's schema and errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from logging_service.store import Arrivals, LogFilter, LogStore, MemoryLogStore, store_from_url
from logging_service.store.postgres import PostgresLogStore
from logging_service.store.sqlite import SqliteLogStore
from shared.contract import LogRecord
from shared.errors import Unavailable

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
BACKENDS = ["memory", "sqlite", "postgres"]


def rec(offset_s: float, message: str, *, service: str = "worker", level: str = "info", **meta: Any) -> LogRecord:
    return LogRecord(timestamp=T0 + timedelta(seconds=offset_s), service=service, level=level, message=message,
                     meta=meta)


def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL of ``backend`` for one test: a fresh file, or a PostgreSQL schema of its own."""
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/logs.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogStore]:
    s = store_from_url(backend_url(request.param, request, tmp_path))
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
    assert messages(await store.query(LogFilter(service="worker", levels=frozenset({"debug"}), job_id="7",
                                                request_id="r1", since=T0, until=T0 + timedelta(days=1)))) == ["c"]


async def test_text_is_a_substring_of_the_message_in_any_case(store: LogStore) -> None:
    await store.append([
        rec(0, "Job Started", service="api"),
        rec(1, "job finished in 2s", service="worker"),
        rec(2, "100% done_now", service="worker"),
        rec(3, "100 percent, done now", service="worker", note="job"),  # meta is not searched
        rec(4, "a\\b path", service="worker"),
    ])
    assert messages(await store.query(LogFilter(text="JOB"))) == ["job finished in 2s", "Job Started"]
    assert messages(await store.query(LogFilter(text="job", service="api"))) == ["Job Started"]
    assert messages(await store.query(LogFilter(text="job", limit=1))) == ["job finished in 2s"]
    # LIKE's wildcards and its escape character are taken literally
    assert messages(await store.query(LogFilter(text="100%"))) == ["100% done_now"]
    assert messages(await store.query(LogFilter(text="done_"))) == ["100% done_now"]
    assert messages(await store.query(LogFilter(text="%"))) == ["100% done_now"]
    assert messages(await store.query(LogFilter(text="_"))) == ["100% done_now"]
    assert messages(await store.query(LogFilter(text="a\\b"))) == ["a\\b path"]
    assert messages(await store.query(LogFilter(text="\\"))) == ["a\\b path"]
    assert messages(await store.query(LogFilter(text="nothing like it"))) == []


async def test_records_come_back_whole_in_utc(store: LogStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    sent = LogRecord(timestamp=datetime(2030, 1, 1, 14, 0, 0, 123456, tzinfo=plus2), service="api",
                     level="warning", message="hé", meta={"job_id": "j", "n": 1, "nested": {"a": [1, 2]},
                                                         "zero": "a\u0000b", "f": 1.5})
    naive = LogRecord(timestamp=datetime(2030, 1, 1, 11, 0), service="api", level="info", message="naive")
    await store.append([sent, naive])
    got, got_naive = await store.query(LogFilter())
    assert got.timestamp == datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert got.timestamp.utcoffset() == timedelta(0)
    assert (got.service, got.level, got.message, got.meta) == ("api", "warning", "hé", sent.meta)
    assert got_naive.timestamp == datetime(2030, 1, 1, 11, 0, tzinfo=timezone.utc)
    assert got_naive.timestamp.utcoffset() == timedelta(0)


def arrived(got: Arrivals) -> list[str]:
    return [record.message for _, record in got.records]


async def test_arrivals_follow_arrival_not_time(store: LogStore) -> None:
    await store.append([rec(5, "a"), rec(5, "b", level="error")])  # the same time
    await store.append([rec(1, "late")])  # older than both, arrived after
    got = await store.arrivals(LogFilter(), 0)
    assert arrived(got) == ["late", "b", "a"]
    seqs = [seq for seq, _ in got.records]
    assert seqs == sorted(set(seqs), reverse=True) and got.last_seq == seqs[0]
    assert arrived(await store.arrivals(LogFilter(), seqs[2])) == ["late", "b"]  # after "a": "b" too
    assert (await store.arrivals(LogFilter(), got.last_seq)).records == []
    assert arrived(await store.arrivals(LogFilter(limit=1), 0)) == ["late"]  # the newest arrivals
    assert arrived(await store.arrivals(LogFilter(levels=frozenset({"error"})), 0)) == ["b"]
    assert arrived(await store.arrivals(LogFilter(text="LAT", since=T0), 0)) == ["late"]
    none = await store.arrivals(LogFilter(levels=frozenset()), 0)
    assert none.records == [] and none.last_seq == got.last_seq


async def test_a_sequence_number_is_never_given_twice(store: LogStore) -> None:
    await store.append([rec(1, "newest"), rec(0, "late")])
    last = (await store.arrivals(LogFilter(), 0)).last_seq
    await store.delete_before(T0 + timedelta(seconds=1))  # the newest arrival goes, then everything
    await store.keep_newest(0)
    await store.append([rec(2, "next")])
    got = await store.arrivals(LogFilter(), 0)
    assert arrived(got) == ["next"] and got.records[0][0] > last and got.last_seq == got.records[0][0]


async def test_an_empty_batch_stores_nothing(store: LogStore) -> None:
    await store.append([])
    assert await store.count() == 0


async def test_delete_before(store: LogStore) -> None:
    await store.append([rec(0, "a"), rec(1, "b"), rec(2, "c")])
    assert await store.delete_before(T0 + timedelta(seconds=2)) == 2
    assert messages(await store.query(LogFilter())) == ["c"]
    assert await store.delete_before(T0) == 0


async def test_keep_newest_deletes_the_oldest_beyond_the_cap(store: LogStore) -> None:
    # Ties on the timestamp are broken by arrival, as in a query: "b" came after "a", so it stays.
    await store.append([rec(2, "c"), rec(0, "a"), rec(1, "tie-first"), rec(3, "d")])
    await store.append([rec(1, "tie-second")])
    assert await store.keep_newest(3) == 2
    assert messages(await store.query(LogFilter())) == ["d", "c", "tie-second"]
    assert await store.count() == 3
    assert await store.keep_newest(3) == 0
    assert await store.keep_newest(5) == 0
    assert await store.keep_newest(0) == 3
    assert await store.count() == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_retention_deletes_in_chunks(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = store_from_url(backend_url(backend, request, tmp_path))
    store.delete_chunk = 3  # type: ignore[attr-defined]  # several statements for one sweep
    await store.open()
    try:
        await store.append([rec(i, str(i)) for i in range(20)])
        assert await store.delete_before(T0 + timedelta(seconds=10)) == 10
        assert await store.keep_newest(2) == 8
        assert messages(await store.query(LogFilter())) == ["19", "18"]
    finally:
        await store.close()


async def test_ping_fails_once_closed(store: LogStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ping()
    await store.close()  # safe twice


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_records_survive_a_reopen(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = backend_url(backend, request, tmp_path)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/nested/logs.db"  # a missing folder is created
    first = store_from_url(url)
    await first.open()
    await first.append([rec(0, "kept", job_id="j1")])
    await first.close()
    second = store_from_url(url)
    await second.open()
    try:
        assert messages(await second.query(LogFilter(job_id="j1"))) == ["kept"]
    finally:
        await second.close()


async def test_two_postgres_stores_share_one_schema(postgres_url: str) -> None:
    # Two logging services on one database: both open at once (the schema is made once), each sees the other.
    first, second = store_from_url(postgres_url), store_from_url(postgres_url)
    await first.open()
    await second.open()
    try:
        await first.append([rec(0, "from first")])
        await second.append([rec(1, "from second")])
        assert messages(await first.query(LogFilter())) == ["from second", "from first"]
    finally:
        await first.close()
        await second.close()


async def test_postgres_batch_is_all_or_nothing(postgres_url: str) -> None:
    store = store_from_url(postgres_url)
    await store.open()
    try:
        with pytest.raises(ValueError, match="refused"):  # PostgreSQL text cannot hold a NUL character
            await store.append([rec(0, "fine"), rec(1, "bad\u0000")])
        assert await store.count() == 0
        await store.append([rec(0, "fine")])
        assert await store.count() == 1
    finally:
        await store.close()


async def test_postgres_unreachable_is_unavailable() -> None:
    store = store_from_url("postgresql://postgres@127.0.0.1:9/none")
    with pytest.raises(Unavailable):
        await store.open()
    with pytest.raises(Unavailable):
        await store.ping()
    await store.close()


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
    pg = store_from_url("postgresql://u@db:5432/conveyor?schema=logs&sslmode=disable")
    assert isinstance(pg, PostgresLogStore)
    assert (pg.schema, pg.dsn) == ("logs", "postgresql://u@db:5432/conveyor?sslmode=disable")
    assert isinstance(store_from_url("postgres://u@db/conveyor"), PostgresLogStore)
    for bad in ("redis://localhost", "sqlite://", "postgresql://u@db/c?schema=a;drop", "memory://?capacity=x"):
        with pytest.raises(ValueError):
            store_from_url(bad)
