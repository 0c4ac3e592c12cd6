"""The registry store contract for periodic schedules: one suite, run against every backend (memory, SQLite
file, PostgreSQL) through the ``store`` fixture of ``conftest.py``; and the compare-and-set that fires a
due time once, raced by several stores on one database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from registry.store import JobStore, store_from_url
from shared.schedules import Schedule

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def schedule(owner: str = "alice", **overrides: Any) -> Schedule:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(), "owner": owner, "kind": "acme.resize", "payload": {"width": 3, "note": "ünï ✓"},
        "every_s": 60.0, "timezone": "UTC", "priority": 5, "job_type": "acme.resize", "max_attempts": 2,
        "next_run_at": at(60), "created_at": at(0), "updated_at": at(0)}
    fields.update(overrides)
    return Schedule(**fields)


async def test_a_schedule_is_kept_as_it_was_made(store: JobStore) -> None:
    made = schedule(cron="*/5 * * * *", every_s=None, timezone="Europe/Paris",
                    next_run_at=datetime(2030, 1, 1, 0, 5, 0, 123456, tzinfo=timezone.utc))
    assert await store.create_schedule(made) is True
    got = await store.get_schedule(made.id)
    assert got is not None and got.model_dump() == made.model_dump()
    assert await store.get_schedule(uuid.uuid4()) is None


async def test_an_id_is_taken_once(store: JobStore) -> None:
    first = schedule()
    assert await store.create_schedule(first)
    assert await store.create_schedule(schedule(id=first.id, owner="bob")) is False
    got = await store.get_schedule(first.id)
    assert got is not None and got.owner == "alice"


async def test_lists_are_newest_first_by_owner_and_paged(store: JobStore) -> None:
    mine = [schedule(created_at=at(i)) for i in range(5)]
    theirs = schedule(owner="bob", created_at=at(2.5))
    for s in [*mine, theirs]:
        await store.create_schedule(s)
    page = await store.list_schedules(owner="alice", limit=2)
    assert [s.id for s in page.items] == [mine[4].id, mine[3].id] and page.next_cursor
    rest = await store.list_schedules(owner="alice", limit=10, cursor=page.next_cursor)
    assert [s.id for s in rest.items] == [mine[2].id, mine[1].id, mine[0].id] and rest.next_cursor is None
    everyone = await store.list_schedules(limit=10)
    assert [s.id for s in everyone.items] == [mine[4].id, mine[3].id, theirs.id, mine[2].id, mine[1].id, mine[0].id]
    assert (await store.list_schedules(owner="carol")).items == []


async def test_due_schedules_are_those_not_paused_at_or_before_now(store: JobStore) -> None:
    early, on_time, later = schedule(next_run_at=at(10)), schedule(next_run_at=at(20)), schedule(next_run_at=at(21))
    paused = schedule(next_run_at=at(5), paused=True)
    for s in (later, paused, on_time, early):
        await store.create_schedule(s)
    assert [s.id for s in await store.due_schedules(at(20))] == [early.id, on_time.id]
    assert [s.id for s in await store.due_schedules(at(20), limit=1)] == [early.id]
    assert await store.due_schedules(at(9)) == []


async def test_pause_and_resume(store: JobStore) -> None:
    s = schedule()
    await store.create_schedule(s)
    paused = await store.set_schedule_paused(s.id, True, None, at(30))
    assert paused is not None and paused.paused and paused.next_run_at == at(60) and paused.updated_at == at(30)
    assert await store.due_schedules(at(100)) == []
    assert await store.advance_schedule(s.id, at(60), at(60), at(120), at(100)) is None  # paused: no firing
    resumed = await store.set_schedule_paused(s.id, False, at(180), at(150))
    assert resumed is not None and not resumed.paused and resumed.next_run_at == at(180)
    assert await store.get_schedule(s.id) == resumed
    assert [d.id for d in await store.due_schedules(at(180))] == [s.id]
    assert await store.set_schedule_paused(uuid.uuid4(), True, None, at(1)) is None


async def test_advance_is_a_compare_and_set_on_next_run_at(store: JobStore) -> None:
    s = schedule()
    await store.create_schedule(s)
    moved = await store.advance_schedule(s.id, at(60), at(60), at(120), at(61))
    assert moved is not None
    assert (moved.next_run_at, moved.last_fired_at, moved.updated_at) == (at(120), at(60), at(61))
    assert await store.get_schedule(s.id) == moved
    # A second firer that read the same due time wins nothing and writes nothing.
    assert await store.advance_schedule(s.id, at(60), at(60), at(120), at(62)) is None
    assert await store.get_schedule(s.id) == moved
    assert await store.due_schedules(at(119)) == []
    assert await store.advance_schedule(uuid.uuid4(), at(60), at(60), at(120), at(62)) is None


async def test_delete(store: JobStore) -> None:
    s = schedule()
    await store.create_schedule(s)
    assert await store.delete_schedule(s.id) is True
    assert await store.delete_schedule(s.id) is False
    assert await store.get_schedule(s.id) is None
    assert await store.due_schedules(at(1000)) == []
    assert await store.advance_schedule(s.id, at(60), at(60), at(120), at(61)) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_of_many_stores_on_one_database_one_fires_each_due_time(backend: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path}/registry.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    stores = [store_from_url(url) for _ in range(4)]
    for opened in stores:
        await opened.open()
    try:
        s = schedule()
        await stores[0].create_schedule(s)
        for n in range(10):  # ten due times, each raced by four registries
            expected, following = at(60 * (n + 1)), at(60 * (n + 2))
            outcomes = await asyncio.gather(*(opened.advance_schedule(s.id, expected, expected, following, following)
                                              for opened in stores))
            assert sum(o is not None for o in outcomes) == 1
        final = await stores[3].get_schedule(s.id)
        assert final is not None and final.next_run_at == at(660) and final.last_fired_at == at(600)
    finally:
        for opened in stores:
            await opened.close()
