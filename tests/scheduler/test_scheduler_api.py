"""The scheduler's HTTP API over a real server on loopback (memory store unless a test says otherwise)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from loguru import logger
from pydantic import ValidationError

from scheduler.app import STORE, create_app
from scheduler.settings import Settings
from tests.support import gauges

ClientFactory = Callable[..., Awaitable[TestClient]]


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"store_url": "memory://", "reap_interval_s": 0.05, "lease_s": 30.0}
    return Settings(**(values | overrides))


def job_body(max_attempts: int = 3, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "task", "type": "demo", "owner": "ada", "payload": {"n": 1},
            "retry": {"max_attempts": max_attempts, "backoff_base_s": 0.0}, **fields}


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(make_settings()))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def status(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/status")
    assert resp.status == 200
    return await resp.json()


async def enqueue(client: TestClient, queue: str, *jobs: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"/queues/{queue}/jobs", json={"jobs": list(jobs)})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def take(client: TestClient, queues: list[str], **body: Any) -> list[dict[str, Any]]:
    resp = await client.post("/dequeue", json={"queues": queues, **body})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["deliveries"]


async def assert_error(resp: aiohttp.ClientResponse, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) >= {"error", "details"}
    if field is not None:
        assert field in [d["field"] for d in body["details"]], body
    return body


async def test_enqueue_counts_new_jobs_and_duplicates(client: TestClient) -> None:
    first, second = job_body(), job_body()

    assert await enqueue(client, "export", first, second) == {"enqueued": 2, "duplicates": 0}
    assert await enqueue(client, "export", second, job_body()) == {"enqueued": 1, "duplicates": 1}
    assert await enqueue(client, "import", first) == {"enqueued": 0, "duplicates": 1}


@pytest.mark.parametrize(("body", "field"), [
    ({"jobs": []}, "jobs"),
    ({"jobs": [job_body(id="not-a-uuid")]}, "jobs.0.id"),
    ({"jobs": [{k: v for k, v in job_body().items() if k != "kind"}]}, "jobs.0.kind"),
    ({"jobs": [job_body(kind="Painting!")]}, "jobs.0.kind"),
    ({"jobs": [job_body()], "priority": 1}, "priority"),
    ({"jobs": [job_body() for _ in range(1001)]}, "jobs"),
    ({}, "jobs"),
])
async def test_enqueue_refuses_bad_bodies(client: TestClient, body: dict[str, Any], field: str) -> None:
    resp = await client.post("/queues/export/jobs", json=body)
    error = await assert_error(resp, 400, field)
    assert error["error"] == "invalid request"


async def test_enqueued_jobs_carry_their_priority_and_run_at(client: TestClient) -> None:
    run_at = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    low, high = job_body(priority=-3), job_body(priority=7)
    delayed = job_body(priority=100, run_at=run_at.isoformat())
    await enqueue(client, "task", low, delayed, high)

    resp = await client.post("/queues/states", json={"job_ids": [delayed["id"]]})
    assert (await resp.json())["states"] == {delayed["id"]: "delayed"}
    first = await take(client, ["task"], max=10)
    assert [(d["job"]["id"], d["job"]["priority"]) for d in first] == [(high["id"], 7), (low["id"], -3)]
    (late,) = await take(client, ["task"], wait_s=5)  # the long poll wakes when it falls due
    assert late["job"]["id"] == delayed["id"]
    assert datetime.fromisoformat(late["job"]["run_at"]) == run_at
    assert datetime.now(timezone.utc) >= run_at

    for bad, field in (({"priority": 101}, "priority"), ({"priority": "1"}, "priority"),
                       ({"priority": 1.0}, "priority"), ({"run_at": "soon"}, "run_at")):
        resp = await client.post("/queues/task/jobs", json={"jobs": [job_body(**bad)]})
        await assert_error(resp, 400, f"jobs.0.{field}")


async def test_enqueue_refuses_what_is_not_json(client: TestClient) -> None:
    await assert_error(await client.post("/queues/a/jobs", data=b"{jobs", headers={"Content-Type": "application/json"}),
                       400, "body")
    await assert_error(await client.post("/queues/a/jobs", data=b"jobs", headers={"Content-Type": "text/plain"}), 415)
    await assert_error(await client.post("/queues/bad%20name/jobs", json={"jobs": [job_body()]}), 400, "queue")


async def test_dequeue_is_fifo(client: TestClient) -> None:
    jobs = [job_body() for _ in range(5)]
    for job in jobs[:3]:
        await enqueue(client, "export", job)
    await enqueue(client, "export", *jobs[3:])

    deliveries = await take(client, ["export"], max=10)

    assert [d["job"]["id"] for d in deliveries] == [j["id"] for j in jobs]
    assert all(d["attempt"] == 1 and d["queue"] == "export" and d["lease_id"] for d in deliveries)
    assert deliveries[0]["job"]["payload"] == {"n": 1}
    assert await take(client, ["export"], max=10) == []


async def test_dequeue_takes_the_oldest_across_queues_and_honours_max(client: TestClient) -> None:
    a1, b1, a2 = job_body(), job_body(), job_body()
    await enqueue(client, "a", a1)
    await enqueue(client, "b", b1)
    await enqueue(client, "a", a2)
    await enqueue(client, "c", job_body())

    first = await take(client, ["b", "a"], max=2)
    rest = await take(client, ["a", "b"], max=100)

    assert [d["job"]["id"] for d in first] == [a1["id"], b1["id"]]
    assert [d["job"]["id"] for d in rest] == [a2["id"]]


async def test_dequeue_uses_the_lease_asked_for_or_the_setting(client: TestClient) -> None:
    await enqueue(client, "a", job_body(), job_body())

    (short,) = await take(client, ["a"], lease_s=5)
    (default,) = await take(client, ["a"])

    short_s = (datetime.fromisoformat(short["lease_expires_at"]) - datetime.now().astimezone()).total_seconds()
    default_s = (datetime.fromisoformat(default["lease_expires_at"]) - datetime.now().astimezone()).total_seconds()
    assert 0 < short_s <= 5
    assert 25 < default_s <= 30


@pytest.mark.parametrize(("body", "field"), [
    ({"queues": []}, "queues"),
    ({"max": 1}, "queues"),
    ({"queues": ["a"], "max": 0}, "max"),
    ({"queues": ["a"], "max": 101}, "max"),
    ({"queues": ["a"], "wait_s": 31}, "wait_s"),
    ({"queues": ["a"], "wait_s": -1}, "wait_s"),
    ({"queues": ["a"], "lease_s": 0.5}, "lease_s"),
    ({"queues": ["a"], "lease_s": 3601}, "lease_s"),
    ({"queues": ["no spaces"]}, "queues.0"),
    ({"queues": ["a"], "visibility": 3}, "visibility"),
])
async def test_dequeue_refuses_bad_bodies(client: TestClient, body: dict[str, Any], field: str) -> None:
    await assert_error(await client.post("/dequeue", json=body), 400, field)


async def test_dequeue_from_one_queue_needs_no_body(client: TestClient) -> None:
    jobs = [job_body() for _ in range(3)]
    await enqueue(client, "export", *jobs)

    resp = await client.post("/queues/export/dequeue")
    assert resp.status == 200
    (only,) = (await resp.json())["deliveries"]
    resp = await client.post("/queues/export/dequeue", json={"max": 5, "lease_s": 10})
    rest = (await resp.json())["deliveries"]

    assert only["job"]["id"] == jobs[0]["id"]
    assert [d["job"]["id"] for d in rest] == [j["id"] for j in jobs[1:]]
    await assert_error(await client.post("/queues/export/dequeue", json={"queues": ["x"]}), 400, "queues")


async def test_long_poll_returns_as_soon_as_a_job_arrives(client: TestClient) -> None:
    poll = asyncio.create_task(client.post("/dequeue", json={"queues": ["other", "export"], "wait_s": 25}))

    async def waiting() -> bool:
        return (await status(client))["waiting_consumers"] == 1

    await wait_until(waiting)
    job = job_body()
    await enqueue(client, "export", job)

    resp = await asyncio.wait_for(poll, timeout=10)
    assert [d["job"]["id"] for d in (await resp.json())["deliveries"]] == [job["id"]]
    assert (await status(client))["waiting_consumers"] == 0


async def test_long_poll_ignores_jobs_of_other_queues(client: TestClient) -> None:
    poll = asyncio.create_task(client.post("/dequeue", json={"queues": ["export"], "wait_s": 0.3}))
    await enqueue(client, "import", job_body())

    resp = await asyncio.wait_for(poll, timeout=10)

    assert await resp.json() == {"deliveries": []}
    assert (await status(client))["queues"]["import"]["ready"] == 1


async def test_long_poll_returns_empty_after_its_wait(client: TestClient) -> None:
    resp = await client.post("/dequeue", json={"queues": ["export"], "wait_s": 0.2})

    assert resp.status == 200
    assert await resp.json() == {"deliveries": []}
    assert (await status(client))["waiting_consumers"] == 0


async def test_long_poll_wakes_when_a_delayed_retry_falls_due(client: TestClient) -> None:
    job = job_body()
    await enqueue(client, "a", job)
    (first,) = await take(client, ["a"])
    resp = await client.post("/leases/nack", json={"job_id": job["id"], "lease_id": first["lease_id"], "delay_s": 0.3})
    assert (await resp.json())["dead"] is False

    retry = await asyncio.wait_for(take(client, ["a"], wait_s=20), timeout=10)

    assert [(d["job"]["id"], d["attempt"]) for d in retry] == [(job["id"], 2)]


async def test_ack_and_stale_leases(client: TestClient) -> None:
    job = job_body()
    await enqueue(client, "a", job)
    (delivery,) = await take(client, ["a"])
    lease = {"job_id": job["id"], "lease_id": delivery["lease_id"]}

    resp = await client.post("/leases/ack", json=lease)
    assert resp.status == 200 and await resp.json() == {}

    for route in ("ack", "nack", "extend", "release"):
        error = await assert_error(await client.post(f"/leases/{route}", json=lease), 409, "lease_id")
        assert error["error"] == "lease lost"
    await assert_error(await client.post("/leases/ack", json={"job_id": job["id"]}), 400, "lease_id")
    await assert_error(await client.post("/leases/ack", json={"job_id": "nope", "lease_id": "x"}), 400, "job_id")
    stats = (await status(client))["queues"]["a"]
    assert (stats["acked"], stats["leased"], stats["ready"]) == (1, 0, 0)


async def test_extend_pushes_the_expiry(client: TestClient) -> None:
    job = job_body()
    await enqueue(client, "a", job)
    (delivery,) = await take(client, ["a"], lease_s=5)
    lease = {"job_id": job["id"], "lease_id": delivery["lease_id"]}

    longer = await (await client.post("/leases/extend", json={**lease, "lease_s": 600})).json()
    default = await (await client.post("/leases/extend", json=lease)).json()

    assert datetime.fromisoformat(longer["lease_expires_at"]) > datetime.fromisoformat(delivery["lease_expires_at"])
    assert longer["cancelled"] is False and default["cancelled"] is False
    remaining_s = (datetime.fromisoformat(default["lease_expires_at"]) - datetime.now().astimezone()).total_seconds()
    assert 25 < remaining_s <= 30
    await assert_error(await client.post("/leases/extend", json={**lease, "lease_s": 0}), 400, "lease_s")


async def test_release_gives_the_job_back_at_once_without_counting_the_attempt(client: TestClient) -> None:
    job = job_body()
    await enqueue(client, "a", job)
    (delivery,) = await take(client, ["a"])

    resp = await client.post("/leases/release", json={"job_id": job["id"], "lease_id": delivery["lease_id"]})

    assert resp.status == 200
    (again,) = await take(client, ["a"])
    assert (again["job"]["id"], again["attempt"]) == (job["id"], 1)


async def test_nack_retries_then_dead_letters_and_requeue_brings_back(client: TestClient) -> None:
    job = job_body(max_attempts=2)
    await enqueue(client, "a", job)
    (first,) = await take(client, ["a"])

    resp = await client.post("/leases/nack", json={"job_id": job["id"], "lease_id": first["lease_id"],
                                                   "error": "flaky", "delay_s": 0})
    retry = await resp.json()
    assert (retry["dead"], retry["attempt"]) == (False, 1)
    assert datetime.fromisoformat(retry["ready_at"]) <= datetime.now().astimezone()

    (second,) = await take(client, ["a"])
    assert second["attempt"] == 2
    resp = await client.post("/leases/nack", json={"job_id": job["id"], "lease_id": second["lease_id"],
                                                   "error": "broken"})
    assert await resp.json() == {"dead": True, "attempt": 2, "ready_at": None, "cancelled": False}

    dead = await (await client.get("/dead")).json()
    assert [(i["job"]["id"], i["queue"], i["attempt"], i["error"]) for i in dead["items"]] == [
        (job["id"], "a", 2, "broken")]
    assert (await (await client.get("/dead", params={"queue": "b"})).json())["items"] == []
    assert len((await (await client.get("/dead", params={"queue": "", "limit": "1"})).json())["items"]) == 1

    resp = await client.post("/dead/requeue", json={"job_ids": [job["id"], str(uuid.uuid4())]})
    assert await resp.json() == {"requeued": 1}
    (revived,) = await take(client, ["a"])
    assert (revived["job"]["id"], revived["attempt"]) == (job["id"], 3)  # attempts go on after a redrive


async def test_a_nack_without_retry_dead_letters_at_once(client: TestClient) -> None:
    job = job_body(max_attempts=3)
    await enqueue(client, "a", job)
    (delivery,) = await take(client, ["a"])
    lease = {"job_id": job["id"], "lease_id": delivery["lease_id"]}
    for retry in ("false", 0, None):  # only a JSON boolean says it
        await assert_error(await client.post("/leases/nack", json={**lease, "retry": retry}), 400, "retry")

    resp = await client.post("/leases/nack", json={**lease, "error": "FetchRefused: loopback", "retry": False})
    assert await resp.json() == {"dead": True, "attempt": 1, "ready_at": None, "cancelled": False}
    dead = await (await client.get("/dead")).json()
    assert [(i["job"]["id"], i["attempt"], i["error"]) for i in dead["items"]] == [
        (job["id"], 1, "FetchRefused: loopback")]
    assert await take(client, ["a"]) == []


async def test_requeue_all_dead_jobs_of_a_queue_or_of_every_queue(client: TestClient) -> None:
    for queue in ("a", "a", "b"):
        await enqueue(client, queue, job_body(max_attempts=1))
        (delivery,) = await take(client, [queue])
        await client.post("/leases/nack", json={"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]})

    assert await (await client.post("/dead/requeue", json={"all": True, "queue": "a"})).json() == {"requeued": 2}
    assert await (await client.post("/dead/requeue", json={"all": True})).json() == {"requeued": 1}
    assert (await (await client.get("/dead")).json())["items"] == []
    queues = (await status(client))["queues"]
    assert (queues["a"]["ready"], queues["b"]["ready"]) == (2, 1)


@pytest.mark.parametrize("body", [
    {},
    {"all": False},
    {"job_ids": [str(uuid.uuid4())], "all": True},
    {"job_ids": [str(uuid.uuid4())], "queue": "a"},
    {"job_ids": []},
])
async def test_requeue_refuses_an_unclear_selection(client: TestClient, body: dict[str, Any]) -> None:
    await assert_error(await client.post("/dead/requeue", json=body), 400)


async def test_dead_query_is_validated(client: TestClient) -> None:
    await assert_error(await client.get("/dead", params={"limit": "0"}), 400, "limit")
    await assert_error(await client.get("/dead", params={"limit": "many"}), 400, "limit")
    await assert_error(await client.get("/dead", params={"queue": "a b"}), 400, "queue")
    for cursor in ("not-a-cursor", "WzFd", "x" * 501):  # "WzFd": [1], JSON of another shape
        await assert_error(await client.get("/dead", params={"cursor": cursor}), 400, "cursor")


async def test_dead_letters_page_with_a_cursor(client: TestClient) -> None:
    for queue in ("a", "a", "b", "a", "b"):
        await enqueue(client, queue, job_body(max_attempts=1))
        (delivery,) = await take(client, [queue])
        await client.post("/leases/nack", json={"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]})
    whole = await (await client.get("/dead")).json()
    assert len(whole["items"]) == 5 and whole["next_cursor"] is None

    for queue, expected in ((None, whole["items"]), ("a", [i for i in whole["items"] if i["queue"] == "a"])):
        seen: list[Any] = []
        params = {"limit": "2", **({"queue": queue} if queue else {})}
        while True:
            page = await (await client.get("/dead", params=params)).json()
            seen += page["items"]
            if page["next_cursor"] is None:
                break
            assert len(page["items"]) == 2
            params["cursor"] = page["next_cursor"]
        assert seen == expected


async def test_an_expired_lease_is_delivered_again_with_the_next_attempt(client: TestClient) -> None:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda message: records.append(message.record), level="WARNING")
    try:
        job = job_body()
        await enqueue(client, "a", job)
        (first,) = await take(client, ["a"], lease_s=1)

        again = await asyncio.wait_for(take(client, ["a"], wait_s=20), timeout=10)
    finally:
        logger.remove(sink)

    assert [(d["job"]["id"], d["attempt"]) for d in again] == [(job["id"], 2)]
    assert again[0]["lease_id"] != first["lease_id"]
    assert any(r["extra"].get("job_id") == job["id"] and "lease expired" in r["message"] for r in records)
    assert (await status(client))["queues"]["a"]["expired"] == 1


async def test_remove_and_contains(client: TestClient) -> None:
    ready, leased, stranger = job_body(), job_body(), str(uuid.uuid4())
    await enqueue(client, "a", leased, ready)
    await take(client, ["a"])

    resp = await client.post("/queues/contains", json={"job_ids": [stranger, ready["id"], leased["id"]]})
    assert await resp.json() == {"held": [ready["id"], leased["id"]]}

    assert await (await client.delete(f"/queues/jobs/{ready['id']}")).json() == {"removed": True}
    assert await (await client.delete(f"/queues/jobs/{ready['id']}")).json() == {"removed": False}
    assert await (await client.delete(f"/queues/jobs/{leased['id']}")).json() == {"removed": False}
    await assert_error(await client.delete("/queues/jobs/not-a-uuid"), 400, "job_id")

    resp = await client.post("/queues/contains", json={"job_ids": [ready["id"], leased["id"]]})
    assert await resp.json() == {"held": [leased["id"]]}
    await assert_error(await client.post("/queues/contains", json={"job_ids": ["x"]}), 400, "job_ids.0")


async def cancel(client: TestClient, job_id: str) -> str:
    resp = await client.post(f"/queues/jobs/{job_id}/cancel")
    assert resp.status == 200, await resp.text()
    return (await resp.json())["outcome"]


async def states(client: TestClient, *job_ids: str) -> dict[str, str]:
    resp = await client.post("/queues/states", json={"job_ids": list(job_ids)})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["states"]


async def test_cancel_removes_a_waiting_job_and_flags_a_running_one(client: TestClient) -> None:
    running, waiting = job_body(), job_body()
    await enqueue(client, "a", running, waiting)
    (delivery,) = await take(client, ["a"])
    lease = {"job_id": running["id"], "lease_id": delivery["lease_id"]}

    assert await cancel(client, waiting["id"]) == "removed"
    assert await cancel(client, waiting["id"]) == "absent"
    assert await cancel(client, running["id"]) == "flagged"
    assert await states(client, running["id"], waiting["id"]) == {running["id"]: "leased"}

    extended = await (await client.post("/leases/extend", json=lease)).json()
    assert extended["cancelled"] is True
    resp = await client.post("/leases/nack", json={**lease, "error": "stopped: cancelled"})
    assert await resp.json() == {"dead": False, "attempt": 1, "ready_at": None, "cancelled": True}
    assert await states(client, running["id"]) == {}
    assert await take(client, ["a"]) == []
    await assert_error(await client.post("/queues/jobs/not-a-uuid/cancel"), 400, "job_id")


async def test_a_cancelled_job_whose_lease_expires_is_not_delivered_again(client: TestClient) -> None:
    job = job_body()
    await enqueue(client, "a", job)
    await take(client, ["a"], lease_s=1)
    assert await cancel(client, job["id"]) == "flagged"

    async def forgotten() -> bool:
        return await states(client, job["id"]) == {}

    await wait_until(forgotten)
    a = (await status(client))["queues"]["a"]
    assert (a["expired"], a["ready"], a["leased"], a["dead"]) == (1, 0, 0, 0)
    assert await take(client, ["a"]) == []


async def test_states_name_each_held_job(client: TestClient) -> None:
    ready, delayed, leased, dead = job_body(), job_body(), job_body(), job_body(max_attempts=1)
    await enqueue(client, "a", delayed, dead, leased, ready)
    taken = {d["job"]["id"]: d for d in await take(client, ["a"], max=3)}
    await client.post("/leases/nack", json={"job_id": delayed["id"], "lease_id": taken[delayed["id"]]["lease_id"],
                                            "delay_s": 600})
    await client.post("/leases/nack", json={"job_id": dead["id"], "lease_id": taken[dead["id"]]["lease_id"]})
    stranger = str(uuid.uuid4())

    assert await states(client, ready["id"], delayed["id"], leased["id"], dead["id"], stranger) == {
        ready["id"]: "ready", delayed["id"]: "delayed", leased["id"]: "leased", dead["id"]: "dead"}
    await assert_error(await client.post("/queues/states", json={"job_ids": []}), 400, "job_ids")
    too_many = [str(uuid.uuid4()) for _ in range(1001)]
    await assert_error(await client.post("/queues/states", json={"job_ids": too_many}), 400, "job_ids")
    await assert_error(await client.post("/queues/states", json={"job_ids": ["x"]}), 400, "job_ids.0")
    assert len(await states(client, *too_many[:1000])) == 0


async def test_lengths_count_what_is_not_dead_and_name_the_limit(client: TestClient) -> None:
    resp = await client.get("/queues/lengths")
    assert await resp.json() == {"lengths": {}, "max_queue_length": 0}
    doomed = job_body(max_attempts=1)
    await enqueue(client, "a", doomed, job_body(), job_body())
    await enqueue(client, "b", job_body())
    (delivery,) = await take(client, ["a"])
    await client.post("/leases/nack", json={"job_id": doomed["id"], "lease_id": delivery["lease_id"]})
    await take(client, ["a"])

    resp = await client.get("/queues/lengths")
    assert await resp.json() == {"lengths": {"a": 2, "b": 1}, "max_queue_length": 0}


async def test_a_full_queue_refuses_an_enqueue_whole(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(make_settings(max_queue_length=3)))
    held = [job_body(), job_body()]
    await enqueue(client, "export", *held)

    resp = await client.post("/queues/export/jobs", json={"jobs": [job_body(), job_body()]})

    error = await assert_error(resp, 503, "queue")
    assert error["error"] == "queue full"
    assert "export" in error["details"][0]["message"]
    assert resp.headers["Retry-After"] == "1"
    assert await (await client.get("/queues/lengths")).json() == {"lengths": {"export": 2}, "max_queue_length": 3}
    # Held ids are not new; one new id fills the queue exactly, and then none is taken.
    assert await enqueue(client, "export", *held, job_body()) == {"enqueued": 1, "duplicates": 2}
    assert await enqueue(client, "export", held[0]) == {"enqueued": 0, "duplicates": 1}
    await assert_error(await client.post("/queues/export/jobs", json={"jobs": [job_body()]}), 503, "queue")
    assert await enqueue(client, "import", job_body()) == {"enqueued": 1, "duplicates": 0}

    (delivery,) = await take(client, ["export"])
    await client.post("/leases/ack", json={"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]})
    assert await enqueue(client, "export", job_body()) == {"enqueued": 1, "duplicates": 0}
    assert (await status(client))["queues"]["export"]["enqueued"] == 4


async def test_a_batch_of_several_queues_enqueues_each_and_a_full_one_refuses_only_its_own(
        aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(make_settings(max_queue_length=2)))
    await enqueue(client, "export", job_body())
    repeated = job_body()
    await enqueue(client, "task", repeated)

    resp = await client.post("/queues/batch", json={"queues": {
        "export": [job_body(), job_body()], "import": [job_body(), job_body()], "task": [repeated]}})

    assert resp.status == 200
    results = (await resp.json())["results"]
    assert results["import"] == {"status": 200, "enqueued": 2, "duplicates": 0}
    assert results["task"] == {"status": 200, "enqueued": 0, "duplicates": 1}
    assert results["export"]["status"] == 503 and results["export"]["error"] == "queue full"
    assert results["export"]["details"][0]["field"] == "queue" and "export" in results["export"]["details"][0]["message"]
    assert (await (await client.get("/queues/lengths")).json())["lengths"] == {"export": 1, "import": 2, "task": 1}
    assert len(await take(client, ["import"], max=5, wait_s=0)) == 2


@pytest.mark.parametrize("body", [{}, {"queues": {}}, {"queues": {"export": []}}, {"queues": {"bad name": [{}]}},
                                  {"queues": {"export": [{"id": "x"}]}}, {"queues": {"export": [job_body()]}, "x": 1}])
async def test_a_batch_of_queues_refuses_bad_bodies(client: TestClient, body: dict[str, Any]) -> None:
    resp = await client.post("/queues/batch", json=body)
    assert resp.status == 400
    assert (await resp.json())["details"]


async def test_the_seed_route_is_refused_when_the_default_queue_is_full(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(make_settings(max_queue_length=1)))
    first = job_body()
    assert (await client.post("/queue", json=first)).status == 201

    error = await assert_error(await client.post("/queue", json=job_body()), 503, "queue")

    assert "default" in error["details"][0]["message"]
    assert (await client.post("/queue", json=first)).status == 201


def test_max_queue_length_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_MAX_QUEUE_LENGTH", "5000")
    assert Settings().max_queue_length == 5000
    monkeypatch.setenv("SCHEDULER_MAX_QUEUE_LENGTH", "-1")
    with pytest.raises(ValidationError):
        Settings()


async def test_seed_routes_use_the_default_queue(client: TestClient) -> None:
    job = job_body()

    resp = await client.post("/queue", json=job)
    assert resp.status == 201 and await resp.json() == {"enqueued": True}
    resp = await client.post("/queue", json=job)
    assert resp.status == 201 and await resp.json() == {"enqueued": False}

    resp = await client.post("/queue/dequeue")
    assert resp.status == 200
    delivery = await resp.json()
    assert (delivery["job"]["id"], delivery["queue"], delivery["attempt"]) == (job["id"], "default", 1)

    resp = await client.post("/queue/dequeue")
    assert resp.status == 204
    await assert_error(await client.post("/queue", json={"kind": "task"}), 400, "id")


async def test_health_and_status(client: TestClient) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"

    await enqueue(client, "a", job_body(), job_body(), job_body())
    (delivery,) = await take(client, ["a"])
    await client.post("/leases/ack", json={"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]})
    await take(client, ["a"])

    report = await status(client)
    assert report["waiting_consumers"] == 0
    a = report["queues"]["a"]
    assert {k: a[k] for k in ("ready", "delayed", "leased", "dead", "enqueued", "dequeued", "acked", "nacked")} == {
        "ready": 1, "delayed": 0, "leased": 1, "dead": 0, "enqueued": 3, "dequeued": 2, "acked": 1, "nacked": 0}
    assert a["oldest_ready_age_s"] >= 0


async def test_a_broken_store_answers_503(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(make_settings(store_url=f"sqlite:///{tmp_path}/q.db")))
    await client.app[STORE].close()

    await assert_error(await client.post("/queues/a/jobs", json={"jobs": [job_body()]}), 503)
    await assert_error(await client.post("/dequeue", json={"queues": ["a"]}), 503)
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"


async def test_a_client_that_hangs_up_mid_poll_leases_nothing(client: TestClient) -> None:
    poll = asyncio.create_task(client.post("/dequeue", json={"queues": ["a"], "wait_s": 25}))

    def waiting(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await status(client))["waiting_consumers"] == count
        return check

    await wait_until(waiting(1))
    poll.cancel()
    await wait_until(waiting(0))
    job = job_body()
    await enqueue(client, "a", job)

    a = (await status(client))["queues"]["a"]
    assert (a["ready"], a["leased"]) == (1, 0)
    (delivery,) = await take(client, ["a"])
    assert (delivery["job"]["id"], delivery["attempt"]) == (job["id"], 1)


@pytest.fixture
async def served() -> AsyncIterator[tuple[web.AppRunner, str]]:
    """The app served as ``shared.web.run`` serves it: handlers are not cancelled when a client hangs up."""
    runner = web.AppRunner(create_app(make_settings()), handler_cancellation=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield runner, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_hung_up_poll_leases_nothing_when_handlers_run_on(served: tuple[web.AppRunner, str]) -> None:
    _, url = served
    async with aiohttp.ClientSession(url) as session:
        async def state() -> dict[str, Any]:
            async with session.get("/status") as resp:
                return await resp.json()

        async def poll() -> None:
            async with aiohttp.ClientSession(url) as own:
                await own.post("/dequeue", json={"queues": ["a"], "wait_s": 25})

        polling = asyncio.create_task(poll())

        async def one_waiting() -> bool:
            return (await state())["waiting_consumers"] == 1

        await wait_until(one_waiting)
        polling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await polling
        job = job_body()
        async with session.post("/queues/a/jobs", json={"jobs": [job]}) as resp:
            assert resp.status == 200

        async def handed_back() -> bool:
            report = await state()
            a = report["queues"]["a"]
            return report["waiting_consumers"] == 0 and (a["ready"], a["leased"]) == (1, 0)

        await wait_until(handed_back)
        async with session.post("/dequeue", json={"queues": ["a"]}) as resp:
            (delivery,) = (await resp.json())["deliveries"]
        assert (delivery["job"]["id"], delivery["attempt"]) == (job["id"], 1)


async def test_stopping_the_service_ends_long_polls_at_once(served: tuple[web.AppRunner, str]) -> None:
    runner, url = served
    async with aiohttp.ClientSession(url) as session:
        poll = asyncio.create_task(session.post("/dequeue", json={"queues": ["a"], "wait_s": 25}))

        async def one_waiting() -> bool:
            async with session.get("/status") as resp:
                return (await resp.json())["waiting_consumers"] == 1

        await wait_until(one_waiting)
        stopping = asyncio.create_task(runner.cleanup())
        resp = await asyncio.wait_for(poll, timeout=8)
        assert resp.status == 200
        assert await resp.json() == {"deliveries": []}
        await asyncio.wait_for(stopping, timeout=8)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def any_store_client(request: pytest.FixtureRequest, aiohttp_client: ClientFactory,
                           tmp_path: Path) -> TestClient:
    urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/scheduler.db"}
    url = urls.get(request.param) or request.getfixturevalue("redis_url")
    return await aiohttp_client(create_app(make_settings(store_url=url)))


async def test_jobs_flow_through_every_store(any_store_client: TestClient) -> None:
    client = any_store_client
    jobs = [job_body() for _ in range(120)]
    await enqueue(client, "export", *jobs[:60])
    await enqueue(client, "export", *jobs[60:])

    seen = []
    while batch := await take(client, ["export"], max=50):
        for delivery in batch:
            seen.append(delivery["job"]["id"])
            resp = await client.post("/leases/ack", json={"job_id": delivery["job"]["id"],
                                                          "lease_id": delivery["lease_id"]})
            assert resp.status == 200

    assert seen == [j["id"] for j in jobs]
    export = (await status(client))["queues"]["export"]
    assert (export["enqueued"], export["dequeued"], export["acked"], export["ready"]) == (120, 120, 120, 0)
    assert (await client.get("/health")).status == 200


async def test_batch_ack_reports_lost_leases(client: TestClient) -> None:
    first, second = job_body(), job_body()
    await enqueue(client, "q", first, second)
    deliveries = await take(client, ["q"], max=2)
    resp = await client.post("/leases/acks", json={"items": [
        {"job_id": deliveries[0]["job"]["id"], "lease_id": deliveries[0]["lease_id"]},
        {"job_id": deliveries[1]["job"]["id"], "lease_id": "stale"},
    ]})
    assert resp.status == 200
    assert await resp.json() == {"acked": [deliveries[0]["job"]["id"]], "lost": [deliveries[1]["job"]["id"]]}
    queue = (await status(client))["queues"]["q"]
    assert (queue["acked"], queue["leased"]) == (1, 1)
    await assert_error(await client.post("/leases/acks", json={"items": []}), 400, "items")


async def test_metrics_count_each_queues_entries_by_state_and_the_oldest_wait(client: TestClient) -> None:
    await enqueue(client, "export", job_body(), job_body(), job_body(max_attempts=1))
    await enqueue(client, "task", job_body())
    [delivery] = await take(client, ["export"], max=1)
    resp = await client.post("/leases/nack", json={"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"],
                                                   "error": "boom", "retry": False})
    assert resp.status == 200
    await take(client, ["export"], max=1)

    found = gauges(await (await client.get("/metrics")).text())
    export, task = (("queue", "export"),), (("queue", "task"),)
    assert {state: found[(f"conveyor_queue_{state}", export)] for state in ("ready", "delayed", "leased", "dead")} \
        == {"ready": 1, "delayed": 0, "leased": 1, "dead": 1}
    assert found[("conveyor_queue_ready", task)] == 1
    assert found[("conveyor_queue_oldest_ready_age_seconds", task)] >= 0


async def test_autoscale_reports_show_in_status_and_bad_ones_are_refused(client: TestClient) -> None:
    assert "autoscale" not in await status(client)
    report = {"min_handlers": 1, "max_handlers": 4, "handlers": 2,
              "decisions": [{"action": "up", "handlers": 2, "reason": "30 jobs ready for 0 free slots"}]}
    resp = await client.put("/autoscale/launcher@host-a:8080", json=report)
    assert resp.status == 204
    shown = (await status(client))["autoscale"]["launcher@host-a:8080"]
    assert shown["decisions"] == report["decisions"] and shown["stale"] is False
    for body, code in ((b"[1, 2]", 400), (b"{nope", 400), (b"{" + b" " * 20_000 + b"}", 413)):
        resp = await client.put("/autoscale/x", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == code, await resp.text()
