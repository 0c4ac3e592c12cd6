"""The queue store contract suite, continued: what operators do to queues, on every backend (memory, SQLite,
Redis: the ``store`` fixture of conftest.py). Pausing and resuming a queue, and discarding dead letters
(scheduler/store/base.py)."""

from __future__ import annotations

import uuid

from scheduler.store import QueueStore, store_from_url
from tests.scheduler.test_queue_store_contract import _kill, at, make_job


async def test_a_paused_queue_takes_jobs_but_hands_none_out(store: QueueStore) -> None:
    waiting, later, other = make_job(), make_job(), make_job()
    await store.enqueue("a", [waiting], at(0))
    await store.enqueue("b", [other], at(0))

    assert await store.set_paused("a", True) is True
    assert await store.set_paused("a", True) is False  # already paused
    assert await store.paused_queues() == {"a"}
    assert await store.enqueue("a", [later.model_copy(update={"run_at": at(5)})], at(1)) == [True]

    # Nothing of "a", even its delayed job once due; "b" is not held back by it.
    assert [d.job.id for d in await store.dequeue(["a", "b"], 10, 30.0, at(10))] == [other.id]
    assert await store.dequeue(["a"], 10, 30.0, at(10)) == []
    assert await store.next_ready_at(["a"]) is None  # a long poll sleeps rather than looking again
    stats = (await store.stats(at(10)))["a"]
    assert (stats.ready, stats.delayed, stats.leased) == (2, 0, 0)
    assert await store.lengths() == {"a": 2, "b": 1}

    assert await store.set_paused("a", False) is True
    assert await store.set_paused("a", False) is False
    assert await store.paused_queues() == set()
    assert await store.next_ready_at(["a"]) == at(0)
    assert [d.job.id for d in await store.dequeue(["a"], 10, 30.0, at(10))] == [waiting.id, later.id]


async def test_leases_out_when_a_queue_is_paused_go_on(store: QueueStore) -> None:
    done, retried, expiring = make_job(), make_job(), make_job()
    await store.enqueue("a", [done, retried, expiring], at(0))
    leases = {d.job.id: d for d in await store.dequeue(["a"], 3, 30.0, at(0))}
    await store.set_paused("a", True)

    await store.ack(done.id, leases[done.id].lease_id, at(1))
    extended = await store.extend(retried.id, leases[retried.id].lease_id, 60.0, at(1))
    assert extended.lease_expires_at == at(61)
    outcome = await store.nack(retried.id, leases[retried.id].lease_id, at(2), "once", delay_s=0.0)
    assert not outcome.dead
    (expired,) = await store.expire_leases(at(31))
    assert (expired.job_id, expired.dead) == (expiring.id, False)

    # Both are ready again, and wait while the queue is paused.
    assert await store.dequeue(["a"], 10, 30.0, at(40)) == []
    assert await store.states([retried.id, expiring.id], at(40)) == {retried.id: "ready", expiring.id: "ready"}
    await store.set_paused("a", False)
    assert {d.job.id for d in await store.dequeue(["a"], 10, 30.0, at(40))} == {retried.id, expiring.id}


async def test_a_queue_that_never_held_a_job_can_be_paused(store: QueueStore) -> None:
    assert await store.set_paused("empty", True) is True
    job = make_job()
    await store.enqueue("empty", [job], at(0))
    assert await store.dequeue(["empty"], 1, 30.0, at(1)) == []
    await store.set_paused("empty", False)
    assert [d.job.id for d in await store.dequeue(["empty"], 1, 30.0, at(1))] == [job.id]


async def test_the_pause_outlives_the_store_object(store_url: str) -> None:
    """Kept by the store: a scheduler that restarts (SQLite, Redis), or another one sharing it (Redis),
    sees it. The memory store lives and dies with its process, so only one object can tell."""
    first = store_from_url(store_url)
    await first.open()
    await first.set_paused("a", True)
    await first.enqueue("a", [make_job()], at(0))
    if not store_url.startswith("memory"):
        await first.close()
        first = store_from_url(store_url)
        await first.open()
    try:
        assert await first.paused_queues() == {"a"}
        assert await first.dequeue(["a"], 1, 30.0, at(1)) == []
    finally:
        await first.close()


async def test_discard_forgets_named_dead_entries_only(store: QueueStore) -> None:
    first, second = await _kill(store, "a", at(1)), await _kill(store, "a", at(2))
    waiting = make_job()
    await store.enqueue("a", [waiting], at(3))

    assert await store.discard([second.id, first.id, waiting.id, uuid.uuid4()], None) == [first.id, second.id]
    assert await store.discard([first.id], None) == []
    assert await store.dead_letters(None) == []
    assert await store.contains([first.id, second.id, waiting.id]) == {waiting.id}
    stats = (await store.stats(at(3)))["a"]
    assert (stats.ready, stats.dead) == (1, 0)
    assert await store.lengths() == {"a": 1}
    assert await store.redrive([first.id], None, at(4)) == 0  # gone for good


async def test_discard_every_dead_entry_of_a_queue_or_of_all(store: QueueStore) -> None:
    a1, b1, a2 = await _kill(store, "a", at(1)), await _kill(store, "b", at(2)), await _kill(store, "a", at(3))

    assert await store.discard(None, "a") == [a1.id, a2.id]
    assert [d.job.id for d in await store.dead_letters(None)] == [b1.id]
    assert await store.discard(None, None) == [b1.id]
    assert await store.discard(None, None) == []
    # A discarded id is new again to the store (the registry, not the queue, refuses a second job).
    assert await store.enqueue("a", [a1.model_copy(update={"retry": make_job().retry})], at(4)) == [True]
