"""The registry store contract for jobs: one suite, run against every backend (memory, SQLite file, PostgreSQL)
through the ``store`` fixture of ``conftest.py``."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from registry.errors import StoreUnavailable
from registry.store import JobStore, store_from_url
from registry.store.memory import MemoryJobStore
from registry.store.paging import decode_cursor, encode_cursor
from registry.store.postgres import PostgresJobStore
from registry.store.sqlite import SqliteJobStore
from shared.contract import Job, JobCreate, JobKind, JobState, JobUpdate, TransitionRefused

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**overrides: Any) -> JobCreate:
    fields: dict[str, Any] = {"kind": JobKind.EXPORT, "type": "epub", "owner": "alice", "payload": {"bookId": "b1"}}
    fields.update(overrides)
    return JobCreate(**fields)


async def make(store: JobStore, *, now: datetime = T0, **overrides: Any) -> Job:
    job, created = await store.create(spec(**overrides), now)
    assert created
    return job


async def job_in(store: JobStore, state: JobState, **overrides: Any) -> Job:
    """A new job brought to ``state`` the way a handler would (attempt 1 for anything that ran)."""
    job = await make(store, **overrides)
    if state == JobState.PENDING:
        return job
    if state == JobState.CANCELLED:
        job, _ = await store.update(job.id, JobUpdate(attempt=0, state=JobState.CANCELLED), at(1))
        return job
    job, _ = await store.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(1))
    if state == JobState.FINISHED:
        job, _ = await store.update(job.id, JobUpdate(attempt=1, state=JobState.FINISHED, result={"pages": 3}), at(2))
    elif state == JobState.FAILED:
        job, _ = await store.update(job.id, JobUpdate(attempt=1, state=JobState.FAILED, error="boom"), at(2))
    assert job.state == state
    return job


async def all_events(store: JobStore, job_id: uuid.UUID | None = None) -> list[Any]:
    return await store.events(job_id=job_id, after_seq=0, limit=10_000)


def test_urls_choose_backends(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://"), MemoryJobStore)
    sqlite_store = store_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(sqlite_store, SqliteJobStore) and sqlite_store.path == f"{tmp_path}/x.db"
    assert SqliteJobStore.from_url("sqlite:///:memory:").path == ":memory:"
    assert SqliteJobStore.from_url("sqlite:///var/registry.db").path == "var/registry.db"
    pg = store_from_url("postgresql://u@db.example:5433/jobs?schema=t_one&sslmode=disable")
    assert isinstance(pg, PostgresJobStore)
    assert pg.schema == "t_one" and pg.dsn == "postgresql://u@db.example:5433/jobs?sslmode=disable"
    with pytest.raises(ValueError):
        PostgresJobStore.from_url("postgresql://u@h/db?schema=bad;name")
    with pytest.raises(ValueError):
        store_from_url("mysql://nope")


def test_cursor_round_trip_and_garbage() -> None:
    job_id = uuid.uuid4()
    assert decode_cursor(encode_cursor(at(1.5), job_id)) == (at(1.5), job_id)
    for garbage in ("", "!!!", "bm90IGpzb24", encode_cursor(at(1), job_id)[:-4]):
        with pytest.raises(ValueError):
            decode_cursor(garbage)


async def test_create_then_get(store: JobStore) -> None:
    job, created = await store.create(spec(request_id="r-1", max_attempts=3), T0)
    assert created
    assert (job.state, job.attempt, job.max_attempts, job.progress) == (JobState.PENDING, 0, 3, 0.0)
    assert job.created_at == job.updated_at == T0
    got = await store.get(job.id)
    assert got is not None
    assert got.model_dump() == job.model_dump()
    [event] = await all_events(store)
    assert (event.type, event.job_id, event.state, event.previous_state, event.at) == (
        "created", job.id, JobState.PENDING, None, T0)
    assert event.job == job.model_dump(mode="json")


async def test_unknown_id(store: JobStore) -> None:
    assert await store.get(uuid.uuid4()) is None
    with pytest.raises(KeyError):
        await store.update(uuid.uuid4(), JobUpdate(attempt=1, state=JobState.PROCESSING), T0)
    with pytest.raises(KeyError):
        await store.request_cancel(uuid.uuid4(), T0)


async def test_create_is_idempotent_on_id(store: JobStore) -> None:
    first = await make(store)
    again, created = await store.create(spec(id=first.id, payload={"bookId": "other"}), at(5))
    assert not created
    assert again.model_dump() == first.model_dump()
    assert len(await all_events(store)) == 1


async def test_idempotency_key_is_per_owner(store: JobStore) -> None:
    first = await make(store, idempotency_key="k-1")
    again, created = await store.create(spec(idempotency_key="k-1"), at(1))
    assert not created and again.id == first.id
    other, created = await store.create(spec(idempotency_key="k-1", owner="bob"), at(2))
    assert created and other.id != first.id and other.owner == "bob"
    unkeyed, created = await store.create(spec(), at(3))
    assert created and unkeyed.id not in (first.id, other.id)
    assert len(await all_events(store)) == 3


LEGAL = [
    pytest.param(JobState.PENDING, JobUpdate(attempt=1, state=JobState.PROCESSING), id="pending-processing"),
    pytest.param(JobState.PENDING, JobUpdate(attempt=0, state=JobState.CANCELLED), id="pending-cancelled"),
    pytest.param(JobState.PENDING, JobUpdate(attempt=0, state=JobState.FAILED, error="bad payload"),
                 id="pending-failed"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, state=JobState.PROCESSING, progress=0.5),
                 id="processing-progress"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, progress=0.25), id="processing-progress-no-state"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=2, state=JobState.PROCESSING), id="processing-takeover"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, state=JobState.PENDING, error="retry me"),
                 id="processing-pending-retry"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, state=JobState.FINISHED, result={"url": "x"}),
                 id="processing-finished"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, state=JobState.FAILED, error="crash"),
                 id="processing-failed"),
    pytest.param(JobState.PROCESSING, JobUpdate(attempt=1, state=JobState.CANCELLED), id="processing-cancelled"),
]


@pytest.mark.parametrize(("start", "update"), LEGAL)
async def test_legal_transitions(store: JobStore, start: JobState, update: JobUpdate) -> None:
    job = await job_in(store, start)
    before = len(await all_events(store, job.id))
    now = at(10)
    new, changed = await store.update(job.id, update, now)
    target = update.state or start
    assert changed
    assert (new.state, new.attempt, new.updated_at) == (target, update.attempt, now)
    assert (await store.get(job.id)).model_dump() == new.model_dump()
    events = await all_events(store, job.id)
    assert len(events) == before + 1
    assert (events[-1].type, events[-1].previous_state, events[-1].state) == ("updated", start, target)
    assert events[-1].job == new.model_dump(mode="json")
    if update.progress is not None:
        assert new.progress == update.progress
    if update.error is not None:
        assert new.error == update.error
        assert [(e.attempt, e.error) for e in new.errors] == [(update.attempt, update.error)]
    if target == JobState.FINISHED:
        assert (new.progress, new.result, new.finished_at) == (1.0, update.result, now)
    if target in (JobState.FAILED, JobState.CANCELLED):
        assert new.finished_at == now
    if target == JobState.PROCESSING and update.attempt > job.attempt:
        assert new.started_at == now


ILLEGAL = [
    pytest.param(JobState.PENDING, JobUpdate(attempt=0, state=JobState.FINISHED), id="pending-finished"),
    pytest.param(JobState.PENDING, JobUpdate(attempt=0, state=JobState.PENDING, progress=0.3), id="pending-pending"),
    pytest.param(JobState.FINISHED, JobUpdate(attempt=1, state=JobState.PROCESSING), id="finished-processing"),
    pytest.param(JobState.FINISHED, JobUpdate(attempt=1, state=JobState.FAILED, error="x"), id="finished-failed"),
    pytest.param(JobState.FINISHED, JobUpdate(attempt=2, state=JobState.FINISHED), id="finished-newer-finished"),
    pytest.param(JobState.FAILED, JobUpdate(attempt=1, state=JobState.PENDING), id="failed-pending"),
    pytest.param(JobState.FAILED, JobUpdate(attempt=2, state=JobState.PROCESSING), id="failed-processing"),
    pytest.param(JobState.CANCELLED, JobUpdate(attempt=1, state=JobState.PROCESSING), id="cancelled-processing"),
    pytest.param(JobState.CANCELLED, JobUpdate(attempt=0, state=JobState.FINISHED), id="cancelled-finished"),
]


@pytest.mark.parametrize(("start", "update"), ILLEGAL)
async def test_illegal_transitions_are_refused(store: JobStore, start: JobState, update: JobUpdate) -> None:
    job = await job_in(store, start)
    before = await all_events(store)
    with pytest.raises(TransitionRefused) as refused:
        await store.update(job.id, update, at(10))
    assert refused.value.current.model_dump() == job.model_dump()
    assert (await store.get(job.id)).model_dump() == job.model_dump()
    assert len(await all_events(store)) == len(before)


async def test_fencing_refuses_an_older_attempt(store: JobStore) -> None:
    job = await job_in(store, JobState.PROCESSING)
    taken_over, changed = await store.update(job.id, JobUpdate(attempt=2, state=JobState.PROCESSING), at(5))
    assert changed and taken_over.attempt == 2
    for stale in (JobUpdate(attempt=1, state=JobState.FINISHED, result={"from": "old"}),
                  JobUpdate(attempt=1, progress=0.9)):
        with pytest.raises(TransitionRefused) as refused:
            await store.update(job.id, stale, at(6))
        assert refused.value.current.attempt == 2
    current = await store.get(job.id)
    assert (current.state, current.attempt, current.result) == (JobState.PROCESSING, 2, None)
    done, changed = await store.update(job.id, JobUpdate(attempt=2, state=JobState.FINISHED, result={"from": "new"}),
                                       at(7))
    assert changed and done.result == {"from": "new"}


async def test_terminal_replay_is_accepted_once(store: JobStore) -> None:
    job = await job_in(store, JobState.FINISHED)
    events_before = await all_events(store, job.id)
    for replay in (JobUpdate(attempt=1, state=JobState.FINISHED, result={"pages": 3}),
                   JobUpdate(attempt=1, state=JobState.FINISHED, result={"pages": 999})):
        again, changed = await store.update(job.id, replay, at(20))
        assert not changed
        assert again.model_dump() == job.model_dump()
    assert (await store.get(job.id)).result == {"pages": 3}
    assert len(await all_events(store, job.id)) == len(events_before)
    assert [e.state for e in events_before].count(JobState.FINISHED) == 1


async def test_same_processing_report_is_a_replay(store: JobStore) -> None:
    job = await job_in(store, JobState.PROCESSING)
    again, changed = await store.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(9))
    assert not changed and again.updated_at == job.updated_at


async def test_list_filters(store: JobStore) -> None:
    made = [
        await job_in(store, JobState.PENDING, kind=JobKind.EXPORT, owner="alice", now=at(1)),
        await job_in(store, JobState.PROCESSING, kind=JobKind.IMPORT, type="word", owner="alice", now=at(2)),
        await job_in(store, JobState.FINISHED, kind=JobKind.EXPORT, type="pdf", owner="bob", now=at(3)),
        await job_in(store, JobState.PROCESSING, kind=JobKind.EXPORT, owner="bob", now=at(4)),
    ]

    async def ids(**filters: Any) -> list[uuid.UUID]:
        page = await store.list(**filters)
        assert page.next_cursor is None
        return [job.id for job in page.items]

    newest_first = [job.id for job in reversed(made)]
    assert await ids() == newest_first
    assert await ids(kind=JobKind.EXPORT) == [made[3].id, made[2].id, made[0].id]
    assert await ids(state=JobState.PROCESSING) == [made[3].id, made[1].id]
    assert await ids(owner="bob") == [made[3].id, made[2].id]
    assert await ids(kind=JobKind.EXPORT, state=JobState.PROCESSING, owner="bob") == [made[3].id]
    assert await ids(kind=JobKind.ECG) == []
    assert await ids(owner="carol") == []
    page = await store.list(state=JobState.FINISHED)
    assert page.items[0].model_dump() == (await store.get(made[2].id)).model_dump()


async def page_through(store: JobStore, limit: int, **filters: Any) -> list[list[uuid.UUID]]:
    pages: list[list[uuid.UUID]] = []
    cursor = None
    while True:
        page = await store.list(limit=limit, cursor=cursor, **filters)
        pages.append([job.id for job in page.items])
        if page.next_cursor is None:
            return pages
        assert len(page.items) == limit
        cursor = page.next_cursor
        assert len(pages) < 100, "pagination does not end"


async def test_pagination_has_no_duplicates_nor_gaps(store: JobStore) -> None:
    # Three jobs share each created_at, so the id breaks ties.
    made = [await make(store, owner="alice" if i % 2 else "bob", now=at(i // 3)) for i in range(25)]
    expected = [job.id for job in sorted(made, key=lambda job: (job.created_at, job.id), reverse=True)]

    pages = await page_through(store, 7)
    assert [len(page) for page in pages] == [7, 7, 7, 4]
    assert [job_id for page in pages for job_id in page] == expected

    # An exact multiple ends without an empty extra page.
    assert [len(page) for page in await page_through(store, 5)] == [5, 5, 5, 5, 5]

    alice = [job.id for job in sorted(made, key=lambda job: (job.created_at, job.id), reverse=True)
             if job.owner == "alice"]
    assert [job_id for page in await page_through(store, 4, owner="alice") for job_id in page] == alice


async def test_pagination_ignores_jobs_created_meanwhile(store: JobStore) -> None:
    made = [await make(store, now=at(i)) for i in range(6)]
    first = await store.list(limit=3)
    await make(store, now=at(100))  # newer than everything: belongs before page one, not in later pages
    rest = await store.list(limit=3, cursor=first.next_cursor)
    seen = [job.id for job in first.items + rest.items]
    assert seen == [job.id for job in reversed(made)]
    assert rest.next_cursor is None


async def test_count_by_state(store: JobStore) -> None:
    assert await store.count_by_state() == dict.fromkeys(JobState, 0)
    await job_in(store, JobState.PENDING)
    await job_in(store, JobState.PENDING, kind=JobKind.IMPORT, type="word")
    await job_in(store, JobState.PROCESSING)
    await job_in(store, JobState.FINISHED, kind=JobKind.IMPORT, type="word")
    await job_in(store, JobState.FAILED)
    counts = await store.count_by_state()
    assert counts == {JobState.PENDING: 2, JobState.PROCESSING: 1, JobState.FINISHED: 1, JobState.FAILED: 1,
                      JobState.CANCELLED: 0}
    assert await store.count_by_state(kind=JobKind.IMPORT) == {
        JobState.PENDING: 1, JobState.PROCESSING: 0, JobState.FINISHED: 1, JobState.FAILED: 0,
        JobState.CANCELLED: 0}
    assert await store.count_by_state(kind=JobKind.ECG) == dict.fromkeys(JobState, 0)


async def test_events_order_resume_and_per_job(store: JobStore) -> None:
    a = await make(store, now=at(1))
    b = await make(store, now=at(2))
    await store.update(a.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(3))
    await store.update(b.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(4))
    await store.update(a.id, JobUpdate(attempt=1, progress=0.5), at(5))
    await store.update(a.id, JobUpdate(attempt=1, state=JobState.FINISHED), at(6))

    events = await all_events(store)
    assert [(e.job_id, e.type, e.state, e.at) for e in events] == [
        (a.id, "created", JobState.PENDING, at(1)),
        (b.id, "created", JobState.PENDING, at(2)),
        (a.id, "updated", JobState.PROCESSING, at(3)),
        (b.id, "updated", JobState.PROCESSING, at(4)),
        (a.id, "updated", JobState.PROCESSING, at(5)),
        (a.id, "updated", JobState.FINISHED, at(6)),
    ]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.previous_state for e in events] == [None, None, JobState.PENDING, JobState.PENDING,
                                                  JobState.PROCESSING, JobState.PROCESSING]
    assert events[4].job["progress"] == 0.5
    assert events[-1].job == (await store.get(a.id)).model_dump(mode="json")

    assert await store.events(after_seq=seqs[2]) == events[3:]
    assert await store.events(after_seq=seqs[0], limit=2) == events[1:3]
    assert await store.events(after_seq=seqs[-1]) == []
    of_a = await all_events(store, a.id)
    assert of_a == [e for e in events if e.job_id == a.id]
    assert await store.events(job_id=a.id, after_seq=of_a[1].seq, limit=1) == [of_a[2]]
    assert await store.events(job_id=uuid.uuid4()) == []


async def test_events_of_one_owner_or_kind_and_the_last_seq(store: JobStore) -> None:
    assert await store.last_seq() == 0
    a = await make(store, now=at(1))
    b = await make(store, now=at(2), owner="bob")
    c = await make(store, now=at(3), owner="bob", kind=JobKind.TASK, type="task", payload={"description": "x"})
    await store.update(a.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(4))
    await store.update(c.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(5))
    events = await all_events(store)
    assert await store.last_seq() == events[-1].seq

    of_bob = await store.events(owner="bob")
    assert [(e.job_id, e.state) for e in of_bob] == [
        (b.id, JobState.PENDING), (c.id, JobState.PENDING), (c.id, JobState.PROCESSING)]
    assert await store.events(owner="bob", after_seq=of_bob[0].seq, limit=1) == [of_bob[1]]
    assert await store.events(owner="bob", after_seq=of_bob[-1].seq) == []
    assert await store.events(kind=JobKind.TASK) == [e for e in events if e.job_id == c.id]
    assert await store.events(owner="alice", kind=JobKind.TASK) == []
    assert await store.events(owner="alice", kind=JobKind.EXPORT) == [e for e in events if e.job_id == a.id]
    assert await store.events(job_id=c.id, owner="bob", after_seq=events[2].seq) == [events[-1]]
    assert await store.events(job_id=a.id, owner="bob") == []
    assert await store.events(owner="nobody") == []


async def test_request_cancel(store: JobStore) -> None:
    pending = await make(store)
    cancelled, changed = await store.request_cancel(pending.id, at(5))
    assert changed and cancelled.state == JobState.CANCELLED and cancelled.finished_at == at(5)
    again, changed = await store.request_cancel(pending.id, at(6))
    assert not changed and again.model_dump() == cancelled.model_dump()
    assert [e.state for e in await all_events(store, pending.id)] == [JobState.PENDING, JobState.CANCELLED]

    running = await job_in(store, JobState.PROCESSING)
    flagged, changed = await store.request_cancel(running.id, at(5))
    assert changed and flagged.state == JobState.PROCESSING and flagged.cancel_requested
    assert (await store.get(running.id)).cancel_requested
    events = len(await all_events(store, running.id))
    _, changed = await store.request_cancel(running.id, at(6))
    assert not changed and len(await all_events(store, running.id)) == events
    # The handler learns it and finishes the move.
    stopped, changed = await store.update(running.id, JobUpdate(attempt=1, state=JobState.CANCELLED), at(7))
    assert changed and stopped.state == JobState.CANCELLED

    for state in (JobState.FINISHED, JobState.FAILED):
        done = await job_in(store, state)
        with pytest.raises(TransitionRefused) as refused:
            await store.request_cancel(done.id, at(8))
        assert refused.value.current.state == state
        assert (await store.get(done.id)).state == state


async def test_concurrent_reports_finish_a_job_once(store: JobStore) -> None:
    job = await job_in(store, JobState.PROCESSING)
    reports = [JobUpdate(attempt=1, state=JobState.FINISHED, result={"n": i}) if i % 2
               else JobUpdate(attempt=1, state=JobState.FAILED, error=f"e{i}") for i in range(40)]
    outcomes = await asyncio.gather(*(store.update(job.id, report, at(10 + i)) for i, report in enumerate(reports)),
                                    return_exceptions=True)
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, TransitionRefused)]
    assert not unexpected
    changed = [o for o in outcomes if not isinstance(o, BaseException) and o[1]]
    assert len(changed) == 1
    winner = changed[0][0]
    assert winner.state in (JobState.FINISHED, JobState.FAILED)
    events = await all_events(store, job.id)
    assert [e.state for e in events].count(winner.state) == 1
    assert len(events) == 3  # created, processing, the one terminal move
    final = await store.get(job.id)
    assert final.model_dump() == winner.model_dump()


async def test_concurrent_creates_with_one_key_register_once(store: JobStore) -> None:
    outcomes = await asyncio.gather(*(store.create(spec(idempotency_key="same"), at(i)) for i in range(20)))
    assert sum(created for _, created in outcomes) == 1
    assert len({job.id for job, _ in outcomes}) == 1
    assert len((await store.list()).items) == 1


async def test_close_twice_is_harmless(store: JobStore) -> None:
    await store.ping()
    await store.close()
    await store.close()


async def test_sqlite_store_survives_a_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/registry.db"
    first = store_from_url(url)
    await first.open()
    job = (await first.create(spec(idempotency_key="k"), T0))[0]
    await first.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(1))
    last_seq = (await first.events())[-1].seq
    await first.close()

    second = store_from_url(url)
    await second.open()
    try:
        kept = await second.get(job.id)
        assert kept is not None and (kept.state, kept.attempt) == (JobState.PROCESSING, 1)
        again, created = await second.create(spec(idempotency_key="k"), at(2))
        assert not created and again.id == job.id
        await second.update(job.id, JobUpdate(attempt=1, state=JobState.FINISHED), at(3))
        events = await second.events()
        assert [e.state for e in events] == [JobState.PENDING, JobState.PROCESSING, JobState.FINISHED]
        assert events[-1].seq > last_seq
    finally:
        await second.close()


async def test_sqlite_in_memory_url_works() -> None:
    in_memory = store_from_url("sqlite:///:memory:")
    await in_memory.open()
    try:
        job = await make(in_memory)
        assert (await in_memory.get(job.id)).model_dump() == job.model_dump()
    finally:
        await in_memory.close()


async def test_unreachable_postgres_is_store_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        unreachable = PostgresJobStore.from_url(f"postgresql://postgres@127.0.0.1:{port}/none")
        with pytest.raises(StoreUnavailable):
            await unreachable.open()


async def test_update_many_judges_each_update_on_its_own(store: JobStore) -> None:
    running = await make(store)
    await store.update(running.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(1))
    pending = await make(store)
    unknown = uuid.uuid4()
    outcomes = await store.update_many([
        (running.id, JobUpdate(attempt=1, state=JobState.FINISHED)),
        (pending.id, JobUpdate(attempt=1, state=JobState.FINISHED)),  # pending cannot finish: refused
        (unknown, JobUpdate(attempt=1, state=JobState.PROCESSING)),
        (pending.id, JobUpdate(attempt=1, state=JobState.PROCESSING)),
        (running.id, JobUpdate(attempt=1, state=JobState.FINISHED)),  # a replay of the first
    ], at(2))
    assert [type(o).__name__ for o in outcomes] == ["tuple", "TransitionRefused", "KeyError", "tuple", "tuple"]
    assert outcomes[0][0].state == JobState.FINISHED and outcomes[0][1] is True
    assert outcomes[3][0].state == JobState.PROCESSING and outcomes[4][1] is False
    assert (await store.get(running.id)).state == JobState.FINISHED
    assert (await store.get(pending.id)).state == JobState.PROCESSING
    events = [e for e in await all_events(store) if e.type == "updated"]
    assert [(e.job_id, e.state) for e in events] == [
        (running.id, JobState.PROCESSING), (running.id, JobState.FINISHED), (pending.id, JobState.PROCESSING)]


async def test_redrive_gives_a_failed_job_another_chance(store: JobStore) -> None:
    failed = await job_in(store, JobState.FAILED, max_attempts=2)
    events_before = len(await all_events(store, failed.id))
    redriven, changed = await store.redrive(failed.id, 3, at(10))
    assert changed
    assert (redriven.state, redriven.max_attempts, redriven.error, redriven.finished_at) == (
        JobState.PENDING, 5, None, None)
    # attempt and the error history stay: the next attempt is numbered above every earlier one.
    assert redriven.attempt == failed.attempt == 1
    assert [(e.attempt, e.error) for e in redriven.errors] == [(1, "boom")]
    assert (redriven.updated_at, redriven.created_at, redriven.started_at) == (at(10), T0, failed.started_at)
    assert (await store.get(failed.id)).model_dump() == redriven.model_dump()
    events = await all_events(store, failed.id)
    assert len(events) == events_before + 1
    assert (events[-1].type, events[-1].previous_state, events[-1].state, events[-1].at) == (
        "updated", JobState.FAILED, JobState.PENDING, at(10))
    assert events[-1].job == redriven.model_dump(mode="json")
    assert await store.count_by_state() == {JobState.PENDING: 1, JobState.PROCESSING: 0, JobState.FINISHED: 0,
                                            JobState.FAILED: 0, JobState.CANCELLED: 0}

    # Redriving it again while it waits changes nothing.
    again, changed = await store.redrive(failed.id, 3, at(11))
    assert not changed and again.model_dump() == redriven.model_dump()
    assert len(await all_events(store, failed.id)) == events_before + 1

    # Fencing still holds: the old attempt is refused, the next one runs and its error joins the history.
    with pytest.raises(TransitionRefused):
        await store.update(failed.id, JobUpdate(attempt=0, state=JobState.PROCESSING), at(12))
    await store.update(failed.id, JobUpdate(attempt=2, state=JobState.PROCESSING), at(12))
    failed_again, _ = await store.update(failed.id, JobUpdate(attempt=2, state=JobState.FAILED, error="again"),
                                         at(13))
    assert [(e.attempt, e.error) for e in failed_again.errors] == [(1, "boom"), (2, "again")]
    assert failed_again.finished_at == at(13)
    twice, changed = await store.redrive(failed.id, 1, at(14))
    assert changed and (twice.state, twice.attempt, twice.max_attempts) == (JobState.PENDING, 2, 6)


async def test_redrive_clears_a_cancel_request_left_from_before_the_failure(store: JobStore) -> None:
    job = await job_in(store, JobState.PROCESSING)
    await store.request_cancel(job.id, at(2))
    failed, _ = await store.update(job.id, JobUpdate(attempt=1, state=JobState.FAILED, error="crash"), at(3))
    assert failed.cancel_requested
    redriven, changed = await store.redrive(job.id, 1, at(4))
    assert changed and not redriven.cancel_requested
    assert not (await store.get(job.id)).cancel_requested


@pytest.mark.parametrize("state", [JobState.PROCESSING, JobState.FINISHED, JobState.CANCELLED])
async def test_redrive_refuses_jobs_that_did_not_fail(store: JobStore, state: JobState) -> None:
    job = await job_in(store, state)
    before = await all_events(store)
    with pytest.raises(TransitionRefused) as refused:
        await store.redrive(job.id, 3, at(10))
    assert refused.value.current.model_dump() == job.model_dump()
    assert (await store.get(job.id)).model_dump() == job.model_dump()
    assert len(await all_events(store)) == len(before)


async def test_redrive_of_unknown_job_or_with_no_extra_attempt(store: JobStore) -> None:
    with pytest.raises(KeyError):
        await store.redrive(uuid.uuid4(), 3, T0)
    failed = await job_in(store, JobState.FAILED)
    for extra in (0, -1):
        with pytest.raises(ValueError):
            await store.redrive(failed.id, extra, at(10))
    assert (await store.get(failed.id)).model_dump() == failed.model_dump()


async def test_list_updated_before(store: JobStore) -> None:
    old = await make(store, now=at(1))
    mid = await make(store, now=at(2))
    touched = await make(store, now=at(3))
    await store.update(touched.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(10))
    recent = await make(store, now=at(5))

    async def ids(**filters: Any) -> list[uuid.UUID]:
        return [job.id for job in (await store.list(**filters)).items]

    # Strictly before: a job updated at the very moment is not included.
    assert await ids(updated_before=at(2)) == [old.id]
    assert await ids(updated_before=at(5)) == [mid.id, old.id]
    assert await ids(updated_before=at(5) + timedelta(microseconds=1)) == [recent.id, mid.id, old.id]
    assert await ids(updated_before=at(6)) == [recent.id, mid.id, old.id]
    assert await ids(updated_before=at(11)) == [recent.id, touched.id, mid.id, old.id]
    assert await ids(updated_before=at(11), state=JobState.PENDING) == [recent.id, mid.id, old.id]
    assert await ids(updated_before=at(11), state=JobState.PROCESSING) == [touched.id]
    assert await ids(updated_before=at(0)) == []
    # Another time zone names the same moment.
    assert await ids(updated_before=at(5).astimezone(timezone(timedelta(hours=-7)))) == [mid.id, old.id]


async def test_list_created_after(store: JobStore) -> None:
    jobs = [await make(store, now=at(i)) for i in range(6)]
    await store.update(jobs[4].id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(10))

    async def ids(**filters: Any) -> list[uuid.UUID]:
        return [job.id for job in (await store.list(**filters)).items]

    newest_first = [job.id for job in reversed(jobs)]
    # At that moment or later: a job created at the very moment is included.
    assert await ids(created_after=at(3)) == newest_first[:3]
    assert await ids(created_after=at(3) + timedelta(microseconds=1)) == newest_first[:2]
    assert await ids(created_after=at(0)) == newest_first
    assert await ids(created_after=at(6)) == []
    assert await ids(created_after=at(3).astimezone(timezone(timedelta(hours=5)))) == newest_first[:3]
    assert await ids(created_after=at(2), state=JobState.PENDING) == [jobs[5].id, jobs[3].id, jobs[2].id]
    assert await ids(created_after=at(2), state=JobState.PROCESSING, owner=jobs[4].owner) == [jobs[4].id]
    # With a cursor (created_before's start), a window; its pages end where the window does.
    start = encode_cursor(at(5), uuid.UUID(int=0))
    assert await ids(created_after=at(1), cursor=start) == newest_first[1:5]
    pages = await page_through(store, 3, created_after=at(1))
    assert [len(page) for page in pages] == [3, 2]
    assert [job_id for page in pages for job_id in page] == newest_first[:5]


async def test_sweep_query_pages_through_stale_pending_jobs(store: JobStore) -> None:
    stale = [await make(store, now=at(i)) for i in range(9)]
    for job in stale[::3]:  # picked up since: no longer pending
        await store.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), at(20))
    fresh = [await make(store, now=at(30 + i)) for i in range(2)]
    expected = [job.id for job in reversed(stale) if job not in stale[::3]]
    pages = await page_through(store, 4, state=JobState.PENDING, updated_before=at(25))
    assert [len(page) for page in pages] == [4, 2]
    assert [job_id for page in pages for job_id in page] == expected
    assert not {job.id for job in fresh} & {job_id for page in pages for job_id in page}


async def test_list_cancel_requested(store: JobStore) -> None:
    flagged = await job_in(store, JobState.PROCESSING, now=at(1))
    await store.request_cancel(flagged.id, at(5))
    running = await job_in(store, JobState.PROCESSING, now=at(2))
    pending = await make(store, now=at(3))
    cancelled = await make(store, now=at(4))
    await store.request_cancel(cancelled.id, at(5))  # pending: cancelled at once, never flagged

    async def ids(**filters: Any) -> list[uuid.UUID]:
        return [job.id for job in (await store.list(**filters)).items]

    assert await ids(cancel_requested=True) == [flagged.id]
    assert await ids(cancel_requested=False) == [cancelled.id, pending.id, running.id]
    assert await ids(cancel_requested=True, state=JobState.PROCESSING) == [flagged.id]
    assert await ids(cancel_requested=False, state=JobState.PROCESSING) == [running.id]
    assert await ids(cancel_requested=True, state=JobState.PENDING) == []
    assert await ids(cancel_requested=True, updated_before=at(5)) == []
    assert await ids(cancel_requested=True, updated_before=at(6)) == [flagged.id]


async def test_create_many_is_create_for_each(store: JobStore) -> None:
    existing = await make(store, idempotency_key="k-1")
    fresh, repeat, other = spec(), spec(idempotency_key="k-1"), spec(owner="someone-else", idempotency_key="k-1")
    outcomes = await store.create_many([fresh, repeat, other, fresh], at(1))
    assert [created for _, created in outcomes] == [True, False, True, False]
    assert outcomes[0][0].id == fresh.id == outcomes[3][0].id
    assert outcomes[1][0].id == existing.id and outcomes[2][0].id == other.id
    assert [e.type for e in await all_events(store)].count("created") == 3


async def test_update_many_applies_one_jobs_updates_in_their_order(store: JobStore) -> None:
    job = await make(store)
    other = await make(store)
    outcomes = await store.update_many([
        (job.id, JobUpdate(attempt=1, state=JobState.PROCESSING)),
        (other.id, JobUpdate(attempt=1, state=JobState.PROCESSING)),
        (job.id, JobUpdate(attempt=1, progress=0.5)),
        (job.id, JobUpdate(attempt=1, state=JobState.FINISHED, result={"pages": 2})),
        (job.id, JobUpdate(attempt=1, state=JobState.FAILED, error="late")),  # already finished: refused
    ], at(1))
    assert [o[0].state if isinstance(o, tuple) else type(o).__name__ for o in outcomes] == [
        JobState.PROCESSING, JobState.PROCESSING, JobState.PROCESSING, JobState.FINISHED, "TransitionRefused"]
    assert outcomes[2][0].progress == 0.5 and outcomes[4].current.state == JobState.FINISHED
    final = await store.get(job.id)
    assert final.model_dump() == outcomes[3][0].model_dump() and final.result == {"pages": 2}
    events = [e for e in await all_events(store) if e.type == "updated"]
    assert [(e.job_id, e.state, e.job["progress"]) for e in events] == [
        (job.id, JobState.PROCESSING, 0.0), (other.id, JobState.PROCESSING, 0.0), (job.id, JobState.PROCESSING, 0.5),
        (job.id, JobState.FINISHED, 1.0)]
    assert events[-1].job == final.model_dump(mode="json")


async def test_create_many_judges_each_against_what_came_before_it(store: JobStore) -> None:
    held = await make(store, idempotency_key="held")
    taken = spec(idempotency_key="held")  # meets the existing job by its key ...
    later = spec(id=taken.id)  # ... and its id is free, so this one is registered after it
    first, again = spec(idempotency_key="mine"), spec(idempotency_key="mine")  # the same key twice
    outcomes = await store.create_many([taken, later, first, again], at(1))
    assert [(job.id, created) for job, created in outcomes] == [
        (held.id, False), (taken.id, True), (first.id, True), (first.id, False)]
    assert (await store.get(taken.id)).model_dump() == outcomes[1][0].model_dump()
    assert await store.get(again.id) is None
    created = [e.job_id for e in await all_events(store) if e.type == "created"]
    assert created == [held.id, taken.id, first.id]


async def test_batches_larger_than_one_statement_take_every_job_in_order(store: JobStore) -> None:
    # The embedded store writes a batch a chunk of jobs a statement (registry.store.sqlite_batches.CHUNK).
    specs = [spec(idempotency_key=f"k-{i}") for i in range(250)]
    made = await store.create_many([*specs, specs[7]], at(1))
    assert [created for _, created in made] == [True] * 250 + [False]
    assert made[250][0].id == specs[7].id
    updates = [(s.id, JobUpdate(attempt=1, state=JobState.PROCESSING)) for s in reversed(specs)]
    moved = await store.update_many([*updates, (uuid.uuid4(), JobUpdate(attempt=1, state=JobState.PROCESSING))],
                                    at(2))
    assert [o[0].id for o in moved[:250]] == [s.id for s in reversed(specs)] and isinstance(moved[250], KeyError)
    events = await all_events(store)
    assert [e.job_id for e in events if e.type == "created"] == [s.id for s in specs]
    assert [e.job_id for e in events if e.type == "updated"] == [s.id for s in reversed(specs)]
    assert all(j.state == JobState.PROCESSING for j in (await store.list(limit=300)).items)


async def test_an_owner_with_a_nul_owns_nothing(store: JobStore) -> None:
    """An operator's ``GET /jobs?owner=`` is the client's text: one with a NUL (no user's id has one) finds
    no job on every backend; PostgreSQL's text cannot hold it, and asking with it was a 500."""
    await make(store, owner="alice")
    for owner in ("alice\x00", "\x00"):
        assert (await store.list(owner=owner)).items == []
        assert (await store.list(owner=owner, kind=JobKind.EXPORT, state=JobState.PENDING)).items == []
        assert await store.events(owner=owner, after_seq=0) == []
    assert len((await store.list(owner="alice")).items) == 1
