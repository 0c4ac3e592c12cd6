"""Log databases made by an earlier version: opening one brings it up to date, and its lines stay readable,
numbered on from the greatest id it had, and found by the text index made then."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import asyncpg

from logging_service.store import LogFilter, store_from_url
from shared.postgres import split_schema
from tests.logging_service.test_log_store import T0, rec

# The tables as the version before sequence numbers made them.
OLD_SQLITE = """
CREATE TABLE logs (id INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, service TEXT NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL, meta TEXT NOT NULL, job_id TEXT, request_id TEXT);
CREATE INDEX logs_ts ON logs (ts_us);
CREATE INDEX logs_service ON logs (service, ts_us);
CREATE INDEX logs_level ON logs (level, ts_us);
CREATE INDEX logs_job ON logs (job_id, ts_us);
CREATE INDEX logs_request ON logs (request_id, ts_us);
INSERT INTO logs (id, ts_us, service, level, message, meta) VALUES
    (1, 1893499200000000, 'worker', 'info', 'Old Line one', '{}'),
    (7, 1893499201000000, 'worker', 'info', 'old line two', '{}');
"""

OLD_POSTGRES = """
CREATE TABLE logs (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts TIMESTAMPTZ NOT NULL,
    service TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, meta JSON NOT NULL, job_id TEXT,
    request_id TEXT);
CREATE INDEX logs_ts ON logs (ts, id);
INSERT INTO logs (ts, service, level, message, meta) VALUES
    ('2030-01-01T12:00:00Z', 'worker', 'info', 'Old Line one', '{}'),
    ('2030-01-01T12:00:01Z', 'worker', 'info', 'old line two', '{}');
"""


async def test_an_old_sqlite_file_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE)
    db.close()
    store = store_from_url(f"sqlite:///{path}")
    await store.open()
    try:
        old = await store.arrivals(LogFilter(), 0)
        assert [(seq, r.message) for seq, r in old.records] == [(7, "old line two"), (1, "Old Line one")]
        assert old.last_seq == 7
        assert store.text_indexed  # type: ignore[attr-defined]
        db = store._db  # type: ignore[attr-defined]
        assert db.execute("SELECT rowid FROM logs_text WHERE logs_text MATCH '\"line one\"'").fetchall() == [(1,)]
        assert [r.message for r in await store.query(LogFilter(text="LINE ONE"))] == ["Old Line one"]
        await store.append([rec(5, "new line")])
        assert (await store.arrivals(LogFilter(), 7)).records[0][0] == 8
    finally:
        await store.close()
    again = store_from_url(f"sqlite:///{path}")  # the count survives a reopen
    await again.open()
    try:
        await again.keep_newest(0)
        await again.append([rec(6, "after a reopen")])
        assert (await again.arrivals(LogFilter(), 0)).records[0][0] == 9
    finally:
        await again.close()


async def test_an_old_postgres_table_is_brought_up_to_date(postgres_url: str) -> None:
    dsn, schema = split_schema(postgres_url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path TO "{schema}"; {OLD_POSTGRES}')
    finally:
        await conn.close()
    store = store_from_url(postgres_url)
    await store.open()
    try:
        old = await store.arrivals(LogFilter(), 0)
        assert [r.message for _, r in old.records] == ["old line two", "Old Line one"]
        await store.append([rec(5, "new line")])
        new = await store.arrivals(LogFilter(), old.last_seq)
        assert [r.message for _, r in new.records] == ["new line"] and new.last_seq > old.last_seq
        assert [r.message for r in await store.query(LogFilter(text="LINE ONE"))] == ["Old Line one"]
        assert [r.message for r in await store.query(LogFilter(until=T0 + timedelta(seconds=2)))] == [
            "old line two", "Old Line one"]
    finally:
        await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE schemaname = $1"
                                   " AND indexname = 'logs_message_trgm'", schema) is not None
    finally:
        await conn.close()
