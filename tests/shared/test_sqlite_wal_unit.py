"""Embedded stores that several processes open at the same moment (:mod:`shared.sqlite_wal`).

Every handler of a stack opens the same data store and small-artifact files as it starts. Switching a new
file to WAL takes its exclusive lock, and SQLite tells a second process asking meanwhile "database is
locked" at once, whatever its busy timeout. Before :func:`~shared.sqlite_wal.use_wal`, about one
``conveyor bench`` start in thirty lost a handler that way; here four processes open each fresh file
together, many times over, and every one of them must get it open (the old code lost about one open in
eight).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from shared.artifacts.small import SmallBlobs
from shared.datastore.sqlite import SqliteDataStore
from shared.sqlite_wal import use_wal

PROCESSES = 4
ROUNDS = 12


def _open_at(kind: str, path: str, start: float, outcomes: multiprocessing.Queue) -> None:
    while time.time() < start:  # all the openers hit the new file in the same instant
        pass
    try:
        if kind == "datastore":
            store = SqliteDataStore(path)
            asyncio.run(store.open())
        else:
            SmallBlobs(Path(path))._conn()
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        outcomes.put(mode)
    except Exception as exc:  # the test reports what went wrong in the child
        outcomes.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["datastore", "small_artifacts"])
def test_processes_opening_a_new_file_together_all_get_it_in_wal(tmp_path: Path, kind: str) -> None:
    context = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"{kind}-{round_}.db")
        queue = context.Queue()
        start = time.time() + 0.2
        children = [context.Process(target=_open_at, args=(kind, path, start, queue)) for _ in range(PROCESSES)]
        for child in children:
            child.start()
        outcomes += [queue.get(timeout=30) for _ in children]
        for child in children:
            child.join(timeout=30)
    assert outcomes == ["wal"] * (PROCESSES * ROUNDS)


def test_a_lock_held_past_the_timeout_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # nobody may switch the journal while this lasts
    try:
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(other, 0.2)
        assert time.monotonic() - started >= 0.1  # it asked again before giving up
    finally:
        holder.execute("ROLLBACK")
    use_wal(other, 0.2)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_an_in_memory_database_keeps_its_memory_journal() -> None:
    db = sqlite3.connect(":memory:")
    use_wal(db, 1.0)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
