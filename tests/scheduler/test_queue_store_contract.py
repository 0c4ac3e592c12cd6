"""One contract suite for every queue store backend (memory, SQLite, Redis: the ``store`` fixture of
conftest.py); see scheduler/store/base.py. Priorities and delays: ``test_queue_store_priorities.py``.

Times are explicit ``now`` values around a fixed instant, so delays and lease expiry need no sleeping.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scheduler.store import ExtendResult, LeaseLost, NackOutcome, QueueFull, QueueStore, backoff_delay_s, store_from_url
from scheduler.store.redis import RedisQueueStore
from scheduler.store.sqlite import SqliteQueueStore
from shared.contract import QueuedJob, RetryPolicy

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_job(max_attempts: int = 3, **retry: float) -> QueuedJob:
    return QueuedJob(id=uuid.uuid4(), kind="task", type="demo", payload={"n": 1}, owner="ada",
                     retry=RetryPolicy(max_attempts=max_attempts, **retry))


async def test_fifo_within_a_queue(store: QueueStore) -> None:
    first, second = [make_job(), make_job()], [make_job(), make_job(), make_job()]
    assert await store.enqueue("export", first, at(0)) == [True, True]
    assert await store.enqueue("export", second, at(0)) == [True, True, True]

    deliveries = await store.dequeue(["export"], 10, 30.0, at(1))

    assert [d.job.id for d in deliveries] == [j.id for j in first + second]
    assert all(d.queue == "export" and d.attempt == 1 for d in deliveries)
    assert all(d.lease_expires_at == at(31) for d in deliveries)
    assert len({d.lease_id for d in deliveries}) == 5
    assert deliveries[0].job == first[0]


async def test_dequeue_takes_the_oldest_of_the_asked_queues(store: QueueStore) -> None:
    a1, b1, a2, c1 = make_job(), make_job(), make_job(), make_job()
    await store.enqueue("a", [a1], at(0))
    await store.enqueue("b", [b1], at(1))
    await store.enqueue("a", [a2], at(2))
    await store.enqueue("c", [c1], at(0))

    deliveries = await store.dequeue(["b", "a", "b"], 10, 30.0, at(5))

    assert [(d.queue, d.job.id) for d in deliveries] == [("a", a1.id), ("b", b1.id), ("a", a2.id)]
    assert [d.job.id for d in await store.dequeue(["c"], 10, 30.0, at(5))] == [c1.id]


async def test_entries_are_not_ready_before_they_were_enqueued(store: QueueStore) -> None:
    job = make_job()
    await store.enqueue("a", [job], at(10))

    assert await store.dequeue(["a"], 1, 30.0, at(5)) == []
    assert [d.job.id for d in await store.dequeue(["a"], 1, 30.0, at(10))] == [job.id]


async def test_max_jobs_bounds_a_dequeue(store: QueueStore) -> None:
    jobs = [make_job() for _ in range(5)]
    await store.enqueue("a", jobs, at(0))

    first = await store.dequeue(["a"], 2, 30.0, at(1))
    rest = await store.dequeue(["a"], 10, 30.0, at(1))

    assert [d.job.id for d in first] == [j.id for j in jobs[:2]]
    assert [d.job.id for d in rest] == [j.id for j in jobs[2:]]
    assert await store.dequeue(["a"], 10, 30.0, at(1)) == []
    assert await store.dequeue(["unknown"], 10, 30.0, at(1)) == []


async def test_enqueue_is_idempotent_on_the_job_id_in_every_state(store: QueueStore) -> None:
    job, doomed = make_job(), make_job(max_attempts=1)
    assert await store.enqueue("a", [job, job, doomed], at(0)) == [True, False, True]
    assert await store.enqueue("a", [job], at(1)) == [False]
    assert await store.enqueue("other", [job], at(1)) == [False]

    leased = {d.job.id: d for d in await store.dequeue(["a"], 10, 30.0, at(2))}
    assert set(leased) == {job.id, doomed.id}
    assert await store.enqueue("a", [job], at(3)) == [False]
    await store.nack(doomed.id, leased[doomed.id].lease_id, at(3), "boom")
    assert await store.enqueue("a", [doomed], at(4)) == [False]

    assert await store.dequeue(["a", "other"], 10, 30.0, at(5)) == []
    stats = await store.stats(at(5))
    assert stats["a"].enqueued == 2
    assert "other" not in stats


async def test_attempt_counts_deliveries(store: QueueStore) -> None:
    job = make_job(max_attempts=5)
    await store.enqueue("a", [job], at(0))

    attempts = []
    for step in range(3):
        (delivery,) = await store.dequeue(["a"], 1, 30.0, at(step))
        attempts.append(delivery.attempt)
        outcome = await store.nack(job.id, delivery.lease_id, at(step), "again", delay_s=0)
        assert outcome.attempt == delivery.attempt
        assert not outcome.dead

    assert attempts == [1, 2, 3]


async def test_a_stale_lease_is_refused(store: QueueStore) -> None:
    job = make_job()
    await store.enqueue("a", [job], at(0))
    (old,) = await store.dequeue(["a"], 1, 10.0, at(0))
    await store.expire_leases(at(10))
    (new,) = await store.dequeue(["a"], 1, 10.0, at(11))
    assert new.attempt == 2 and new.lease_id != old.lease_id

    with pytest.raises(LeaseLost):
        await store.ack(job.id, old.lease_id, at(12))
    with pytest.raises(LeaseLost):
        await store.nack(job.id, old.lease_id, at(12), "late")
    with pytest.raises(LeaseLost):
        await store.extend(job.id, old.lease_id, 30.0, at(12))
    with pytest.raises(LeaseLost):
        await store.release(job.id, old.lease_id, at(12))
    with pytest.raises(LeaseLost):
        await store.ack(uuid.uuid4(), new.lease_id, at(12))

    await store.ack(job.id, new.lease_id, at(12))
    with pytest.raises(LeaseLost):
        await store.ack(job.id, new.lease_id, at(13))
    with pytest.raises(LeaseLost):
        await store.extend(job.id, new.lease_id, 30.0, at(13))
    assert await store.contains([job.id]) == set()


async def test_ack_forgets_the_entry(store: QueueStore) -> None:
    job, other = make_job(), make_job()
    await store.enqueue("a", [job, other], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))

    await store.ack(job.id, delivery.lease_id, at(1))

    assert await store.contains([job.id, other.id]) == {other.id}
    stats = (await store.stats(at(1)))["a"]
    assert (stats.ready, stats.leased, stats.acked, stats.dequeued) == (1, 0, 1, 1)


async def test_nack_with_attempts_left_delays_the_retry(store: QueueStore) -> None:
    job, later = make_job(max_attempts=3), make_job()
    await store.enqueue("a", [job], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    await store.enqueue("a", [later], at(1))

    outcome = await store.nack(job.id, delivery.lease_id, at(2), "flaky", delay_s=10)

    assert (outcome.dead, outcome.attempt, outcome.ready_at) == (False, 1, at(12))
    assert await store.next_ready_at(["a"]) == at(1)
    assert [d.job.id for d in await store.dequeue(["a"], 5, 30.0, at(5))] == [later.id]
    assert await store.next_ready_at(["a"]) == at(12)
    stats = (await store.stats(at(5)))["a"]
    assert (stats.ready, stats.delayed, stats.leased, stats.nacked) == (0, 1, 1, 1)
    assert await store.dequeue(["a"], 5, 30.0, at(11.9)) == []

    (retry,) = await store.dequeue(["a"], 5, 30.0, at(12))
    assert (retry.job.id, retry.attempt) == (job.id, 2)


async def test_nack_without_a_delay_backs_off_within_the_policy(store: QueueStore) -> None:
    job = make_job(max_attempts=5, backoff_base_s=2.0, backoff_cap_s=5.0)
    await store.enqueue("a", [job], at(0))
    now = at(0)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 5.0)):
        (delivery,) = await store.dequeue(["a"], 1, 30.0, now)
        outcome = await store.nack(job.id, delivery.lease_id, now, "flaky")
        assert outcome.attempt == delivery.attempt == attempt
        assert outcome.ready_at is not None
        assert now <= outcome.ready_at <= now + timedelta(seconds=ceiling)
        assert await store.next_ready_at(["a"]) == outcome.ready_at
        now = outcome.ready_at


async def test_nack_on_the_last_attempt_kills_the_entry(store: QueueStore) -> None:
    job = make_job(max_attempts=2)
    await store.enqueue("a", [job], at(0))
    (first,) = await store.dequeue(["a"], 1, 30.0, at(0))
    await store.nack(job.id, first.lease_id, at(1), "first failure", delay_s=0)
    (second,) = await store.dequeue(["a"], 1, 30.0, at(2))

    outcome = await store.nack(job.id, second.lease_id, at(3), "second failure", delay_s=0)

    assert (outcome.dead, outcome.attempt, outcome.ready_at) == (True, 2, None)
    assert await store.dequeue(["a"], 1, 30.0, at(100)) == []
    assert await store.contains([job.id]) == {job.id}
    (letter,) = await store.dead_letters("a")
    assert (letter.job, letter.queue, letter.attempt, letter.error, letter.died_at) == (
        job, "a", 2, "second failure", at(3))
    stats = (await store.stats(at(4)))["a"]
    assert (stats.dead, stats.nacked, stats.ready, stats.leased) == (1, 2, 0, 0)


async def test_a_nack_without_retry_dead_letters_at_once_whatever_attempts_remain(store: QueueStore) -> None:
    refused, flaky = make_job(max_attempts=3), make_job(max_attempts=3)
    await store.enqueue("a", [refused, flaky], at(0))
    first, other = await store.dequeue(["a"], 2, 30.0, at(0))

    outcome = await store.nack(refused.id, first.lease_id, at(1), "FetchRefused: no", delay_s=5, retry=False)
    assert outcome == NackOutcome(dead=True, attempt=1, ready_at=None)
    # A retryable failure of the same policy is retried as ever.
    assert not (await store.nack(flaky.id, other.lease_id, at(1), "flaky", delay_s=0)).dead

    (letter,) = await store.dead_letters("a")
    assert (letter.job, letter.attempt, letter.error, letter.died_at) == (refused, 1, "FetchRefused: no", at(1))
    assert await store.states([refused.id, flaky.id], at(2)) == {refused.id: "dead", flaky.id: "ready"}
    assert [d.job.id for d in await store.dequeue(["a"], 10, 30.0, at(100))] == [flaky.id]
    with pytest.raises(LeaseLost):
        await store.nack(refused.id, first.lease_id, at(2), "again", retry=False)
    stats = (await store.stats(at(100)))["a"]
    assert (stats.dead, stats.nacked, stats.leased) == (1, 2, 1)
    assert await store.lengths() == {"a": 1}


async def test_a_cancel_flag_wins_over_a_nack_without_retry(store: QueueStore) -> None:
    job = make_job(max_attempts=3)
    await store.enqueue("a", [job], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    assert await store.cancel(job.id) == "flagged"

    assert await store.nack(job.id, delivery.lease_id, at(1), "refused", retry=False) == NackOutcome(
        dead=False, attempt=1, ready_at=None, cancelled=True)
    assert await store.contains([job.id]) == set()
    assert await store.dead_letters(None) == []


async def test_extend_pushes_the_lease_expiry(store: QueueStore) -> None:
    job = make_job()
    await store.enqueue("a", [job], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 10.0, at(0))

    assert await store.extend(job.id, delivery.lease_id, 30.0, at(5)) == ExtendResult(at(35), cancel_requested=False)

    assert await store.expire_leases(at(10)) == []
    (expired,) = await store.expire_leases(at(35))
    assert (expired.job_id, expired.queue, expired.attempt, expired.dead, expired.cancelled) == (
        job.id, "a", 1, False, False)


async def test_expired_leases_come_back_then_die_on_the_last_attempt(store: QueueStore) -> None:
    job = make_job(max_attempts=2)
    await store.enqueue("a", [job], at(0))
    (first,) = await store.dequeue(["a"], 1, 30.0, at(0))
    assert first.attempt == 1

    assert await store.expire_leases(at(29.9)) == []
    (expired,) = await store.expire_leases(at(30))
    assert (expired.job_id, expired.queue, expired.attempt, expired.dead, expired.cancelled) == (
        job.id, "a", 1, False, False)
    assert await store.expire_leases(at(30)) == []

    (second,) = await store.dequeue(["a"], 1, 30.0, at(31))
    assert second.attempt == 2
    (expired,) = await store.expire_leases(at(61))
    assert (expired.attempt, expired.dead, expired.cancelled) == (2, True, False)

    assert await store.dequeue(["a"], 1, 30.0, at(62)) == []
    (letter,) = await store.dead_letters(None)
    assert (letter.error, letter.attempt, letter.died_at) == ("lease expired", 2, at(61))
    stats = (await store.stats(at(62)))["a"]
    assert (stats.dead, stats.leased, stats.extra["expired"]) == (1, 0, 2)


async def test_release_hands_the_job_back_without_counting_the_attempt(store: QueueStore) -> None:
    first, second = make_job(max_attempts=1), make_job()
    await store.enqueue("a", [first, second], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(1))

    await store.release(first.id, delivery.lease_id, at(2))

    with pytest.raises(LeaseLost):
        await store.release(first.id, delivery.lease_id, at(2))
    again = await store.dequeue(["a"], 2, 30.0, at(2))
    assert [(d.job.id, d.attempt) for d in again] == [(first.id, 1), (second.id, 1)]
    stats = (await store.stats(at(2)))["a"]
    assert (stats.leased, stats.nacked, stats.dead) == (2, 0, 0)


async def test_remove_forgets_all_but_leased_entries(store: QueueStore) -> None:
    ready, delayed, leased, dead = make_job(), make_job(), make_job(), make_job(max_attempts=1)
    await store.enqueue("a", [delayed, dead, leased, ready], at(0))
    taken = {d.job.id: d for d in await store.dequeue(["a"], 3, 30.0, at(0))}
    await store.nack(delayed.id, taken[delayed.id].lease_id, at(0), "later", delay_s=60)
    await store.nack(dead.id, taken[dead.id].lease_id, at(0), "fatal")

    assert await store.remove(ready.id) is True
    assert await store.remove(delayed.id) is True
    assert await store.remove(dead.id) is True
    assert await store.remove(leased.id) is False
    assert await store.remove(ready.id) is False
    assert await store.remove(uuid.uuid4()) is False

    assert await store.contains([ready.id, delayed.id, leased.id, dead.id]) == {leased.id}
    assert await store.dequeue(["a"], 10, 30.0, at(100)) == []
    assert await store.dead_letters(None) == []
    assert await store.enqueue("a", [ready], at(1)) == [True]


async def test_contains_sees_every_state(store: QueueStore) -> None:
    jobs = [make_job(max_attempts=1) for _ in range(3)]
    await store.enqueue("a", jobs, at(0))
    _, second = await store.dequeue(["a"], 2, 30.0, at(0))
    await store.nack(second.job.id, second.lease_id, at(0), "dead")
    stranger = uuid.uuid4()

    assert await store.contains([j.id for j in jobs] + [stranger]) == {j.id for j in jobs}
    assert await store.contains([]) == set()


async def one_of_each_state(store: QueueStore) -> tuple[dict[str, QueuedJob], str]:
    """Four entries of queue "a": ready, delayed (due at 60), leased (until 30) and dead; and the lease id."""
    jobs = {"delayed": make_job(), "dead": make_job(max_attempts=1), "leased": make_job(), "ready": make_job()}
    await store.enqueue("a", list(jobs.values()), at(0))
    taken = {d.job.id: d for d in await store.dequeue(["a"], 3, 30.0, at(0))}
    await store.nack(jobs["delayed"].id, taken[jobs["delayed"].id].lease_id, at(0), "later", delay_s=60)
    await store.nack(jobs["dead"].id, taken[jobs["dead"].id].lease_id, at(0), "fatal")
    return jobs, taken[jobs["leased"].id].lease_id


async def test_cancel_forgets_waiting_entries_and_flags_leased_ones(store: QueueStore) -> None:
    jobs, _ = await one_of_each_state(store)
    ids = [job.id for job in jobs.values()]

    assert [await store.cancel(jobs[name].id) for name in ("ready", "delayed", "dead")] == ["removed"] * 3
    assert await store.cancel(jobs["leased"].id) == "flagged"
    assert await store.cancel(jobs["leased"].id) == "flagged"
    assert await store.cancel(jobs["ready"].id) == "absent"
    assert await store.cancel(uuid.uuid4()) == "absent"

    assert await store.contains(ids) == {jobs["leased"].id}
    assert await store.states(ids, at(1)) == {jobs["leased"].id: "leased"}
    assert await store.dead_letters(None) == []
    assert await store.next_ready_at(["a"]) is None
    assert await store.enqueue("a", [jobs["ready"]], at(1)) == [True]


async def test_extend_tells_a_flagged_lease_that_its_job_was_cancelled(store: QueueStore) -> None:
    job, other = make_job(), make_job()
    await store.enqueue("a", [job, other], at(0))
    first, second = await store.dequeue(["a"], 2, 10.0, at(0))
    assert await store.extend(job.id, first.lease_id, 30.0, at(1)) == ExtendResult(at(31), cancel_requested=False)

    assert await store.cancel(job.id) == "flagged"

    # Still extended: the handler needs the time to stop and report.
    assert await store.extend(job.id, first.lease_id, 30.0, at(2)) == ExtendResult(at(32), cancel_requested=True)
    assert await store.extend(other.id, second.lease_id, 30.0, at(2)) == ExtendResult(at(32), cancel_requested=False)
    assert await store.expire_leases(at(31)) == []
    with pytest.raises(LeaseLost):
        await store.extend(job.id, second.lease_id, 30.0, at(3))


async def test_a_flagged_lease_that_expires_is_forgotten(store: QueueStore) -> None:
    retrying, last, running = make_job(max_attempts=3), make_job(max_attempts=1), make_job()
    await store.enqueue("a", [retrying, last, running], at(0))
    await store.dequeue(["a"], 3, 30.0, at(0))
    assert [await store.cancel(job.id) for job in (retrying, last)] == ["flagged", "flagged"]

    expired = await store.expire_leases(at(30))

    assert {(e.job_id, e.queue, e.attempt, e.dead, e.cancelled) for e in expired} == {
        (retrying.id, "a", 1, False, True), (last.id, "a", 1, False, True), (running.id, "a", 1, False, False)}
    assert await store.contains([retrying.id, last.id, running.id]) == {running.id}
    assert await store.dead_letters(None) == []
    assert [d.job.id for d in await store.dequeue(["a"], 10, 30.0, at(31))] == [running.id]
    stats = (await store.stats(at(31)))["a"]
    assert (stats.ready, stats.leased, stats.dead, stats.extra["expired"]) == (0, 1, 0, 3)
    assert await store.lengths() == {"a": 1}


async def test_nack_of_a_flagged_lease_forgets_it_instead_of_retrying(store: QueueStore) -> None:
    retrying, last = make_job(max_attempts=3), make_job(max_attempts=1)
    await store.enqueue("a", [retrying, last], at(0))
    first, second = await store.dequeue(["a"], 2, 30.0, at(0))
    await store.cancel(retrying.id)
    await store.cancel(last.id)

    assert await store.nack(retrying.id, first.lease_id, at(1), "stopped", delay_s=5) == NackOutcome(
        dead=False, attempt=1, ready_at=None, cancelled=True)
    assert await store.nack(last.id, second.lease_id, at(1), "stopped") == NackOutcome(
        dead=False, attempt=1, ready_at=None, cancelled=True)

    assert await store.contains([retrying.id, last.id]) == set()
    assert await store.dead_letters(None) == []
    assert await store.next_ready_at(["a"]) is None
    with pytest.raises(LeaseLost):
        await store.ack(retrying.id, first.lease_id, at(2))
    stats = (await store.stats(at(2)))["a"]
    assert (stats.nacked, stats.dead, stats.ready, stats.delayed, stats.leased) == (2, 0, 0, 0, 0)
    assert await store.lengths() == {"a": 0}


async def test_ack_and_release_of_a_flagged_lease_behave_as_before(store: QueueStore) -> None:
    acked, released = make_job(), make_job()
    await store.enqueue("a", [acked, released], at(0))
    first, second = await store.dequeue(["a"], 2, 30.0, at(0))
    await store.cancel(acked.id)
    await store.cancel(released.id)

    await store.ack(acked.id, first.lease_id, at(1))
    await store.release(released.id, second.lease_id, at(1))

    assert await store.states([acked.id, released.id], at(1)) == {released.id: "ready"}
    assert (await store.stats(at(1)))["a"].acked == 1
    (again,) = await store.dequeue(["a"], 1, 30.0, at(2))
    assert (again.job.id, again.attempt) == (released.id, 1)
    # The flag stays with the entry: whoever took the job over is told at once.
    assert (await store.extend(released.id, again.lease_id, 30.0, at(3))).cancel_requested is True


async def test_states_name_the_state_of_each_held_entry(store: QueueStore) -> None:
    jobs, _ = await one_of_each_state(store)
    stranger = uuid.uuid4()
    asked = [stranger, *(job.id for job in jobs.values()), jobs["ready"].id]

    assert await store.states(asked, at(1)) == {jobs[name].id: name for name in jobs}
    assert (await store.states(asked, at(60)))[jobs["delayed"].id] == "ready"
    assert await store.states([], at(1)) == {}
    assert await store.states([stranger], at(1)) == {}


async def test_states_answer_for_many_ids_at_once(store: QueueStore) -> None:
    jobs = [make_job() for _ in range(700)]
    await store.enqueue("a", jobs, at(0))
    await store.dequeue(["a"], 100, 30.0, at(0))

    states = await store.states([job.id for job in jobs] + [uuid.uuid4()], at(0))

    assert states == {job.id: "leased" if n < 100 else "ready" for n, job in enumerate(jobs)}


async def test_lengths_count_the_entries_that_are_not_dead(store: QueueStore) -> None:
    assert await store.lengths() == {}
    jobs, lease_id = await one_of_each_state(store)
    await store.enqueue("b", [make_job(), make_job()], at(0))
    assert await store.lengths() == {"a": 3, "b": 2}

    await store.ack(jobs["leased"].id, lease_id, at(1))
    assert await store.lengths() == {"a": 2, "b": 2}
    assert await store.redrive([jobs["dead"].id], None, at(2)) == 1
    assert await store.lengths() == {"a": 3, "b": 2}
    assert await store.remove(jobs["ready"].id) is True
    assert await store.cancel(jobs["delayed"].id) == "removed"
    assert await store.lengths() == {"a": 1, "b": 2}
    (revived,) = await store.dequeue(["a"], 1, 30.0, at(3))
    assert (await store.nack(revived.job.id, revived.lease_id, at(3), "fatal again")).dead
    assert await store.lengths() == {"a": 0, "b": 2}

    await store.dequeue(["b"], 1, 10.0, at(4))
    assert await store.lengths() == {"a": 0, "b": 2}
    (expired,) = await store.expire_leases(at(14))
    assert not expired.dead
    assert await store.lengths() == {"a": 0, "b": 2}


async def test_enqueue_past_the_max_length_is_refused_whole(store: QueueStore) -> None:
    first, second = make_job(max_attempts=1), make_job()
    extra, more = make_job(), make_job()
    assert await store.enqueue("a", [first, second], at(0), max_length=3) == [True, True]

    with pytest.raises(QueueFull) as refused:
        await store.enqueue("a", [extra, more], at(1), max_length=3)

    assert (refused.value.queue, refused.value.length, refused.value.max_length) == ("a", 2, 3)
    assert await store.contains([extra.id, more.id]) == set()
    # Ids the store holds are not new: with one new id the queue is exactly full.
    assert await store.enqueue("a", [first, second, extra, extra], at(2), max_length=3) == [False, False, True, False]
    assert await store.enqueue("a", [first], at(3), max_length=3) == [False]
    with pytest.raises(QueueFull):
        await store.enqueue("a", [more], at(3), max_length=3)

    # Leased entries count, dead ones do not.
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(4))
    with pytest.raises(QueueFull):
        await store.enqueue("a", [more], at(4), max_length=3)
    assert (await store.nack(first.id, delivery.lease_id, at(5), "fatal")).dead
    assert await store.enqueue("a", [more], at(5), max_length=3) == [True]

    assert await store.enqueue("b", [make_job()], at(6), max_length=1) == [True]
    assert await store.enqueue("a", [make_job() for _ in range(4)], at(6)) == [True] * 4
    with pytest.raises(QueueFull) as refused:
        await store.enqueue("c", [make_job(), make_job()], at(6), max_length=1)
    assert refused.value.length == 0

    assert await store.lengths() == {"a": 7, "b": 1}
    stats = await store.stats(at(7))
    assert (stats["a"].enqueued, set(stats)) == (8, {"a", "b"})


async def test_next_ready_at_covers_ready_and_delayed_entries_of_the_asked_queues(store: QueueStore) -> None:
    assert await store.next_ready_at(["a"]) is None
    job = make_job()
    await store.enqueue("a", [job], at(3))
    await store.enqueue("b", [make_job()], at(1))

    assert await store.next_ready_at(["a"]) == at(3)
    assert await store.next_ready_at(["a", "b"]) == at(1)
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(4))
    assert await store.next_ready_at(["a"]) is None
    await store.nack(job.id, delivery.lease_id, at(5), "later", delay_s=7.25)
    assert await store.next_ready_at(["a"]) == at(12.25)


async def test_stats_count_each_state_and_the_totals(store: QueueStore) -> None:
    a_jobs = [make_job(max_attempts=1), make_job(), make_job(), make_job(), make_job()]
    await store.enqueue("a", a_jobs, at(0))
    await store.enqueue("b", [make_job()], at(2))
    taken = await store.dequeue(["a"], 3, 30.0, at(1))
    await store.nack(taken[0].job.id, taken[0].lease_id, at(1), "fatal")
    await store.nack(taken[1].job.id, taken[1].lease_id, at(1), "later", delay_s=100)

    stats = await store.stats(at(4))

    assert set(stats) == {"a", "b"}
    a, b = stats["a"], stats["b"]
    assert (a.ready, a.delayed, a.leased, a.dead) == (2, 1, 1, 1)
    assert (a.enqueued, a.dequeued, a.acked, a.nacked) == (5, 3, 0, 2)
    assert a.oldest_ready_age_s == pytest.approx(4.0)
    assert (b.ready, b.delayed, b.leased, b.dead, b.enqueued) == (1, 0, 0, 0, 1)
    assert b.oldest_ready_age_s == pytest.approx(2.0)
    await store.dequeue(["b"], 1, 30.0, at(4))
    assert (await store.stats(at(4)))["b"].oldest_ready_age_s is None


async def _kill(store: QueueStore, queue: str, died_at: datetime) -> QueuedJob:
    job = make_job(max_attempts=1)
    await store.enqueue(queue, [job], died_at)
    (delivery,) = await store.dequeue([queue], 1, 30.0, died_at)
    await store.nack(job.id, delivery.lease_id, died_at, f"died at {died_at:%S}")
    return job


async def test_dead_letters_list_the_oldest_death_first(store: QueueStore) -> None:
    second = await _kill(store, "a", at(2))
    first = await _kill(store, "b", at(1))
    third = await _kill(store, "a", at(3))

    assert [d.job.id for d in await store.dead_letters(None)] == [first.id, second.id, third.id]
    assert [d.job.id for d in await store.dead_letters("a")] == [second.id, third.id]
    assert [d.job.id for d in await store.dead_letters(None, limit=2)] == [first.id, second.id]
    assert await store.dead_letters("nowhere") == []


async def test_redrive_named_entries_to_the_tail_with_a_fresh_budget(store: QueueStore) -> None:
    dead = await _kill(store, "a", at(1))
    other_dead = await _kill(store, "a", at(2))
    waiting = make_job()
    await store.enqueue("a", [waiting], at(3))

    assert await store.redrive([dead.id, waiting.id, uuid.uuid4()], None, at(4)) == 1
    assert await store.redrive([dead.id], None, at(4)) == 0

    deliveries = await store.dequeue(["a"], 10, 30.0, at(5))
    # Attempt numbers go on past the redrive (the registry fences older ones), with a new budget of
    # max_attempts from there: the redriven job, which died on its only attempt, gets one more.
    assert [(d.job.id, d.attempt) for d in deliveries] == [(waiting.id, 1), (dead.id, 2)]
    assert [d.job.id for d in await store.dead_letters(None)] == [other_dead.id]
    outcome = await store.nack(dead.id, deliveries[1].lease_id, at(6), "again")
    assert outcome.dead and outcome.attempt == 2


async def test_redrive_every_dead_entry_of_a_queue_or_of_all(store: QueueStore) -> None:
    a1, b1, a2 = await _kill(store, "a", at(1)), await _kill(store, "b", at(2)), await _kill(store, "a", at(3))

    assert await store.redrive(None, "a", at(4)) == 2
    assert [d.job.id for d in await store.dead_letters(None)] == [b1.id]
    assert [d.job.id for d in await store.dequeue(["a"], 10, 30.0, at(5))] == [a1.id, a2.id]

    assert await store.redrive(None, None, at(6)) == 1
    assert await store.redrive(None, None, at(6)) == 0
    assert await store.dead_letters(None) == []
    stats = await store.stats(at(6))
    assert (stats["a"].dead, stats["a"].leased, stats["b"].ready) == (0, 2, 1)


async def test_ping_answers(store: QueueStore) -> None:
    await store.ping()


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 10, 30])
def test_backoff_delay_stays_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base_s=0.5, backoff_cap_s=20.0)
    ceiling = min(20.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)

    delays = [backoff_delay_s(policy, attempt, rng) for _ in range(500)]

    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9
    replay = random.Random(attempt)
    assert [backoff_delay_s(policy, attempt, replay) for _ in range(5)] == delays[:5]


def test_backoff_delay_is_zero_without_a_base() -> None:
    policy = RetryPolicy(backoff_base_s=0.0)
    assert backoff_delay_s(policy, 5, random.Random(1)) == 0.0


async def test_sqlite_entries_survive_reopening_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/dir/scheduler.db"
    ready, leased, dead = make_job(), make_job(), make_job(max_attempts=1)
    store = store_from_url(url)
    await store.open()
    await store.enqueue("a", [leased, dead, ready], at(0))
    taken = await store.dequeue(["a"], 2, 30.0, at(0))
    await store.nack(dead.id, taken[1].lease_id, at(1), "fatal")
    await store.close()
    await store.close()

    reopened = SqliteQueueStore.from_url(url)
    await reopened.open()
    try:
        assert await reopened.contains([ready.id, leased.id, dead.id]) == {ready.id, leased.id, dead.id}
        stats = (await reopened.stats(at(2)))["a"]
        assert (stats.ready, stats.leased, stats.dead, stats.enqueued, stats.dequeued, stats.nacked) == (
            1, 1, 1, 3, 2, 1)
        await reopened.ack(leased.id, taken[0].lease_id, at(2))
        assert await reopened.enqueue("a", [make_job()], at(2)) == [True]
        first, _ = await reopened.dequeue(["a"], 10, 30.0, at(3))
        assert first.job.id == ready.id
    finally:
        await reopened.close()


def test_sqlite_url_forms() -> None:
    assert SqliteQueueStore.from_url("sqlite:///var/scheduler.db").path == "var/scheduler.db"
    assert SqliteQueueStore.from_url("sqlite:////tmp/q.db").path == "/tmp/q.db"
    with pytest.raises(ValueError):
        SqliteQueueStore.from_url("sqlite://var/q.db")


def test_redis_url_keeps_the_prefix_for_itself() -> None:
    store = RedisQueueStore.from_url("redis://cache:6380/2?prefix=blue&socket_timeout=5")
    assert (store.prefix, store.url) == ("blue", "redis://cache:6380/2?socket_timeout=5")
    assert RedisQueueStore.from_url("redis://cache:6380/2").prefix == "conveyor"


async def test_redis_prefixes_keep_deployments_apart(redis_url: str) -> None:
    mine = store_from_url(redis_url)
    theirs = store_from_url(redis_url + "-other")
    await mine.open()
    await theirs.open()
    try:
        job = make_job()
        await mine.enqueue("a", [job], at(0))
        assert await theirs.contains([job.id]) == set()
        assert await theirs.dequeue(["a"], 1, 30.0, at(1)) == []
        assert [d.job.id for d in await mine.dequeue(["a"], 1, 30.0, at(1))] == [job.id]
    finally:
        await mine.close()
        await theirs.close()


def test_unknown_store_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scheduler store URL"):
        store_from_url("mongodb://localhost")


async def test_ack_many_acks_each_lease_on_its_own(store: QueueStore) -> None:
    jobs = [make_job() for _ in range(3)]
    await store.enqueue("a", jobs, at(0))
    deliveries = await store.dequeue(["a"], 3, 30.0, at(0))
    acked = await store.ack_many([(deliveries[0].job.id, deliveries[0].lease_id),
                                  (deliveries[1].job.id, "not-the-lease"),
                                  (deliveries[2].job.id, deliveries[2].lease_id),
                                  (deliveries[0].job.id, deliveries[0].lease_id)], at(1))
    assert acked == [True, False, True, False]  # the repeat finds nothing left to ack
    assert await store.contains([job.id for job in jobs]) == {deliveries[1].job.id}
    assert (await store.stats(at(1)))["a"].acked == 2


async def test_ack_many_spans_queues_and_flagged_leases(store: QueueStore) -> None:
    a, b, flagged = make_job(), make_job(), make_job()
    await store.enqueue("a", [a, flagged], at(0))
    await store.enqueue("b", [b], at(0))
    deliveries = {d.job.id: d for d in await store.dequeue(["a", "b"], 3, 30.0, at(0))}
    assert await store.cancel(flagged.id) == "flagged"
    assert await store.ack_many([], at(1)) == []
    acked = await store.ack_many([(j.id, deliveries[j.id].lease_id) for j in (a, b, flagged)], at(1))
    assert acked == [True, True, True]  # ack forgets a flagged entry as ever
    assert await store.contains([a.id, b.id, flagged.id]) == set()
    stats = await store.stats(at(1))
    assert (stats["a"].acked, stats["b"].acked, stats["a"].leased, stats["b"].leased) == (2, 1, 0, 0)
    assert await store.lengths() == {"a": 0, "b": 0}


async def test_sqlite_cancel_flags_and_lengths_survive_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/scheduler.db"
    flagged, waiting = make_job(), make_job()
    store = store_from_url(url)
    await store.open()
    await store.enqueue("a", [flagged, waiting], at(0))
    (delivery,) = await store.dequeue(["a"], 1, 30.0, at(0))
    assert await store.cancel(flagged.id) == "flagged"
    await store.close()

    reopened = store_from_url(url)
    await reopened.open()
    try:
        assert await reopened.lengths() == {"a": 2}
        assert (await reopened.extend(flagged.id, delivery.lease_id, 30.0, at(1))).cancel_requested is True
        (expired,) = await reopened.expire_leases(at(31))
        assert (expired.job_id, expired.cancelled) == (flagged.id, True)
        assert await reopened.states([flagged.id, waiting.id], at(31)) == {waiting.id: "ready"}
        assert await reopened.lengths() == {"a": 1}
    finally:
        await reopened.close()


async def test_sqlite_opens_a_file_written_before_cancel_flags_and_lengths(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    leased, dead, ready = make_job(), make_job(max_attempts=1), make_job()
    store = store_from_url(f"sqlite:///{path}")
    await store.open()
    await store.enqueue("a", [leased, dead], at(0))
    await store.enqueue("b", [ready], at(0))
    first, second = await store.dequeue(["a"], 2, 30.0, at(0))
    await store.nack(dead.id, second.lease_id, at(0), "fatal")
    await store.close()
    # Take the file back to the schema before this change.
    with sqlite3.connect(path) as db:
        for trigger in ("lengths_insert", "lengths_delete", "lengths_update"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP TABLE lengths")
        db.execute("ALTER TABLE entries DROP COLUMN cancel_requested")
    db.close()

    reopened = store_from_url(f"sqlite:///{path}")
    await reopened.open()
    try:
        assert await reopened.lengths() == {"a": 1, "b": 1}
        assert (await reopened.extend(leased.id, first.lease_id, 30.0, at(1))).cancel_requested is False
        assert await reopened.cancel(leased.id) == "flagged"
        assert (await reopened.extend(leased.id, first.lease_id, 30.0, at(1))).cancel_requested is True
        assert await reopened.enqueue("b", [make_job()], at(2)) == [True]
        assert await reopened.lengths() == {"a": 1, "b": 2}
    finally:
        await reopened.close()


async def test_attempts_go_on_from_the_attempts_already_made(store: QueueStore) -> None:
    job = make_job(max_attempts=2).model_copy(update={"attempts_made": 3})
    await store.enqueue("a", [job], at(0))
    (first,) = await store.dequeue(["a"], 1, 30.0, at(0))
    assert first.attempt == 4  # above the registry's attempt 3: not fenced off
    assert not (await store.nack(job.id, first.lease_id, at(1), "x", delay_s=0)).dead
    (second,) = await store.dequeue(["a"], 1, 30.0, at(1))
    outcome = await store.nack(job.id, second.lease_id, at(2), "y")
    assert second.attempt == 5 and outcome.dead  # a budget of two attempts, counted from there
