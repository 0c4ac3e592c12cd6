"""The scheduler's operator routes over a real server on loopback: pausing and resuming a queue, discarding
dead letters, and the ``conveyor_queue_paused`` gauge."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scheduler.app import create_app
from tests.scheduler.test_scheduler_api import (
    ClientFactory,
    assert_error,
    enqueue,
    job_body,
    make_settings,
    status,
    take,
    wait_until,
)
from tests.support import gauges


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(make_settings()))


async def kill(client: TestClient, queue: str) -> str:
    job = job_body(max_attempts=1)
    await enqueue(client, queue, job)
    (delivery,) = await take(client, [queue])
    resp = await client.post("/leases/nack", json={"job_id": job["id"], "lease_id": delivery["lease_id"]})
    assert (await resp.json())["dead"] is True
    return job["id"]


async def test_pause_holds_the_queue_back_and_resume_wakes_its_long_polls(client: TestClient) -> None:
    first = job_body()
    await enqueue(client, "a", first)
    resp = await client.post("/queues/a/pause")
    assert resp.status == 200
    snapshot = await resp.json()
    assert (snapshot["queue"], snapshot["paused"], snapshot["ready"]) == ("a", True, 1)
    assert (await (await client.post("/queues/a/pause")).json())["paused"] is True  # idempotent

    second = job_body()
    assert await enqueue(client, "a", second) == {"enqueued": 1, "duplicates": 0}
    assert await take(client, ["a"]) == []
    queues = (await status(client))["queues"]
    assert (queues["a"]["paused"], queues["a"]["ready"]) == (True, 2)

    poll = asyncio.create_task(take(client, ["a"], max=10, wait_s=10))


    async def waiting() -> bool:
        return (await status(client))["waiting_consumers"] == 1

    await wait_until(waiting)  # the long poll sleeps (a paused queue does not make it look again and again)
    assert not poll.done()
    resumed = await (await client.post("/queues/a/resume")).json()
    assert (resumed["paused"], resumed["ready"]) == (False, 2)
    assert [d["job"]["id"] for d in await asyncio.wait_for(poll, 5)] == [first["id"], second["id"]]
    assert (await (await client.post("/queues/a/resume")).json())["paused"] is False


async def test_a_queue_paused_before_any_job_is_listed(client: TestClient) -> None:
    snapshot = await (await client.post("/queues/fresh/pause")).json()
    assert snapshot == {"queue": "fresh", "ready": 0, "delayed": 0, "leased": 0, "dead": 0, "enqueued": 0,
                        "dequeued": 0, "acked": 0, "nacked": 0, "oldest_ready_age_s": None, "expired": 0,
                        "paused": True}
    assert (await status(client))["queues"]["fresh"]["paused"] is True


async def test_pause_refuses_a_name_that_is_no_queue_name(client: TestClient) -> None:
    await assert_error(await client.post("/queues/a%20b/pause"), 400, "queue")


async def test_the_pause_survives_a_restart_on_sqlite(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    settings = make_settings(store_url=f"sqlite:///{tmp_path}/scheduler.db")
    first = await aiohttp_client(create_app(settings))
    await first.post("/queues/a/pause")
    await enqueue(first, "a", job_body())
    await first.close()

    again = await aiohttp_client(create_app(settings))
    assert (await status(again))["queues"]["a"]["paused"] is True
    assert await take(again, ["a"]) == []


async def test_pause_shows_in_the_metrics(client: TestClient) -> None:
    await enqueue(client, "a", job_body())
    await enqueue(client, "b", job_body())
    await client.post("/queues/a/pause")
    found = gauges(await (await client.get("/metrics")).text())
    assert found[("conveyor_queue_paused", (("queue", "a"),))] == 1
    assert found[("conveyor_queue_paused", (("queue", "b"),))] == 0
    await client.post("/queues/a/resume")
    found = gauges(await (await client.get("/metrics")).text())
    assert found[("conveyor_queue_paused", (("queue", "a"),))] == 0


async def test_discard_forgets_named_dead_letters_or_all_of_a_queue(client: TestClient) -> None:
    a1, a2, b1 = await kill(client, "a"), await kill(client, "a"), await kill(client, "b")

    resp = await client.post("/dead/discard", json={"job_ids": [a2, str(uuid.uuid4())]})
    assert await resp.json() == {"discarded": [a2]}
    assert await (await client.post("/dead/discard", json={"all": True, "queue": "a"})).json() == {"discarded": [a1]}
    assert [i["job"]["id"] for i in (await (await client.get("/dead")).json())["items"]] == [b1]
    assert await (await client.post("/dead/discard", json={"all": True})).json() == {"discarded": [b1]}
    queues = (await status(client))["queues"]
    assert (queues["a"]["dead"], queues["b"]["dead"]) == (0, 0)


@pytest.mark.parametrize("body", [{}, {"all": False}, {"job_ids": []}, {"job_ids": ["x"]},
                                  {"job_ids": [str(uuid.uuid4())], "queue": "a"}])
async def test_discard_refuses_an_unclear_selection(client: TestClient, body: dict[str, Any]) -> None:
    await assert_error(await client.post("/dead/discard", json=body), 400)
