"""A job's ``priority`` and ``run_at`` on every registry backend (memory, SQLite, PostgreSQL: the ``store``
fixture of conftest.py): kept from its registration through every change, in lists and events; and a job
recorded before they existed reads as priority 0 with no time.

The job document holds them (no column: nothing selects or sorts jobs by them), so a database written
before needs no migration; the last tests take a stored document back to that shape by hand."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from registry.store import JobStore, store_from_url
from shared.contract import JobCreate, JobKind, JobState, JobUpdate

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
RUN_AT = T0 + timedelta(hours=2)


def spec(**fields: object) -> JobCreate:
    return JobCreate(kind=JobKind.TASK, type="task", owner="alice", **fields)  # type: ignore[arg-type]


async def test_priority_and_run_at_stay_with_the_job(store: JobStore) -> None:
    job, created = await store.create(spec(priority=-7, run_at=RUN_AT), T0)
    assert created and (job.priority, job.run_at) == (-7, RUN_AT)
    (other, _), = await store.create_many([spec(priority=100)], T0)

    moved, _ = await store.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), T0 + timedelta(hours=3))
    again = await store.get(job.id)
    assert again is not None and again.state == JobState.PROCESSING
    assert (moved.priority, moved.run_at) == (again.priority, again.run_at) == (-7, RUN_AT)
    assert (other.priority, other.run_at) == (100, None)
    page = await store.list(owner="alice")
    assert {(j.id, j.priority, j.run_at) for j in page.items} == {(job.id, -7, RUN_AT), (other.id, 100, None)}
    events = await store.events(job_id=job.id, after_seq=0, limit=10)
    assert [(e.job["priority"], e.job["run_at"]) for e in events] == [(-7, "2030-01-01T02:00:00Z")] * 2


async def test_an_idempotent_repeat_answers_the_first_jobs_schedule(store: JobStore) -> None:
    first, _ = await store.create(spec(idempotency_key="k", priority=1, run_at=RUN_AT), T0)
    repeat, created = await store.create(spec(idempotency_key="k", priority=50), T0)
    assert not created and (repeat.id, repeat.priority, repeat.run_at) == (first.id, 1, RUN_AT)


async def test_a_sqlite_job_recorded_before_priorities_reads_as_priority_zero(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    store = store_from_url(url)
    await store.open()
    job, _ = await store.create(spec(priority=5, run_at=RUN_AT), T0)
    await store.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE jobs SET doc = json_remove(doc, '$.priority', '$.run_at')")
    db.close()

    reopened = store_from_url(url)
    await reopened.open()
    try:
        old = await reopened.get(job.id)
        assert old is not None and (old.priority, old.run_at) == (0, None)
    finally:
        await reopened.close()


async def test_a_postgres_job_recorded_before_priorities_reads_as_priority_zero(postgres_url: str) -> None:
    store = store_from_url(postgres_url)
    await store.open()
    try:
        job, _ = await store.create(spec(priority=5, run_at=RUN_AT), T0)
        dsn, schema = postgres_url.split("?schema=")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"UPDATE \"{schema}\".jobs SET doc = doc - 'priority' - 'run_at'")
        finally:
            await conn.close()
        old = await store.get(job.id)
        assert old is not None and (old.priority, old.run_at) == (0, None)
    finally:
        await store.close()
