"""The small artifacts of a local store, in one SQLite file beside its files (``<root>/.small.db``).

A job's result is usually a few kilobytes (a book's PDF, an import's report). Creating a file for each costs
more than the job: an inode and a directory entry per job, on some disks hundreds of microseconds. Here the
small ones are rows of one table, and the writes one event loop makes at the same time go in one
transaction (a group commit), so a busy handler pays one commit for several jobs' results.

The file is shared by the processes of one machine (handlers write, receptionists read and expire), as the
registry's is: WAL, ``synchronous = NORMAL`` (a committed row survives its process being killed), and a busy
timeout for the moments two writers meet. Each process checkpoints the file from a thread of its own
(:class:`~shared.sqlite_wal.Checkpointer`), not in a commit its event loop waits for. Like the local store
itself, it is not for a network file system.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from shared.artifacts.base import ArtifactInfo
from shared.errors import Unavailable
from shared.sqlite_wal import Checkpointer, use_wal

#: Writes up to this size are rows; larger ones are files.
SMALL_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    data BLOB NOT NULL  -- last: a stat reads the row's first page only
);
CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at, key);
"""


class SmallBlobs:
    """Rows of ``(key, size, created_at, data)``, opened on first use. Every call runs on the event loop's
    thread: each is one indexed statement, quicker than a hop to a worker thread."""

    def __init__(self, path: Path, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        #: The file's checkpoints, off the event loop (the handler's reports wait behind a commit's).
        self.checkpoints = Checkpointer(str(path), busy_timeout_s=busy_timeout_s)
        self._pending: list[tuple[str, bytes, float, asyncio.Future[None]]] = []
        #: Transactions that wrote rows, and the rows they wrote (the group commit's figures).
        self.commits = 0
        self.rows_written = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s,
                                     check_same_thread=False)
                use_wal(db, self.busy_timeout_s)
                db.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise self._unavailable(exc) from exc
            self._db = db
            self.checkpoints.start(db)
        return self._db

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"the small-artifact database {self.path}: {exc}")

    def _exists(self) -> bool:
        return self._db is not None or self.path.exists()

    async def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key`` (replacing what was there); returns once it is committed, in one
        transaction with the other writes made during this turn of the event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((key, data, time.time(), done))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            self._write(lambda db: db.executemany(
                "INSERT OR REPLACE INTO blobs (key, size, created_at, data) VALUES (?, ?, ?, ?)",
                [(key, len(data), at, data) for key, data, at, _ in batch]))
        except Unavailable as exc:
            for *_, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        self.commits += 1
        self.rows_written += len(batch)
        for *_, done in batch:
            if not done.done():
                done.set_result(None)

    def _write(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                statements(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self.checkpoints.committed()

    def get(self, key: str) -> bytes | None:
        if not self._exists():
            return None
        row = self._query("SELECT data FROM blobs WHERE key = ?", (key,))
        return row[0] if row is not None else None

    def stat(self, key: str) -> ArtifactInfo | None:
        if not self._exists():
            return None
        row = self._query("SELECT size, created_at FROM blobs WHERE key = ?", (key,))
        return ArtifactInfo(key, row[0], row[1]) if row is not None else None

    def _query(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        try:
            row: tuple[object, ...] | None = self._conn().execute(sql, args).fetchone()
            return row
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the rows of ``keys`` that exist (one transaction; none when none of them is here)."""
        keys = [key for key in keys if self.stat(key) is not None]
        if keys:
            self._write(lambda db: db.executemany("DELETE FROM blobs WHERE key = ?", [(key,) for key in keys]))

    def older(self, cutoff: float, page: int = 1000) -> Iterable[ArtifactInfo]:
        """The rows written before ``cutoff``, oldest first, read a page at a time."""
        if not self._exists():
            return
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            try:
                rows = self._conn().execute(
                    "SELECT key, size, created_at FROM blobs WHERE created_at < ? AND (created_at, key) > (?, ?)"
                    " ORDER BY created_at, key LIMIT ?", (cutoff, *after, page)).fetchall()
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            for key, size, created_at in rows:
                yield ArtifactInfo(key, size, created_at)
            if len(rows) < page:
                return
            after = (rows[-1][2], rows[-1][0])

    def close(self) -> None:
        self.checkpoints.stop()
        if self._db is not None:
            self._db.close()
            self._db = None
