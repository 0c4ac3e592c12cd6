"""Putting an SQLite file in WAL mode when other processes may open it at the same moment.

Every embedded store journals in WAL with ``synchronous=NORMAL`` (durable on SIGKILL, an fsync per
checkpoint rather than per commit). A file shared by several processes (the data store and the small
artifacts of every handler, a registry file the CLI opens too) is opened by all of them together when a
stack starts. Switching a new file to WAL takes the file's exclusive lock, and SQLite answers a second
connection asking for it meanwhile with "database is locked" at once: its busy timeout is not waited
out for that lock. Two handlers starting together could each stop with that error (seen in about one
``conveyor bench`` start in thirty). :func:`use_wal` asks again, a little later, until the timeout.

A store whose commits are on a request's path (the registry's, the scheduler's, the handlers' small
artifacts) leaves its checkpoints to a :class:`Checkpointer`, a thread of its own, so that no request waits
for one.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from loguru import logger

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


#: The WAL pages past which a commit checkpoints by itself, as SQLite does at 1,000 without a
#: :class:`Checkpointer`: with one, only when the thread has fallen that far behind.
SAFETY_NET_PAGES = 10_000
#: How long a :class:`Checkpointer`'s thread waits for a commit before it ends.
IDLE_S = 30.0


class Checkpointer:
    """Checkpoints of one SQLite file in WAL mode, run by a thread of their own instead of by the commit
    that happens to cross ``wal_autocheckpoint``.

    A checkpoint copies the WAL's pages into the database file and syncs both: on this project's
    development machine, up to tens of milliseconds (a store alone, one-job commits: p99 of a commit 8.5–10
    ms with SQLite's own checkpoints, of which a commit is 0.27 ms at p50). Run by the commit, that time blocks
    the event loop and lands in the latency of the request that committed, and of every request behind it.

    Here a thread with a connection of its own runs ``PRAGMA wal_checkpoint(PASSIVE)``, which never waits for
    the writer nor makes it wait: the store calls :meth:`committed` after each commit, and the thread runs
    a checkpoint ``interval_s`` after the first commit it has not yet seen, with sqlite releasing the GIL
    while it copies and syncs. The thread ends after ``idle_s`` without a commit, and the next commit
    starts another: an idle store wakes nothing, and a store nobody closed leaves no thread behind. The store's own connection keeps
    ``wal_autocheckpoint`` at :data:`SAFETY_NET_PAGES`. SQLite starts the WAL over only when a transaction
    begins with every page of it in the file, which a store written without a pause does not leave the thread
    time for: there, the commit that crosses the net checkpoints what the thread has not (``interval_s`` of
    pages at most, then the syncs) and the WAL starts over, about once a second under full load instead of
    ten to fifteen times. So the WAL file grows to about 40 MB (10,000 pages) and stays that size.
    Durability is unchanged: a commit is in the WAL before it returns, and a checkpoint only moves pages
    from the WAL to the database file.
    """

    def __init__(self, path: str, *, interval_s: float = 0.1, busy_timeout_s: float = 5.0,
                 idle_s: float = IDLE_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.busy_timeout_s = busy_timeout_s
        self.idle_s = idle_s
        #: Checkpoints run, and the WAL's pages and how many of them were in the file after the last one.
        self.runs = 0
        self.last: tuple[int, int] = (0, 0)
        self.failures = 0
        self._enabled = False
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, store_connection: sqlite3.Connection) -> None:
        """Take the checkpoints over from ``store_connection`` (a file's, in WAL mode); a no-op for an
        in-memory database. The thread itself starts with the first commit."""
        if self.path == ":memory:":
            return
        store_connection.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_NET_PAGES}")
        self._stopping.clear()
        self._enabled = True

    def committed(self) -> None:
        """A commit happened: a checkpoint is due within ``interval_s`` (the thread started again if it
        had ended, idle)."""
        if not self._enabled:
            return
        if not self._pending.is_set():
            self._pending.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._enabled and (self._thread is None or not self._thread.is_alive()):
                    self._thread = threading.Thread(target=self._run, name=f"checkpoints {self.path}",
                                                    daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        """No more checkpoints from here: the thread ends (after the checkpoint under way, if one is). Safe
        twice."""
        with self._lock:
            self._enabled = False
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._pending.set()
        thread.join(timeout=self.busy_timeout_s + 30)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        db.execute("PRAGMA synchronous = NORMAL")  # a checkpoint syncs the same way under NORMAL and FULL
        try:
            # Ends after ``idle_s`` without a commit: an idle store keeps no thread (the next commit starts one).
            while self._pending.wait(self.idle_s):
                if self._stopping.wait(self.interval_s):
                    return
                self._pending.clear()
                self._checkpoint(db)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the file gone or unreadable: the commits' own net still holds
            self.failures += 1
            if self.failures == 1:
                logger.warning("background checkpoint of {} failed: {}", self.path, exc)
            return
        self.runs += 1
        if row is not None:
            self.last = (row[1], row[2])
