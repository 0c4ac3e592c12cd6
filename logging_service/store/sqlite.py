"""The default log store: one SQLite file (``sqlite:///var/logs.db``) through the stdlib driver.

A batch is one transaction; WAL with ``synchronous=NORMAL`` lets queries read while a batch is written.
A batch that was answered survives the process dying; a power cut may lose the last batches, never
leave half of one.

A line's sequence number (:meth:`~logging_service.store.base.LogStore.arrivals`) is its ``id``, counted in
``log_seq`` rather than left to SQLite, which would give the id of a deleted newest row again. A file
from before ``log_seq`` gets it on open, counting on from its greatest id.

The text filter (``q``) is indexed: ``logs_text`` is an FTS5 table with the ``trigram`` tokenizer over the
messages (SQLite 3.34 or later), so a word found in few lines is found without reading the others. A batch
adds its lines to it in the batch's transaction, in one statement (an insert trigger did it at about four
times the CPU: 33 against 9 µs a line, which made the index three quarters of the logging service's CPU
under the benchmark); a trigger removes a deleted line. A file from before the index gets it on open,
every line indexed then (a one-off pass: 50 s for a million lines). A trigram index matches three characters or more in any case
(Unicode case folding). A shorter ``q``, a word the index finds in :data:`COMMON_TEXT` lines or more (the
newest lines hold a page of it sooner), or an SQLite without the tokenizer (said once in the log) is
``LIKE``, which reads the lines newest first until it has a page (and folds the case of ASCII letters only).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from loguru import logger

from logging_service.store.base import (
    DELETE_CHUNK,
    Arrivals,
    LogFilter,
    LogStore,
    from_us,
    like_pattern,
    meta_id,
    to_us,
)
from shared.contract import LogRecord
from shared.errors import Unavailable
from shared.sqlite_wal import use_wal

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
CREATE TABLE IF NOT EXISTS log_seq (one INTEGER PRIMARY KEY CHECK (one = 1), last INTEGER NOT NULL);
INSERT OR IGNORE INTO log_seq (one, last) SELECT 1, coalesce(max(id), 0) FROM logs;
"""

#: The messages' trigram index, kept by triggers (an external content table: the text stays in ``logs``).
_TEXT_INDEX = """
CREATE VIRTUAL TABLE IF NOT EXISTS logs_text USING fts5(message, content='logs', content_rowid='id',
                                                        tokenize='trigram');
DROP TRIGGER IF EXISTS logs_text_insert;  -- a file from before: append() adds the lines now
CREATE TRIGGER IF NOT EXISTS logs_text_delete AFTER DELETE ON logs BEGIN
    INSERT INTO logs_text (logs_text, rowid, message) VALUES ('delete', old.id, old.message);
END;
"""

#: Characters a trigram index needs in ``q`` to find it.
TRIGRAM = 3
#: Lines holding ``q`` past which reading the lines newest first with ``LIKE`` finds a page sooner than
#: reading every line the index names and sorting them (about 35 ms each way at this many in 1,000,000).
COMMON_TEXT = 5_000


def _text_index(db: sqlite3.Connection) -> bool:
    """Create the messages' trigram index when missing (indexing the lines already there); False when this
    SQLite cannot."""
    if sqlite3.sqlite_version_info < (3, 34, 0):
        logger.warning("log text search is not indexed: SQLite {} has no trigram tokenizer (3.34 or later)",
                       sqlite3.sqlite_version)
        return False
    had = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'logs_text'").fetchone() is not None
    rebuild = "" if had else "INSERT INTO logs_text (logs_text) VALUES ('rebuild');"
    try:
        db.executescript(f"BEGIN IMMEDIATE; {_TEXT_INDEX} {rebuild} COMMIT;")
    except sqlite3.OperationalError as exc:  # built without FTS5
        if db.in_transaction:
            db.execute("ROLLBACK")
        logger.warning("log text search is not indexed: {}", exc)
        return False
    return True


def _phrase(text: str) -> str:
    """``text`` as one FTS5 string: with the trigram tokenizer, the lines whose message holds it."""
    return '"' + text.replace('"', '""') + '"'



class SqliteLogStore(LogStore):
    """One SQLite file used on the event loop: every call is one short statement, or one transaction for a
    batch; retention deletes ``delete_chunk`` rows a statement and yields between them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.delete_chunk = DELETE_CHUNK
        self._db: sqlite3.Connection | None = None
        self.text_indexed = False

    @classmethod
    def from_url(cls, url: str) -> SqliteLogStore:
        """``sqlite:///relative/logs.db``, or four slashes for an absolute path."""
        path = urlsplit(url).path[1:]
        if not path:
            raise ValueError(f"no database path in {url!r}: use sqlite:///path/logs.db")
        return cls(path)

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
            use_wal(db, 5.0)  # sqlite3.connect's own busy timeout
            db.executescript(_SCHEMA)
            self.text_indexed = _text_index(db)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        with self._conn() as db:
            db.execute("SELECT 1").fetchone()

    async def append(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        with self._conn() as db, db:  # the inner ``db`` commits the batch, or rolls it back
            # The UPDATE takes the write lock first, so the ids are given in the order batches commit.
            db.execute("UPDATE log_seq SET last = last + ?", (len(records),))
            first = db.execute("SELECT last FROM log_seq").fetchone()[0] - len(records) + 1
            db.executemany(
                "INSERT INTO logs (id, ts_us, service, level, message, meta, job_id, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(first + i, to_us(r.timestamp), r.service, r.level, r.message, orjson.dumps(r.meta).decode(),
                  meta_id(r.meta, "job_id"), meta_id(r.meta, "request_id")) for i, r in enumerate(records)],
            )
            if self.text_indexed:
                db.executemany("INSERT INTO logs_text (rowid, message) VALUES (?, ?)",
                               [(first + i, r.message) for i, r in enumerate(records)])

    def _where(self, where: LogFilter, *, text_index: bool = False) -> tuple[list[str], list[Any]]:
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
        if where.text is not None and text_index:
            clauses.append("id IN (SELECT rowid FROM logs_text WHERE logs_text MATCH ?)")
            params.append(_phrase(where.text))
        elif where.text is not None:  # SQLite's LIKE folds the case of ASCII letters only
            clauses.append("message LIKE ? ESCAPE '\\'")
            params.append(like_pattern(where.text))
        return clauses, params

    @staticmethod
    def _record(us: int, service: str, level: str, message: str, meta: str) -> LogRecord:
        return LogRecord(timestamp=from_us(us), service=service, level=level, message=message,
                         meta=orjson.loads(meta))

    def _rare(self, text: str) -> bool:
        """Whether the trigram index finds ``text`` at all, and in fewer than :data:`COMMON_TEXT` lines."""
        if not self.text_indexed or len(text) < TRIGRAM:
            return False
        with self._conn() as db:
            (found,) = db.execute("SELECT count(*) FROM (SELECT 1 FROM logs_text WHERE logs_text MATCH ? LIMIT ?)",
                                  (_phrase(text), COMMON_TEXT)).fetchone()
        return found < COMMON_TEXT

    async def query(self, where: LogFilter) -> list[LogRecord]:
        # A word in few lines: the lines the index names; a common one: the newest lines, until a page.
        indexed = where.text is not None and self._rare(where.text)
        clauses, params = self._where(where, text_index=indexed)
        # NOT INDEXED: with the index's few lines, look each up by id rather than walk another index.
        sql = "SELECT ts_us, service, level, message, meta FROM logs" + (" NOT INDEXED" if indexed else "")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY ts_us DESC, id DESC LIMIT ?"
        with self._conn() as db:
            rows = db.execute(sql, [*params, where.limit]).fetchall()
        return [self._record(*row) for row in rows]

    async def arrivals(self, where: LogFilter, after_seq: int) -> Arrivals:
        clauses, params = self._where(where)  # LIKE: on the few lines after ``after_seq``
        # NOT INDEXED: walk the ids down from the newest, however selective a filter's index looks; a
        # follower's ``after_seq`` is recent, so that is a short walk.
        sql = ("SELECT id, ts_us, service, level, message, meta FROM logs NOT INDEXED WHERE "
               + " AND ".join(["id > ?", *clauses]) + " ORDER BY id DESC LIMIT ?")
        with self._conn() as db:
            last = db.execute("SELECT last FROM log_seq").fetchone()[0]  # first: see Arrivals
            rows = db.execute(sql, [after_seq, *params, where.limit]).fetchall()
        return Arrivals([(seq, self._record(*rest)) for seq, *rest in rows], last)

    async def count(self) -> int:
        with self._conn() as db:
            return db.execute("SELECT count(*) FROM logs").fetchone()[0]

    async def delete_before(self, cutoff: datetime) -> int:
        return await self._delete_chunks("ts_us < ?", (to_us(cutoff),))

    async def keep_newest(self, rows: int) -> int:
        with self._conn() as db:
            # The newest record to delete; it and everything older in query order go.
            first = db.execute("SELECT ts_us, id FROM logs ORDER BY ts_us DESC, id DESC LIMIT 1 OFFSET ?",
                               (rows,)).fetchone()
        if first is None:
            return 0
        return await self._delete_chunks("ts_us < ? OR (ts_us = ? AND id <= ?)", (first[0], first[0], first[1]))

    async def _delete_chunks(self, condition: str, params: tuple[int, ...]) -> int:
        deleted = 0
        while True:
            with self._conn() as db, db:
                n = db.execute(f"DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE {condition} LIMIT ?)",
                               (*params, self.delete_chunk)).rowcount
            deleted += n
            if n < self.delete_chunk:
                return deleted
            await asyncio.sleep(0)  # let requests through between chunks
