"""Log stores, chosen by URL in :func:`store_from_url`: ``sqlite:///path/logs.db`` (the default) and
``memory://`` (a bounded list, for tests). Both pass ``tests/logging_service/test_log_store.py``.

A store keeps :class:`shared.contract.LogRecord` lines and answers filtered queries newest first
(timestamp, then arrival, descending). Timestamps come back in UTC, microsecond precision; a naive one
is taken as UTC. ``meta.job_id`` and ``meta.request_id`` are filterable: the SQLite store keeps them in
indexed columns of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from shared.contract import LogRecord
from shared.errors import Unavailable

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + us * _US


def meta_id(meta: dict[str, Any], key: str) -> str | None:
    """``meta[key]`` as the string a filter compares with (a job id may be logged as a UUID or an int)."""
    value = meta.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True)
class LogFilter:
    """What a query asks for; every field given must match. ``since`` is inclusive, ``until`` exclusive."""

    service: str | None = None
    levels: frozenset[str] | None = None  # any of these; None: any level
    job_id: str | None = None
    request_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


class LogStore(ABC):
    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing. Called once before any other method."""

    @abstractmethod
    async def close(self) -> None:
        """Release what :meth:`open` acquired. Safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """A real round trip to the backend; raises :class:`Unavailable` if it is not usable."""

    @abstractmethod
    async def append(self, records: Sequence[LogRecord]) -> None:
        """Store a batch, all or nothing."""

    @abstractmethod
    async def query(self, where: LogFilter) -> list[LogRecord]:
        """Records matching ``where``, newest first, at most ``where.limit``."""

    @abstractmethod
    async def count(self) -> int:
        """Records stored."""

    @abstractmethod
    async def delete_before(self, cutoff: datetime) -> int:
        """Delete records whose timestamp is before ``cutoff``; returns how many."""


def store_from_url(url: str) -> LogStore:
    """The store a URL names: ``memory://[?capacity=N]`` or ``sqlite:///relative/logs.db`` (four slashes
    for an absolute path)."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        capacity = parse_qs(parts.query).get("capacity", ["100000"])[0]
        return MemoryLogStore(capacity=int(capacity))
    if parts.scheme == "sqlite":
        path = parts.path[1:]
        if not path:
            raise ValueError(f"no database path in {url!r}: use sqlite:///path/logs.db")
        return SqliteLogStore(path)
    raise ValueError(f"unknown log store URL scheme {parts.scheme!r}: use sqlite:/// or memory://")


class MemoryLogStore(LogStore):
    """Records in a list bounded to ``capacity``: past it, the oldest arrivals are dropped."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._items: deque[tuple[int, int, LogRecord]] = deque(maxlen=capacity)  # (ts_us, seq, record)
        self._seq = 0
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        if not self._open:
            raise Unavailable("log store is closed")

    async def append(self, records: Sequence[LogRecord]) -> None:
        for record in records:
            us = to_us(record.timestamp)
            self._seq += 1
            self._items.append((us, self._seq, record.model_copy(update={"timestamp": from_us(us)})))

    async def query(self, where: LogFilter) -> list[LogRecord]:
        since = None if where.since is None else to_us(where.since)
        until = None if where.until is None else to_us(where.until)
        found = [
            (us, seq, record) for us, seq, record in self._items
            if (where.service is None or record.service == where.service)
            and (where.levels is None or record.level in where.levels)
            and (where.job_id is None or meta_id(record.meta, "job_id") == where.job_id)
            and (where.request_id is None or meta_id(record.meta, "request_id") == where.request_id)
            and (since is None or us >= since)
            and (until is None or us < until)
        ]
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [record for _, _, record in found[: where.limit]]

    async def count(self) -> int:
        return len(self._items)

    async def delete_before(self, cutoff: datetime) -> int:
        before = len(self._items)
        limit = to_us(cutoff)
        self._items = deque((item for item in self._items if item[0] >= limit), maxlen=self._items.maxlen)
        return before - len(self._items)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    service TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    meta TEXT NOT NULL,
    job_id TEXT,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts_us);
CREATE INDEX IF NOT EXISTS logs_service ON logs (service, ts_us);
CREATE INDEX IF NOT EXISTS logs_level ON logs (level, ts_us);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, ts_us);
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id, ts_us);
"""

#: Rows one retention statement deletes at most, so a large sweep never holds the event loop for long.
_DELETE_CHUNK = 10_000


class SqliteLogStore(LogStore):
    """One SQLite file through the stdlib driver, used on the event loop: every call is one short
    statement, or one transaction for a batch. WAL lets queries read while a batch is written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise Unavailable("log store is closed")
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise Unavailable(f"log store failed: {exc}") from exc

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        with self._conn() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        with self._conn() as db:
            db.execute("SELECT 1").fetchone()

    async def append(self, records: Sequence[LogRecord]) -> None:
        rows = [
            (to_us(r.timestamp), r.service, r.level, r.message, orjson.dumps(r.meta).decode(),
             meta_id(r.meta, "job_id"), meta_id(r.meta, "request_id"))
            for r in records
        ]
        with self._conn() as db, db:  # the inner ``db`` commits the batch, or rolls it back
            db.executemany(
                "INSERT INTO logs (ts_us, service, level, message, meta, job_id, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def query(self, where: LogFilter) -> list[LogRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("service", where.service), ("job_id", where.job_id),
                              ("request_id", where.request_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.levels is not None:
            clauses.append(f"level IN ({', '.join('?' * len(where.levels))})")
            params.extend(sorted(where.levels))
        if where.since is not None:
            clauses.append("ts_us >= ?")
            params.append(to_us(where.since))
        if where.until is not None:
            clauses.append("ts_us < ?")
            params.append(to_us(where.until))
        sql = "SELECT ts_us, service, level, message, meta FROM logs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY ts_us DESC, id DESC LIMIT ?"
        with self._conn() as db:
            rows = db.execute(sql, [*params, where.limit]).fetchall()
        return [
            LogRecord(timestamp=from_us(us), service=service, level=level, message=message,
                      meta=orjson.loads(meta))
            for us, service, level, message, meta in rows
        ]

    async def count(self) -> int:
        with self._conn() as db:
            return db.execute("SELECT count(*) FROM logs").fetchone()[0]

    async def delete_before(self, cutoff: datetime) -> int:
        deleted = 0
        limit = to_us(cutoff)
        while True:
            with self._conn() as db, db:
                n = db.execute(
                    "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE ts_us < ? LIMIT ?)",
                    (limit, _DELETE_CHUNK),
                ).rowcount
            deleted += n
            if n < _DELETE_CHUNK:
                return deleted
            await asyncio.sleep(0)  # let requests through between chunks
