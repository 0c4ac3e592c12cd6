"""Checkpoints in a thread of their own (:class:`shared.sqlite_wal.Checkpointer`), for the registry's and the
scheduler's SQLite stores: a commit no longer copies the WAL into the database file itself, the thread
does, and what it copied is in the file alone (a copy of the file without its WAL has it)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from registry.store.sqlite import SqliteJobStore
from scheduler.store.sqlite import SqliteQueueStore
from shared.contract import JobCreate, QueuedJob, utcnow
from shared.sqlite_wal import SAFETY_NET_PAGES, Checkpointer


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def _file_alone(path: Path, into: Path) -> sqlite3.Connection:
    """The database file copied without its WAL: what the checkpoints put in it, nothing else."""
    shutil.copyfile(path, into)
    return sqlite3.connect(f"file:{into}?mode=ro", uri=True)


def _jobs(n: int) -> list[JobCreate]:
    return [JobCreate(kind="book", type="epub", payload={"bookId": f"b{i}", "type": "epub"}, owner="u1",
                      max_attempts=3) for i in range(n)]


async def test_the_registry_commits_and_its_thread_copies_into_the_file(tmp_path: Path) -> None:
    store = SqliteJobStore(str(tmp_path / "registry.db"))
    await store.open()
    try:
        db = store._db
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_NET_PAGES
        created = [job for job, _ in await store.create_many(_jobs(50), utcnow())]
        # Every page of the WAL in the file: the thread's doing, since no commit checkpoints under the net.
        await _wait_for(lambda: store.checkpoints.last[0] > 0
                        and store.checkpoints.last[0] == store.checkpoints.last[1])
        alone = _file_alone(tmp_path / "registry.db", tmp_path / "copy.db")
        ids = {row[0] for row in alone.execute("SELECT id FROM jobs")}
        alone.close()
        assert {str(job.id) for job in created} <= ids
    finally:
        await store.close()
    assert store.checkpoints._thread is None


async def test_the_scheduler_commits_and_its_thread_copies_into_the_file(tmp_path: Path) -> None:
    store = SqliteQueueStore(str(tmp_path / "scheduler.db"))
    await store.open()
    try:
        job = QueuedJob(id=uuid.uuid4(), kind="task", type="task", owner="u1")
        assert await store.enqueue("tasks", [job], utcnow()) == [True]
        await _wait_for(lambda: store.checkpoints.last[0] > 0
                        and store.checkpoints.last[0] == store.checkpoints.last[1])
        alone = _file_alone(tmp_path / "scheduler.db", tmp_path / "copy.db")
        queued = {row[0] for row in alone.execute("SELECT job_id FROM entries")}
        alone.close()
        assert str(job.id) in queued
    finally:
        await store.close()


def test_an_in_memory_store_has_no_thread() -> None:
    checkpoints = Checkpointer(":memory:")
    checkpoints.start(sqlite3.connect(":memory:"))
    assert checkpoints._thread is None
    checkpoints.committed()
    checkpoints.stop()


async def test_an_idle_thread_ends_and_the_next_commit_starts_another(tmp_path: Path) -> None:
    path = tmp_path / "idle.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    checkpoints = Checkpointer(str(path), interval_s=0.01, idle_s=0.05)
    checkpoints.start(db)
    try:
        assert checkpoints._thread is None  # nothing committed yet: no thread
        db.execute("CREATE TABLE t (x)")
        checkpoints.committed()
        first = checkpoints._thread
        assert first is not None
        await _wait_for(lambda: checkpoints.runs == 1)
        await _wait_for(lambda: not first.is_alive())  # idle for idle_s: it ended
        db.execute("INSERT INTO t VALUES (1)")
        checkpoints.committed()
        assert checkpoints._thread is not first
        await _wait_for(lambda: checkpoints.runs == 2 and checkpoints.last[0] == checkpoints.last[1] > 0)
    finally:
        checkpoints.stop()
        db.close()
    assert checkpoints._thread is None
    checkpoints.committed()  # after stop: nothing starts
    assert checkpoints._thread is None
