"""The queue store contract suite, continued: priorities and delayed jobs (``run_at``), on every backend
(memory, SQLite, Redis: the ``store`` fixture of conftest.py), and stores written before priorities.

Order (scheduler/store/base.py): among the entries due at ``now``, the highest priority first, then FIFO
(``seq``); an entry is due at ``max(enqueue time, run_at)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from scheduler.store import QueueStore, store_from_url
from scheduler.store.sqlite import SqliteQueueStore
from shared.contract import QueuedJob
from tests.scheduler.test_queue_store_contract import at, make_job


def job(priority: int = 0, run_at: float | None = None, **retry: Any) -> QueuedJob:
    return make_job(**retry).model_copy(update={"priority": priority,
                                                "run_at": None if run_at is None else at(run_at)})


async def ids(store: QueueStore, queues: list[str], max_jobs: int, now: float) -> list[Any]:
    return [d.job.id for d in await store.dequeue(queues, max_jobs, 30.0, at(now))]


async def test_higher_priority_first_and_fifo_within_a_priority(store: QueueStore) -> None:
    low1, mid1, high1, mid2, high2, low2 = job(-5), job(0), job(10), job(0), job(10), job(-5)
    await store.enqueue("a", [low1, mid1, high1], at(0))
    await store.enqueue("a", [mid2, high2, low2], at(1))

    assert await ids(store, ["a"], 3, 2) == [high1.id, high2.id, mid1.id]
    assert await ids(store, ["a"], 10, 2) == [mid2.id, low1.id, low2.id]


async def test_priorities_compare_across_the_asked_queues(store: QueueStore) -> None:
    a_low, b_high, a_high, c_top = job(0), job(3), job(3), job(100)
    await store.enqueue("a", [a_low], at(0))
    await store.enqueue("b", [b_high], at(1))
    await store.enqueue("a", [a_high], at(2))
    await store.enqueue("c", [c_top], at(0))

    assert await ids(store, ["a", "b"], 10, 3) == [b_high.id, a_high.id, a_low.id]
    assert await ids(store, ["c"], 10, 3) == [c_top.id]


async def test_the_extreme_priorities_keep_their_order(store: QueueStore) -> None:
    lowest, highest, zero = job(-100), job(100), job(0)
    await store.enqueue("a", [lowest, highest, zero], at(0))

    assert await ids(store, ["a"], 10, 0) == [highest.id, zero.id, lowest.id]


async def test_a_delayed_job_waits_for_its_run_at(store: QueueStore) -> None:
    delayed, now = job(run_at=10), job()
    assert await store.enqueue("a", [delayed, now], at(0)) == [True, True]

    assert await store.states([delayed.id, now.id], at(1)) == {delayed.id: "delayed", now.id: "ready"}
    assert await ids(store, ["a"], 10, 1) == [now.id]
    assert await store.next_ready_at(["a"]) == at(10)
    assert await ids(store, ["a"], 10, 9.999) == []
    assert await store.states([delayed.id], at(10)) == {delayed.id: "ready"}
    (delivery,) = await store.dequeue(["a"], 10, 30.0, at(10))
    assert (delivery.job, delivery.attempt) == (delayed, 1)


async def test_a_run_at_in_the_past_means_now(store: QueueStore) -> None:
    late = job(run_at=-100)
    await store.enqueue("a", [late], at(5))

    assert await store.next_ready_at(["a"]) == at(5)
    assert await ids(store, ["a"], 1, 4) == []  # not before it was enqueued, as any entry
    assert (await store.stats(at(7)))["a"].oldest_ready_age_s == pytest.approx(2.0)
    assert await ids(store, ["a"], 1, 7) == [late.id]


async def test_a_high_priority_job_due_later_does_not_jump_ahead_before_it_is_due(store: QueueStore) -> None:
    low1, low2, low3 = job(0), job(0), job(0)
    urgent = job(50, run_at=10)
    await store.enqueue("a", [low1, urgent, low2, low3], at(0))

    assert await ids(store, ["a"], 1, 5) == [low1.id]
    assert await ids(store, ["a"], 1, 9) == [low2.id]
    # Due now: it competes by its priority, ahead of the low job queued before it became due.
    assert await ids(store, ["a"], 10, 10) == [urgent.id, low3.id]


async def test_delayed_jobs_join_their_priority_when_they_fall_due(store: QueueStore) -> None:
    later_low, later_high, soon_low, ready_mid, ready_low = job(0, run_at=20), job(9, run_at=30), job(0, run_at=10), \
        job(5), job(0)
    await store.enqueue("a", [later_low, later_high, soon_low, ready_mid], at(0))
    await store.enqueue("a", [ready_low], at(15))

    # Within a priority, by the time each became ready: 10, 15, 20.
    assert await ids(store, ["a"], 10, 40) == [later_high.id, ready_mid.id, soon_low.id, ready_low.id, later_low.id]


async def test_retries_keep_their_priority(store: QueueStore) -> None:
    high, low1, low2 = job(7, max_attempts=3), job(0), job(0)
    await store.enqueue("a", [high], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    await store.enqueue("a", [low1, low2], at(1))

    outcome = await store.nack(high.id, delivery.lease_id, at(1), "flaky", delay_s=5)

    assert outcome.ready_at == at(6)
    assert await store.states([high.id], at(2)) == {high.id: "delayed"}
    assert await ids(store, ["a"], 1, 2) == [low1.id]
    (retry,) = await store.dequeue(["a"], 1, 30.0, at(6))  # due again: ahead of the low job still waiting
    assert (retry.job.id, retry.job.priority, retry.attempt) == (high.id, 7, 2)


async def test_expired_and_released_leases_keep_their_priority(store: QueueStore) -> None:
    expiring, releasing, low = job(4), job(2), job(0)
    await store.enqueue("a", [expiring, releasing], at(0))
    taken = {d.job.id: d for d in await store.dequeue(["a"], 2, 10.0, at(0))}
    await store.enqueue("a", [low], at(1))

    await store.release(releasing.id, taken[releasing.id].lease_id, at(2))
    assert [e.job_id for e in await store.expire_leases(at(10))] == [expiring.id]

    assert await ids(store, ["a"], 10, 11) == [expiring.id, releasing.id, low.id]


async def test_stats_lengths_and_states_count_delayed_submissions(store: QueueStore) -> None:
    ready, soon, later = job(), job(run_at=30), job(5, run_at=60)
    await store.enqueue("a", [ready, soon, later], at(0))

    stats = (await store.stats(at(1)))["a"]
    assert (stats.ready, stats.delayed, stats.leased, stats.enqueued) == (1, 2, 0, 3)
    assert stats.oldest_ready_age_s == pytest.approx(1.0)
    assert await store.lengths() == {"a": 3}
    assert await store.states([ready.id, soon.id, later.id], at(1)) == {
        ready.id: "ready", soon.id: "delayed", later.id: "delayed"}

    assert await ids(store, ["a"], 10, 1) == [ready.id]
    stats = (await store.stats(at(31)))["a"]
    assert (stats.ready, stats.delayed, stats.leased) == (1, 1, 1)
    assert stats.oldest_ready_age_s == pytest.approx(1.0)
    assert await store.next_ready_at(["a"]) == at(30)


async def test_delayed_entries_can_be_removed_cancelled_and_requeued(store: QueueStore) -> None:
    removed, cancelled = job(run_at=30), job(3, run_at=30)
    await store.enqueue("a", [removed, cancelled], at(0))

    assert await store.remove(removed.id) is True
    assert await store.cancel(cancelled.id) == "removed"
    assert await store.lengths() == {"a": 0}
    assert await store.next_ready_at(["a"]) is None
    assert await ids(store, ["a"], 10, 60) == []
    # Forgotten whole: the same id queued again is a new entry, ready at once (its run_at is past).
    assert await store.enqueue("a", [removed], at(40)) == [True]
    assert await ids(store, ["a"], 10, 40) == [removed.id]


async def test_a_redriven_job_keeps_its_priority_at_the_tail_of_it(store: QueueStore) -> None:
    doomed, other_high, low = job(6, max_attempts=1), job(6), job(0)
    await store.enqueue("a", [doomed], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    assert (await store.nack(doomed.id, delivery.lease_id, at(1), "fatal")).dead
    await store.enqueue("a", [low, other_high], at(2))

    assert await store.redrive([doomed.id], None, at(3)) == 1

    assert await ids(store, ["a"], 10, 4) == [other_high.id, doomed.id, low.id]


async def test_sqlite_opens_a_file_written_before_priorities(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    first, second, retried = make_job(), make_job(), make_job()
    store = store_from_url(f"sqlite:///{path}")
    await store.open()
    await store.enqueue("a", [retried, first, second], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    await store.nack(retried.id, delivery.lease_id, at(0), "flaky", delay_s=50)
    await store.close()
    # Take the file back to the schema before priorities: no column, its index gone, every waiting entry
    # 'ready' (a retry's future ready_at in it).
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX entries_priority")
        db.execute("ALTER TABLE entries DROP COLUMN priority")
        db.execute("UPDATE entries SET state = 'ready' WHERE state = 'delayed'")
    db.close()

    reopened = store_from_url(f"sqlite:///{path}")
    await reopened.open()
    try:
        urgent = job(1)
        await reopened.enqueue("a", [urgent], at(1))
        assert await reopened.states([retried.id], at(2)) == {retried.id: "delayed"}
        assert await ids(reopened, ["a"], 1, 2) == [urgent.id]
        assert await ids(reopened, ["a"], 10, 49) == [first.id, second.id]
        assert await ids(reopened, ["a"], 10, 50) == [retried.id]
    finally:
        await reopened.close()


async def test_redis_keeps_the_entries_of_a_store_written_before_priorities(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = store_from_url(redis_url)
    await store.open()
    first, second, retried = make_job(), make_job(), make_job()
    await store.enqueue("a", [retried, first, second], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    await store.nack(retried.id, delivery.lease_id, at(0), "flaky", delay_s=50)
    await store.close()
    # Take the keys back to the layout before priorities: one sorted set of ready and delayed entries by
    # ready_at, and no priority in the entries.
    prefix = redis_url.rsplit("prefix=", 1)[1]
    client = aioredis.from_url(redis_url.split("?", 1)[0])
    try:
        await client.delete(f"{prefix}:due:a", f"{prefix}:later:a")
        for entry in (first, second, retried):
            await client.hdel(f"{prefix}:job:{entry.id}", "priority")
    finally:
        await client.aclose()

    reopened = store_from_url(redis_url)
    await reopened.open()
    try:
        urgent = job(1)
        await reopened.enqueue("a", [urgent], at(1))
        assert await reopened.lengths() == {"a": 4}
        assert await ids(reopened, ["a"], 1, 2) == [urgent.id]
        assert await ids(reopened, ["a"], 10, 49) == [first.id, second.id]
        assert await ids(reopened, ["a"], 10, 50) == [retried.id]
    finally:
        await reopened.close()


async def test_run_at_keeps_its_microseconds(store: QueueStore) -> None:
    second, first = job(run_at=10.000002), job(run_at=10.000001)
    await store.enqueue("a", [second, first], at(0))

    assert await ids(store, ["a"], 10, 10.000001) == [first.id]
    assert await ids(store, ["a"], 10, 11) == [second.id]


def test_sqlite_dequeues_off_the_priority_index(tmp_path: Path) -> None:
    from scheduler.store.sqlite import _DUE, _PROMOTE

    async def plans() -> list[str]:
        sqlite_store = SqliteQueueStore(str(tmp_path / "scheduler.db"))
        await sqlite_store.open()
        try:
            db = sqlite_store._conn()
            return [" ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
                    for sql, args in ((_DUE, ("a", 0.0, 10)), (_PROMOTE, ("a", 0.0)))]
        finally:
            await sqlite_store.close()

    due, promote = asyncio.run(plans())
    assert "USING INDEX entries_priority (queue=? AND state=?)" in due and "TEMP B-TREE" not in due
    assert "USING COVERING INDEX entries_dequeue (queue=? AND state=? AND ready_at<?)" in promote
