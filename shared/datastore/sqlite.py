"""The embedded data store: one SQLite file (``sqlite:///var/data.db``).

One connection, guarded by a lock, its work run in a worker thread so the event loop keeps going; the
imports of one handler take turns, and SQLite's own locking (WAL, a busy timeout) lets the handlers of one
machine share the file. A scan reads keyset pages (``id > last``), one query a page, so a long export holds
no read transaction open and rows written meanwhile are neither skipped nor repeated.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from shared.datastore import (
    COLUMNS,
    UNIQUE,
    Condition,
    DataStore,
    DataStoreError,
    check_query,
    key_sql,
    lookup_values,
)
from shared.sqlite_wal import use_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
-- An email is unique in any case (a store made before this also keeps its email UNIQUE, which it implies).
CREATE UNIQUE INDEX IF NOT EXISTS users_email_any_case ON users (lower(email));
CREATE TABLE IF NOT EXISTS articles (
    id TEXT PRIMARY KEY, slug TEXT NOT NULL UNIQUE, title TEXT NOT NULL, body TEXT NOT NULL,
    author_id TEXT NOT NULL REFERENCES users(id), tags TEXT NOT NULL, published_at TEXT, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comments (
    id TEXT PRIMARY KEY, article_id TEXT NOT NULL REFERENCES articles(id),
    user_id TEXT NOT NULL REFERENCES users(id), body TEXT NOT NULL, created_at TEXT NOT NULL
);
"""

#: SQLite's limit on a statement's parameters is 32,766 from 3.32 on; a batch stays well under it.
_IN_CHUNK = 900


def _upsert_sql(table: str) -> str:
    columns = COLUMNS[table]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}")


def _where(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    clauses = [f"{c.column} {c.operator} ?" for c in conditions]
    return (" AND ".join(clauses) or "1"), [c.value for c in conditions]


class SqliteDataStore(DataStore):
    """The SQLite data store. :meth:`open` before use, :meth:`close` after."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._sql = {table: _upsert_sql(table) for table in COLUMNS}
        self._db: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            # Whoever only reads (a receptionist streaming an export) never creates, migrates or writes.
            try:
                db = sqlite3.connect(f"file:{Path(self.path).absolute()}?mode=ro", uri=True,
                                     check_same_thread=False, isolation_level=None, timeout=30.0)
                db.execute("SELECT 1 FROM comments LIMIT 0")  # the file is a data store
            except sqlite3.Error as exc:
                raise DataStoreError(f"cannot open the data store {self.path} to read: {exc}") from exc
            return db
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and ended explicitly below.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        use_wal(db, 30.0)
        # References are refused as on PostgreSQL (SQLite leaves them unchecked unless asked).
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        return db

    async def open(self) -> None:
        if self._db is None:
            self._db = await asyncio.to_thread(self._connect)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the data store is not open")
        return self._db

    # -- reads -------------------------------------------------------------------------------------------

    def _lookup(self, table: str, column: str, values: Iterable[str]) -> dict[str, str]:
        wanted = lookup_values(table, column, values)
        key = key_sql(table, column)  # lower(email): its index's expression, so the index is used
        found: dict[str, str] = {}
        with self._lock:
            db = self._conn()
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                sql = f"SELECT {key}, id FROM {table} WHERE {key} IN ({', '.join('?' * len(chunk))})"
                found.update(db.execute(sql, chunk).fetchall())
        return found

    async def lookup(self, table: str, column: str, values: Iterable[str]) -> dict[str, str]:
        if column not in UNIQUE.get(table, ()):
            raise ValueError(f"{table}.{column} is not a unique column")
        return await asyncio.to_thread(self._lookup, table, column, values)

    def _count(self, table: str, conditions: Sequence[Condition]) -> int:
        where, params = _where(conditions)
        with self._lock:
            return int(self._conn().execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])

    async def count(self, table: str, conditions: Sequence[Condition] = ()) -> int:
        check_query(table, (), conditions)
        return await asyncio.to_thread(self._count, table, conditions)

    def _get(self, table: str, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn().execute(f"SELECT {', '.join(COLUMNS[table])} FROM {table} WHERE id = ?",
                                       (record_id,)).fetchone()
        return dict(zip(COLUMNS[table], row, strict=True)) if row is not None else None

    async def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        check_query(table, (), ())
        return await asyncio.to_thread(self._get, table, record_id)

    def _page(self, table: str, columns: Sequence[str], conditions: Sequence[Condition], after_id: str | None,
              limit: int) -> list[tuple[Any, ...]]:
        where, values = _where(conditions)
        sql = f"SELECT {', '.join(columns)}, id FROM {table} WHERE ({where})"
        if after_id is not None:
            sql += " AND id > ?"
            values.append(after_id)
        sql += " ORDER BY id LIMIT ?"
        values.append(limit)
        with self._lock:
            return self._conn().execute(sql, values).fetchall()

    async def scan(self, table: str, columns: Sequence[str], conditions: Sequence[Condition] = (), *,
                   page_rows: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        check_query(table, columns, conditions)
        width = len(columns)
        after: str | None = None
        while rows := await asyncio.to_thread(self._page, table, columns, conditions, after, page_rows):
            after = rows[-1][width]  # the id selected after the columns asked for
            yield [row[:width] for row in rows]

    # -- writes ------------------------------------------------------------------------------------------

    def _upsert(self, table: str, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        sql = self._sql[table]
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN")
                db.executemany(sql, rows)
                db.execute("COMMIT")
                return []
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
            refused: list[tuple[int, str]] = []
            db.execute("BEGIN")
            for index, row in enumerate(rows):
                try:
                    db.execute("SAVEPOINT one")
                    db.execute(sql, row)
                    db.execute("RELEASE one")
                except sqlite3.IntegrityError as exc:
                    db.execute("ROLLBACK TO one")
                    db.execute("RELEASE one")
                    refused.append((index, f"conflicts with a stored record: {exc}"))
            db.execute("COMMIT")
            return refused

    async def upsert(self, table: str, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        check_query(table, (), ())
        if self.read_only:
            raise DataStoreError("the data store is open read-only")
        if not rows:
            return []
        return await asyncio.to_thread(self._upsert, table, rows)
