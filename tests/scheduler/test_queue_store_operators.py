"""The queue store contract suite, continued: what operators do to queues, on every backend (memory, SQLite,
Redis: the ``store`` fixture of conftest.py). Pausing and resuming a queue, and discarding dead letters
(scheduler/store/base.py)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from scheduler.store import DeadLetter, QueueStore, store_from_url
from shared.contract import QueuedJob
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


async def _die_together(store: QueueStore, jobs: dict[str, int], died_at: datetime) -> list[QueuedJob]:
    """``jobs[queue]`` jobs of each queue whose leases all expire on their last attempt at ``died_at``: dead
    letters of one and the same time, across queues."""
    made = []
    for queue, n in jobs.items():
        batch = [make_job(max_attempts=1) for _ in range(n)]
        await store.enqueue(queue, batch, at(0))
        assert len(await store.dequeue([queue], n, 1.0, at(0))) == n
        made += batch
    assert all(lease.dead for lease in await store.expire_leases(died_at))
    return made


async def _every_page(store: QueueStore, queue: str | None, limit: int,
                      between: Callable[[list[DeadLetter]], Awaitable[None]] | None = None) -> list[DeadLetter]:
    """Every page of the dead letters, ``limit`` a page, each from just after the last one's key."""
    seen: list[DeadLetter] = []
    after = None
    while True:
        page = await store.dead_letters(queue, limit, after)
        assert len(page) <= limit
        if not page:
            return seen
        seen += page
        if between is not None:
            await between(seen)
        after = (page[-1].died_at, page[-1].job.id)


def _order(letters: list[DeadLetter]) -> list[tuple[datetime, str]]:
    return [(letter.died_at, str(letter.job.id)) for letter in letters]


async def test_dead_letters_page_by_keyset_to_the_end_with_ties_in_time(store: QueueStore) -> None:
    tied = await _die_together(store, {"a": 12, "b": 8}, at(20))
    early = [await _kill(store, "a", at(5)) for _ in range(3)]
    late = [await _kill(store, "b", at(30)) for _ in range(2)]
    everything = await store.dead_letters(None, 1000)
    assert len(everything) == 25 and _order(everything) == sorted(_order(everything))
    assert {d.job.id for d in everything} == {j.id for j in tied + early + late}
    assert [d.died_at for d in everything] == [at(5)] * 3 + [at(20)] * 20 + [at(30)] * 2
    assert _order(await store.dead_letters(None, 7)) == _order(everything)[:7]

    for limit in (1, 4, 7, 25, 100):
        assert _order(await _every_page(store, None, limit)) == _order(everything), limit
    of_a = [d for d in everything if d.queue == "a"]
    assert len(of_a) == 15
    assert _order(await _every_page(store, "a", 4)) == _order(of_a)
    assert _order(await _every_page(store, "b", 3)) == _order([d for d in everything if d.queue == "b"])
    assert await store.dead_letters("none", 10, (at(0), uuid.uuid4())) == []


async def _dies_again(store: QueueStore, letter: DeadLetter, when: datetime) -> None:
    """Redrive a dead letter, take it and nack it for good at ``when``: dead again, later."""
    assert await store.redrive([letter.job.id], None, when) == 1
    (delivery,) = [d for d in await store.dequeue([letter.queue], 100, 30.0, when) if d.job.id == letter.job.id]
    assert (await store.nack(letter.job.id, delivery.lease_id, when, "again", retry=False)).dead


async def test_dead_letters_gone_between_pages_leave_no_gap_among_the_rest(store: QueueStore) -> None:
    await _die_together(store, {"a": 10, "b": 6}, at(20))
    for _ in range(4):
        await _kill(store, "a", at(25))
    everything = await store.dead_letters(None, 1000)
    listed = {d.job.id for d in everything}
    gone: set[uuid.UUID] = set()
    again: list[uuid.UUID] = []

    async def meanwhile(seen: list[DeadLetter]) -> None:
        ahead = [d for d in everything if d.job.id not in {s.job.id for s in seen}]
        if len(seen) == 5:
            # The page's last (the cursor's own entry) discarded; one further on discarded, one redriven.
            assert await store.discard([seen[-1].job.id, ahead[3].job.id], None)
            assert await store.redrive([ahead[0].job.id], None, at(26)) == 1
            gone.update({ahead[3].job.id, ahead[0].job.id})
            # One listed already dies again: it comes again, at its new time of death.
            await _dies_again(store, seen[1], at(40))
            again.append(seen[1].job.id)
        elif len(seen) == 10:  # the cursor's own entry dies again: the page after it is still the next
            await _dies_again(store, seen[-1], at(41))
            again.append(seen[-1].job.id)

    seen = await _every_page(store, None, 5, meanwhile)
    ids = [d.job.id for d in seen]
    assert ids == [i for i in (d.job.id for d in everything) if i not in gone] + again
    assert {d.died_at for d in seen[-2:]} == {at(40), at(41)} and set(ids) <= listed


async def test_sqlite_keeps_only_dead_entries_in_the_dead_letter_index(tmp_path: Path) -> None:
    """The index of dead letters holds the dead entries alone (a live entry's insert, lease and ack do not
    write it), and a file whose older index held every entry gets the new one. The statements that list
    dead letters read them off it in their order, with no sort."""
    path = tmp_path / "scheduler.db"
    store = store_from_url(f"sqlite:///{path}")
    await store.open()
    dead = [await _kill(store, queue, at(second)) for second, queue in ((3, "a"), (1, "b"), (2, "a"))]
    await store.enqueue("a", [make_job(), make_job()], at(4))
    await store.dequeue(["a"], 1, 30.0, at(4))  # one live entry leased, one ready
    await store.close()
    with sqlite3.connect(path) as db:  # the index as it was before: every entry in it
        db.execute("DROP INDEX entries_dead_letters")
        db.execute("CREATE INDEX entries_dead ON entries (state, died_at, job_id)")
    db.close()

    reopened = store_from_url(f"sqlite:///{path}")
    await reopened.open()
    statements: list[str] = []
    reopened._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        letters = await reopened.dead_letters(None, 10)
        assert [d.job.id for d in letters] == [dead[1].id, dead[2].id, dead[0].id]
        after_first_of_a = (letters[1].died_at, letters[1].job.id)
        assert [d.job.id for d in await reopened.dead_letters("a", 5, after_first_of_a)] == [dead[0].id]
        assert await reopened.redrive(None, "b", at(5)) == 1
    finally:
        await reopened.close()
    with sqlite3.connect(path) as db:
        indexes = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'"))
        assert "entries_dead" not in indexes and "WHERE state = 'dead'" in indexes["entries_dead_letters"]
        assert db.execute("SELECT count(*) FROM entries INDEXED BY entries_dead_letters WHERE state = 'dead'"
                          ).fetchone() == (2,)  # of five entries, the two still dead
        listing = [sql for sql in statements if sql.startswith("SELECT") and "state = 'dead'" in sql
                   and "job_id IN" not in sql]
        assert len(listing) == 3, statements  # the two pages, and the redrive's list of the queue's letters
        for sql in listing:
            plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "entries_dead_letters" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    db.close()
