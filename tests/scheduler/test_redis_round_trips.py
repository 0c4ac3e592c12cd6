"""Round trips to Redis on the scheduler's batch paths: a batch enqueue, a batch dequeue and a batch of
acks are one round trip each, whatever their size. Counted on the client side (every request redis-py
writes to a connection, a pipeline being one), since the Redis server is shared with other tests and its
``INFO commandstats`` counts theirs too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from scheduler.app import STORE
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from scheduler.store import QueueStore, store_from_url
from shared.contract import QueuedJob, RetryPolicy

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


class RoundTrips:
    """Counts what redis-py sends: one command, or one pipeline, is one write and one round trip."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    counter = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counter.count += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    yield counter


def make_jobs(n: int) -> list[QueuedJob]:
    return [QueuedJob(id=uuid.uuid4(), kind="task", type="demo", payload={"n": i}, owner="ada",
                      retry=RetryPolicy(max_attempts=3)) for i in range(n)]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[QueueStore]:
    store = store_from_url(redis_url)
    await store.open()
    # Connect and load every script first: the first call of a script on a fresh Redis costs a retry.
    await store.ping()
    await store.enqueue("warm", make_jobs(1), NOW)
    (delivery,) = await store.dequeue(["warm"], 1, 30.0, NOW)
    await store.ack_many([(delivery.job.id, delivery.lease_id)], NOW)
    yield store
    await store.close()


@pytest.mark.parametrize("n", [1, 100])
async def test_each_batch_is_one_round_trip_whatever_its_size(store: QueueStore, round_trips: RoundTrips,
                                                              n: int) -> None:
    jobs = make_jobs(n)
    counts = []
    before = round_trips.count
    assert await store.enqueue("a", jobs, NOW) == [True] * n
    counts.append(round_trips.count - before)

    before = round_trips.count
    deliveries = await store.dequeue(["a"], n, 30.0, NOW)
    counts.append(round_trips.count - before)
    assert len(deliveries) == n

    before = round_trips.count
    acked = await store.ack_many([(d.job.id, d.lease_id) for d in deliveries], NOW)
    counts.append(round_trips.count - before)
    assert acked == [True] * n

    assert counts == [1, 1, 1]  # enqueue, dequeue, acks
    assert await store.lengths() == {"a": 0, "warm": 0}


async def test_the_batch_routes_make_three_round_trips_for_a_hundred_jobs(aiohttp_client: Any, redis_url: str,
                                                                        round_trips: RoundTrips) -> None:
    # The lease reaper would add its own round trips while we count: it waits an hour here.
    client = await aiohttp_client(scheduler_app(SchedulerSettings(store_url=redis_url, reap_interval_s=3600)))
    await client.app[STORE].ping()
    warm = make_jobs(1)
    for jobs in (warm, make_jobs(100)):  # the first pass loads the scripts; the second is counted
        before = round_trips.count
        resp = await client.post("/queues/a/jobs", json={"jobs": [j.model_dump(mode="json") for j in jobs]})
        assert resp.status == 200 and (await resp.json())["enqueued"] == len(jobs)
        resp = await client.post("/dequeue", json={"queues": ["a"], "max": 100})
        deliveries = (await resp.json())["deliveries"]
        assert len(deliveries) == len(jobs)
        resp = await client.post("/leases/acks", json={"items": [
            {"job_id": d["job"]["id"], "lease_id": d["lease_id"]} for d in deliveries]})
        assert len((await resp.json())["acked"]) == len(jobs)
    assert round_trips.count - before == 3  # 0.03 a job: one enqueue, one dequeue, one ack for all 100
