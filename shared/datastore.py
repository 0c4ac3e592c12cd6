"""The bulk data store: users, articles and comments, written by the data import kind.

Chosen by URL like the other stores (``sqlite:///var/data.db``). Handlers are its only writers. Its methods
are synchronous and meant for a worker thread (:func:`asyncio.to_thread`): one connection, guarded by a
lock, so the imports of one handler take turns; SQLite's own locking (WAL, a busy timeout) lets the
handlers of one machine share the file.

Every write is an upsert by ``id``: importing a file twice leaves the store as importing it once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Columns of each table, ``id`` first: the order of the rows :meth:`DataStore.upsert` takes.
COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "name", "role", "active", "created_at", "updated_at"),
    "articles": ("id", "slug", "title", "body", "author_id", "tags", "published_at", "status"),
    "comments": ("id", "article_id", "user_id", "body", "created_at"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL, role TEXT NOT NULL,
    active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
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


class DataStoreError(Exception):
    """The data store could not be opened (a bad URL; for reading only, no store there yet)."""


def _upsert_sql(table: str) -> str:
    columns = COLUMNS[table]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}")


class DataStore:
    """The SQLite data store. Open with :meth:`from_url`; :meth:`close` when done."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sql = {table: _upsert_sql(table) for table in COLUMNS}
        if read_only:
            # Whoever only reads (a receptionist streaming an export) never creates, migrates or writes.
            try:
                self._db = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None, timeout=30.0)
            except sqlite3.OperationalError as exc:
                raise DataStoreError(f"cannot open the data store {path} to read: {exc}") from exc
            return
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and ended explicitly below.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False) -> DataStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; ``read_only`` opens an
        existing store without writing to it (a :class:`DataStoreError` when there is none)."""
        if not url.startswith("sqlite:///"):
            raise DataStoreError(f"unsupported data store URL {url!r} (expected sqlite:///path)")
        return cls(url.removeprefix("sqlite:///"), read_only=read_only)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def existing(self, table: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the table holds."""
        return set(self.lookup(table, "id", ids))

    def lookup(self, table: str, column: str, values: Iterable[str]) -> dict[str, str]:
        """``{value: id}`` of the rows whose ``column`` is one of ``values`` (a unique column)."""
        wanted = list(dict.fromkeys(values))
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                sql = f"SELECT {column}, id FROM {table} WHERE {column} IN ({', '.join('?' * len(chunk))})"
                found.update(self._db.execute(sql, chunk).fetchall())
        return found

    def upsert(self, table: str, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        """Insert or replace ``rows`` (in :data:`COLUMNS` order) by id, in one transaction. Returns the
        rows the store refused, as ``(index in rows, reason)``: none, unless a constraint the caller did
        not foresee fails, in which case the rows go one by one so only the bad ones are lost."""
        if not rows:
            return []
        sql = self._sql[table]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
                return []
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
            refused: list[tuple[int, str]] = []
            self._db.execute("BEGIN")
            for index, row in enumerate(rows):
                try:
                    self._db.execute("SAVEPOINT one")
                    self._db.execute(sql, row)
                    self._db.execute("RELEASE one")
                except sqlite3.IntegrityError as exc:
                    self._db.execute("ROLLBACK TO one")
                    self._db.execute("RELEASE one")
                    refused.append((index, f"conflicts with a stored record: {exc}"))
            self._db.execute("COMMIT")
            return refused

    def count(self, table: str) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        """One row as a dict (for tests and support), or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS[table])} FROM {table} WHERE id = ?",
                                   (record_id,)).fetchone()
        return dict(zip(COLUMNS[table], row, strict=True)) if row is not None else None

    def count_where(self, table: str, where: str, params: Sequence[Any]) -> int:
        """Rows matching ``where`` (an SQL condition built from known columns, its values in ``params``)."""
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])

    def page(self, table: str, columns: Sequence[str], where: str, params: Sequence[Any], after_id: str | None,
             limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows matching ``where`` with an id past ``after_id``, by id: keyset paging, so
        every page costs the same however deep it is, and rows written meanwhile are neither skipped nor
        repeated."""
        unknown = set(columns) - set(COLUMNS[table])
        if unknown:
            raise ValueError(f"{table} has no column {', '.join(sorted(unknown))}")
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE ({where})"
        values = list(params)
        if after_id is not None:
            sql += " AND id > ?"
            values.append(after_id)
        sql += " ORDER BY id LIMIT ?"
        values.append(limit)
        with self._lock:
            return self._db.execute(sql, values).fetchall()
