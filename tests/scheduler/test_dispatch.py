"""The dispatcher's waiting and cancel safety, over a real memory store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from scheduler.dispatch import Dispatcher
from scheduler.store.memory import MemoryQueueStore
from shared.contract import Delivery, QueuedJob, utcnow


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def make_job() -> QueuedJob:
    return QueuedJob(id=uuid.uuid4(), kind="task", type="demo", owner="ada")


class GatedStore(MemoryQueueStore):
    """The memory store, with each dequeue held at a gate first, as a network round trip would be."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        self.entered.set()
        await self.gate.wait()
        return await super().dequeue(queues, max_jobs, lease_s, now)


async def test_a_consumer_cancelled_while_the_store_leases_gets_its_jobs_released() -> None:
    store = GatedStore()
    job = make_job()
    await store.enqueue("a", [job], utcnow())
    dispatcher = Dispatcher(store)

    consumer = asyncio.create_task(dispatcher.dequeue(["a"], 5, 30.0, 0.0))
    await asyncio.wait_for(store.entered.wait(), timeout=5)
    consumer.cancel()
    store.gate.set()
    await asyncio.gather(consumer, return_exceptions=True)
    await asyncio.wait_for(dispatcher.drain(), timeout=5)

    stats = (await store.stats(utcnow()))["a"]
    assert (stats.ready, stats.leased) == (1, 0)
    (delivery,) = await store.dequeue(["a"], 1, 30.0, utcnow())
    assert (delivery.job.id, delivery.attempt) == (job.id, 1)


async def test_a_wake_reaches_only_as_many_waiters_as_there_are_jobs() -> None:
    store = MemoryQueueStore()
    dispatcher = Dispatcher(store, recheck_s=30.0)
    consumers = [asyncio.create_task(dispatcher.dequeue(["a"], 1, 30.0, 20.0)) for _ in range(3)]
    await until(lambda: dispatcher.waiting == 3)

    job = make_job()
    await store.enqueue("a", [job], utcnow())
    dispatcher.wake("a", 1)
    done, pending = await asyncio.wait(consumers, timeout=5, return_when=asyncio.FIRST_COMPLETED)

    assert [[d.job.id for d in task.result()] for task in done] == [[job.id]]
    assert consumers[0] in done  # the longest waiting goes first
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert dispatcher.waiting == 0


async def test_stop_waiting_returns_every_waiter_empty_handed() -> None:
    dispatcher = Dispatcher(MemoryQueueStore(), recheck_s=30.0)
    consumers = [asyncio.create_task(dispatcher.dequeue([q], 1, 30.0, 20.0)) for q in ("a", "b")]
    await until(lambda: dispatcher.waiting == 2)

    dispatcher.stop_waiting()

    assert await asyncio.wait_for(asyncio.gather(*consumers), timeout=5) == [[], []]


async def test_waiters_get_delayed_jobs_when_they_fall_due() -> None:
    store = MemoryQueueStore()
    dispatcher = Dispatcher(store, recheck_s=30.0)  # no periodic look: only the jobs' due times wake them

    async def consume() -> tuple[uuid.UUID, datetime]:
        (delivery,) = await dispatcher.dequeue(["a"], 1, 30.0, 10.0)
        return delivery.job.id, utcnow()

    waiting_before = asyncio.create_task(consume())
    await until(lambda: dispatcher.waiting == 1)
    run_at = utcnow() + timedelta(seconds=0.4)
    soon, later = (make_job().model_copy(update={"run_at": run_at + timedelta(seconds=s)}) for s in (0.0, 0.3))

    await store.enqueue("a", [soon, later], utcnow())
    dispatcher.wake("a", 2)  # as the enqueue route does: the waiter looks, and sleeps until the first is due
    waiting_after = asyncio.create_task(consume())  # finds them delayed at once

    got = dict(await asyncio.wait_for(asyncio.gather(waiting_before, waiting_after), timeout=5))
    assert set(got) == {soon.id, later.id}
    for job in (soon, later):
        assert job.run_at is not None
        assert job.run_at <= got[job.id] < job.run_at + timedelta(seconds=1)  # not the 30 s recheck
