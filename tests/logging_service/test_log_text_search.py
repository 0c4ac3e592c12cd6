"""The text filter ``q`` is indexed: on every backend it still finds a substring of the message in any case;
on SQLite the statement a rare word runs reads the trigram index and looks its lines up by id (SQLite's own
plan), and the index follows deletions; on PostgreSQL the ``pg_trgm`` index can answer the filter. The
figures on 1,000,000 lines are ``conveyor bench-logs``'s (README, "The dashboard")."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from logging_service.store import LogFilter, LogStore
from logging_service.store import sqlite as sqlite_store
from logging_service.store.postgres import PostgresLogStore
from logging_service.store.sqlite import SqliteLogStore
from shared.postgres import split_schema
from tests.logging_service.test_log_store import messages, rec, store  # noqa: F401  (a fixture)

LINES = [
    rec(0, "Upload of Job 7 TIMED OUT after 30 s"),
    rec(1, "job 8 finished in 12 ms", service="api", level="error"),
    rec(2, 'he said "quoted" and left'),
    rec(3, "disk quota exceeded on volume vol-3"),
    rec(4, "GET /jobs/8 200 in 3 ms", service="api"),
]


async def test_q_finds_a_substring_in_any_case(store: LogStore) -> None:  # noqa: F811
    await store.append(LINES)
    assert messages(await store.query(LogFilter(text="timed out"))) == ["Upload of Job 7 TIMED OUT after 30 s"]
    assert messages(await store.query(LogFilter(text="JOB "))) == ["job 8 finished in 12 ms",
                                                                  "Upload of Job 7 TIMED OUT after 30 s"]
    assert messages(await store.query(LogFilter(text="OTA EXC"))) == ["disk quota exceeded on volume vol-3"]
    assert messages(await store.query(LogFilter(text='"quoted"'))) == ['he said "quoted" and left']
    assert messages(await store.query(LogFilter(text="s/8 2"))) == ["GET /jobs/8 200 in 3 ms"]
    assert messages(await store.query(LogFilter(text="ms", service="api"))) == [  # shorter than a trigram
        "GET /jobs/8 200 in 3 ms", "job 8 finished in 12 ms"]
    assert messages(await store.query(LogFilter(text="job", levels=frozenset({"error"})))) == [
        "job 8 finished in 12 ms"]
    assert messages(await store.query(LogFilter(text="in 3 ms after"))) == []
    # Deleted lines leave the index too.
    await store.delete_before(LINES[3].timestamp)
    assert messages(await store.query(LogFilter(text="job"))) == ["GET /jobs/8 200 in 3 ms"]
    await store.append([rec(5, "a new job")])
    assert messages(await store.query(LogFilter(text="job"))) == ["a new job", "GET /jobs/8 200 in 3 ms"]


async def plan_of(log_store: SqliteLogStore, call: Callable[[], Awaitable[Any]]) -> str:
    """SQLite's plan of each statement ``call`` runs on the logs, one line per step."""
    db = log_store._db
    assert db is not None
    statements: list[str] = []
    db.set_trace_callback(statements.append)  # the statements as run, their values filled in
    try:
        await call()
    finally:
        db.set_trace_callback(None)
    plans = [row[3] for sql in statements if sql.lstrip().upper().startswith("SELECT")
             for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
    assert plans, statements
    return "\n".join(plans)


@pytest.fixture
async def sqlite(tmp_path: Path) -> Any:
    s = SqliteLogStore(str(tmp_path / "logs.db"))
    await s.open()
    assert s.text_indexed, "this SQLite has a trigram tokenizer (3.34 or later)"
    await s.append(LINES)
    yield s
    await s.close()


@pytest.mark.parametrize("where", [LogFilter(text="quota"), LogFilter(text="quota", service="worker"),
                                   LogFilter(text="quota", job_id="j1"), LogFilter(text="quota", since=LINES[1].timestamp),
                                   LogFilter(text="quota", levels=frozenset({"error", "critical"}))],
                         ids=["q", "q+service", "q+job", "q+since", "q+levels"])
async def test_a_rare_word_reads_the_trigram_index_not_the_table(sqlite: SqliteLogStore, where: LogFilter) -> None:
    plan = await plan_of(sqlite, lambda: sqlite.query(where))
    assert "SCAN logs_text VIRTUAL TABLE" in plan, plan
    assert "SEARCH logs USING INTEGER PRIMARY KEY" in plan, plan  # each line the index names, by id
    assert not [step for step in plan.splitlines() if step.startswith("SCAN logs ")], plan


async def test_a_common_word_and_a_short_q_read_the_newest_lines(sqlite: SqliteLogStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "COMMON_TEXT", 2)  # "job" is in three lines
    for text in ("job", "ms"):
        plan = await plan_of(sqlite, lambda text=text: sqlite.query(LogFilter(text=text)))
        assert "SCAN logs USING INDEX logs_ts" in plan and "TEMP B-TREE" not in plan, plan
    assert messages(await sqlite.query(LogFilter(text="JOB", limit=2))) == ["GET /jobs/8 200 in 3 ms",
                                                                            "job 8 finished in 12 ms"]


async def test_the_index_stays_whole_through_retention(sqlite: SqliteLogStore) -> None:
    sqlite.delete_chunk = 2
    await sqlite.append([rec(10 + n, f"line {n}") for n in range(7)])
    assert await sqlite.keep_newest(3) == 9
    db = sqlite._db
    assert db is not None
    db.execute("INSERT INTO logs_text (logs_text, rank) VALUES ('integrity-check', 1)")  # raises when not
    assert db.execute("SELECT count(*) FROM logs_text").fetchone()[0] == 3
    assert messages(await sqlite.query(LogFilter(text="line"))) == ["line 6", "line 5", "line 4"]


async def test_a_file_whose_index_an_insert_trigger_kept_is_indexed_once_by_the_store(tmp_path: Path) -> None:
    """The version before added each line to the index with a trigger (at about four times the CPU). Opened
    now, the file loses that trigger: the store adds each line itself, and a line is in the index once."""
    path = tmp_path / "logs.db"
    first = SqliteLogStore(str(path))
    await first.open()
    await first.append(LINES[:2])
    db = first._db
    assert db is not None
    db.executescript("""CREATE TRIGGER logs_text_insert AFTER INSERT ON logs BEGIN
        INSERT INTO logs_text (rowid, message) VALUES (new.id, new.message); END;""")
    await first.close()

    s = SqliteLogStore(str(path))
    await s.open()
    try:
        db = s._db
        assert db is not None
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == [
            ("logs_text_delete",)]
        await s.append(LINES[2:])
        db.execute("INSERT INTO logs_text (logs_text, rank) VALUES ('integrity-check', 1)")  # raises when not
        found = db.execute("SELECT rowid FROM logs_text WHERE logs_text MATCH '\"job\"' ORDER BY rowid").fetchall()
        assert found == [(1,), (2,), (5,)]  # each line once, the old lines and the new
        assert messages(await s.query(LogFilter(text="quota"))) == ["disk quota exceeded on volume vol-3"]
    finally:
        await s.close()


async def test_without_a_trigram_tokenizer_q_is_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 33, 0))
    s = SqliteLogStore(str(tmp_path / "logs.db"))
    await s.open()
    try:
        assert not s.text_indexed
        await s.append(LINES)
        assert messages(await s.query(LogFilter(text="timed OUT"))) == ["Upload of Job 7 TIMED OUT after 30 s"]
        assert "logs_text" not in await plan_of(s, lambda: s.query(LogFilter(text="quota")))
    finally:
        await s.close()


async def test_postgres_q_can_use_the_trigram_index(postgres_url: str) -> None:
    s = PostgresLogStore.from_url(postgres_url)
    await s.open()
    try:
        assert s.text_indexed
        await s.append(LINES)
        params: list[Any] = []
        clause = " AND ".join(s._where(LogFilter(text="quota"), params))
        dsn, schema = split_schema(postgres_url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
        try:  # a handful of rows: the planner reads the table unless told not to; the index must be able to
            await conn.execute("SET enable_seqscan = off; SET enable_indexscan = off")
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN SELECT id FROM logs WHERE {clause}", *params))
        finally:
            await conn.close()
        assert "logs_message_trgm" in plan, plan
    finally:
        await s.close()


async def test_bench_logs_times_each_query_both_ways(tmp_path: Path) -> None:
    from shared.bench_logs import run

    results = await run(tmp_path / "bench.db", 3000, 1, fresh=False)
    names = [r["query"] for r in results]
    assert "all" in names and any(n.endswith(", indexed") for n in names) and any(n.endswith(", LIKE") for n in names)
    assert all(r["median_ms"] >= 0 for r in results)
