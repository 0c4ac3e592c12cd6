"""Putting an SQLite file in WAL mode when other processes may open it at the same moment.

Every embedded store journals in WAL with ``synchronous=NORMAL`` (durable on SIGKILL, an fsync per
checkpoint rather than per commit). A file shared by several processes (the data store and the small
artifacts of every handler, a registry file the CLI opens too) is opened by all of them together when a
stack starts. Switching a new file to WAL takes the file's exclusive lock, and SQLite answers a second
connection asking for it meanwhile with "database is locked" at once: its busy timeout is not waited
out for that lock. Two handlers starting together could each stop with that error (seen in about one
``conveyor bench`` start in thirty). :func:`use_wal` asks again, a little later, until the timeout.
"""

from __future__ import annotations

import sqlite3
import time

#: The longest pause between two tries (a try is a few microseconds; the lock is held for about as long).
_MAX_PAUSE_S = 0.05


def use_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """Put ``db``'s file in WAL mode with ``synchronous=NORMAL``, trying again for up to ``timeout_s``
    while another connection holds the lock the switch needs (a no-op for a file already in WAL; an
    in-memory database keeps its ``memory`` journal). Other errors, and "locked" past the timeout, raise."""
    deadline = time.monotonic() + timeout_s
    pause_s = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause_s > deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, _MAX_PAUSE_S)
    db.execute("PRAGMA synchronous = NORMAL")
