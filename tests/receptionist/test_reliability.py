"""What keeps accepted jobs from being lost: the sweeper, cancel, dead-letter redrive, backpressure.
A real receptionist, registry and scheduler (memory stores) on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientSession, web

from receptionist.app import BACKPRESSURE, SWEEPER, create_app
from receptionist.settings import Settings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from tests.support import wait_until

EXPORT = {"bookId": "book-1", "type": "epub"}
OPERATOR = {"X-Conveyor-Roles": "operator"}


def settings(core: Any, tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"registry_url": core.registry_url, "scheduler_url": core.scheduler_url,
                              "artifacts_dir": str(tmp_path), "sweep_interval_s": 0, "time_scale": 0}
    return Settings(**(values | overrides))


@pytest.fixture
async def client(aiohttp_client: Any, core: Any, tmp_path: Any) -> Any:
    return await aiohttp_client(create_app(settings(core, tmp_path)))


async def held(core: Any, job_id: str) -> str | None:
    _, data = await core.scheduler("POST", "/queues/states", json={"job_ids": [job_id]})
    return data["states"].get(job_id)


async def test_a_job_accepted_while_the_scheduler_was_down_is_queued_by_the_sweeper(
        aiohttp_client: Any, aiohttp_server: Any, core: Any, tmp_path: Any, unused_tcp_port: int) -> None:
    app = create_app(settings(core, tmp_path, scheduler_url=f"http://127.0.0.1:{unused_tcp_port}",
                              http_timeout_s=1, sweep_interval_s=3600, sweep_pending_after_s=0))
    client = await aiohttp_client(app)
    resp = await client.post("/exports", json=EXPORT)
    assert resp.status == 201  # accepted: registered, and the sweeper owes it a queue
    job_id = (await resp.json())["id"]
    assert (await core.registry("GET", f"/jobs/{job_id}"))[1]["state"] == "pending"

    # The scheduler comes up where the receptionist expects it; one sweep queues the job.
    server = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://")), port=unused_tcp_port)
    assert await app[SWEEPER].sweep_once() == {"requeued": 1, "failed": 0, "cancelled": 0}
    async with core.session.post(str(server.make_url("/queues/states")), json={"job_ids": [job_id]}) as resp:
        assert (await resp.json())["states"] == {job_id: "ready"}
    assert await app[SWEEPER].sweep_once() == {"requeued": 0, "failed": 0, "cancelled": 0}


async def test_the_sweeper_fails_a_processing_job_whose_last_lease_expired(aiohttp_client: Any, core: Any,
                                                                          tmp_path: Any) -> None:
    app = create_app(settings(core, tmp_path, sweep_processing_after_s=0))
    client = await aiohttp_client(app)
    job = await (await client.post("/exports", json=EXPORT)).json()
    for attempt in (1, 2, 3):  # the first two attempts fail as usual
        _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["export"], "lease_s": 1})
        (delivery,) = taken["deliveries"]
        await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": attempt, "state": "processing"})
        if attempt < 3:
            await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": attempt, "state": "pending"})
            await core.scheduler("POST", "/leases/nack", json={"job_id": job["id"],
                                                              "lease_id": delivery["lease_id"], "delay_s": 0})
    # ... and the handler of the last one dies: nobody extends its lease, which expires into the dead letters.

    async def dead() -> bool:
        return await held(core, job["id"]) == "dead"

    await wait_until(dead, what="the last lease to expire")
    assert (await core.registry("GET", f"/jobs/{job['id']}"))[1]["state"] == "processing"
    assert await app[SWEEPER].sweep_once() == {"requeued": 0, "failed": 1, "cancelled": 0}
    _, record = await core.registry("GET", f"/jobs/{job['id']}")
    assert record["state"] == "failed" and "lease" in record["error"] and record["attempt"] == 3


async def test_cancel_a_pending_job(client: Any, core: Any) -> None:
    job = await (await client.post("/exports", json=EXPORT)).json()
    resp = await client.delete(f"/jobs/{job['id']}")
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"
    assert await held(core, job["id"]) is None  # out of its queue
    again = await client.delete(f"/jobs/{job['id']}")
    assert again.status == 200  # twice is harmless
    other = await client.delete(f"/jobs/{job['id']}", headers={"X-Conveyor-User": "mallory"})
    assert other.status == 404


async def test_cancel_a_running_job_flags_its_lease(client: Any, core: Any) -> None:
    job = await (await client.post("/exports", json=EXPORT)).json()
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["export"]})
    (delivery,) = taken["deliveries"]
    await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": 1, "state": "processing"})
    resp = await client.delete(f"/jobs/{job['id']}")
    assert resp.status == 202
    _, extended = await core.scheduler("POST", "/leases/extend", json={"job_id": job["id"],
                                                                      "lease_id": delivery["lease_id"]})
    assert extended["cancelled"] is True
    await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": 1, "state": "finished"})
    assert (await client.delete(f"/jobs/{job['id']}")).status == 409  # a finished job cannot be cancelled


async def test_a_task_takes_its_defaults_from_the_settings(client: Any, core: Any) -> None:
    resp = await client.post("/tasks", json={"description": "count sheep"})
    assert resp.status == 201
    task = await resp.json()
    assert task["description"] == "count sheep" and task["status"] == "PENDING"  # the task's own view
    job = await (await client.get(f"/jobs/{task['id']}")).json()
    assert job["kind"] == "task" and job["payload"] == {"description": "count sheep", "duration_s": 1.0,
                                                         "fail_probability": 0.1}
    resp = await client.post("/tasks", json={"description": "x", "fail_probability": 2})
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "fail_probability"


async def test_dead_letters_are_for_operators_and_redrive_revives_the_job(client: Any, core: Any) -> None:
    job = await (await client.post("/tasks", json={"description": "doomed"})).json()
    for attempt in (1, 2, 3):
        _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["task"]})
        (delivery,) = taken["deliveries"]
        assert delivery["attempt"] == attempt
        await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": attempt, "state": "processing"})
        state = "failed" if attempt == 3 else "pending"
        await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": attempt, "state": state,
                                                                "error": f"boom {attempt}"})
        await core.scheduler("POST", "/leases/nack", json={"job_id": job["id"], "lease_id": delivery["lease_id"],
                                                          "error": f"boom {attempt}", "delay_s": 0})
    assert (await client.get("/dead")).status == 401  # no credentials: log in first
    assert (await client.get("/dead", headers={"X-Conveyor-User": "mallory"})).status == 403  # a user, not an operator
    dead = await (await client.get("/dead", headers=OPERATOR)).json()
    assert [item["job_id"] for item in dead["items"]] == [job["id"]]
    assert "payload" not in dead["items"][0]  # operators do not read payloads

    resp = await client.post("/dead/requeue", json={"job_ids": [job["id"]]}, headers=OPERATOR)
    assert await resp.json() == {"requeued": [job["id"]], "skipped": []}
    _, record = await core.registry("GET", f"/jobs/{job['id']}")
    assert record["state"] == "pending" and record["max_attempts"] == 6 and len(record["errors"]) == 3
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["task"]})
    assert taken["deliveries"][0]["attempt"] == 4  # attempts go on: the registry does not fence it off
    again = await (await client.post("/dead/requeue", json={"all": True}, headers=OPERATOR)).json()
    assert again == {"requeued": [], "skipped": []}
    resp = await client.post("/dead/requeue", json={}, headers=OPERATOR)
    assert resp.status == 400


async def test_a_full_queue_refuses_work_and_registers_nothing(aiohttp_client: Any, aiohttp_server: Any, core: Any,
                                                              tmp_path: Any) -> None:
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", max_queue_length=2)))
    client = await aiohttp_client(create_app(settings(core, tmp_path, scheduler_url=str(scheduler.make_url("")),
                                                      backpressure_refresh_s=0)))
    for n in range(2):
        assert (await client.post("/exports", json={"bookId": str(n), "type": "pdf"})).status == 201
    resp = await client.post("/exports", json={"bookId": "3", "type": "pdf"})
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["details"][0]["field"] == "queue"
    _, counts = await core.registry("GET", "/counts")
    assert sum(counts.values()) == 2
    assert (await client.post("/imports", json={"bookId": "i", "type": "pdf", "url": "https://x.org/i"})).status == 201


async def test_a_submission_does_not_wait_for_the_queue_lengths_once_some_are_known(
        aiohttp_client: Any, aiohttp_server: Any, core: Any, tmp_path: Any) -> None:
    """The lengths come in the background: with the scheduler's answer held back, submissions still go
    through on the last lengths, and the fresh ones, once they come, refuse the next when the queue is full."""
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", max_queue_length=3)))
    gate = asyncio.Event()
    gate.set()
    held_asks: list[str] = []

    async def relay(request: web.Request) -> web.Response:
        """The scheduler, behind a link that holds back its answers on queue lengths while the gate is shut."""
        if request.path == "/queues/lengths" and not gate.is_set():
            held_asks.append(request.path)
            await gate.wait()
        async with ClientSession() as session, session.request(
                request.method, scheduler.make_url(request.path_qs), headers=request.headers,
                data=await request.read()) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)

    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", relay)
    link = await aiohttp_server(front)
    app = create_app(settings(core, tmp_path, scheduler_url=str(link.make_url("")), backpressure_refresh_s=0.01))
    client = await aiohttp_client(app)
    _, before = await core.registry("GET", "/counts")
    assert (await client.post("/exports", json={"bookId": "0", "type": "pdf"})).status == 201  # asks, and waits
    gate.clear()
    await asyncio.sleep(0.05)  # the lengths are stale now
    for n in (1, 2):  # the queue fills up while its lengths are held back: nobody waits for them
        resp = await asyncio.wait_for(client.post("/exports", json={"bookId": str(n), "type": "pdf"}), timeout=10)
        assert resp.status == 201
    assert held_asks and app[BACKPRESSURE].lengths.get("export", 0) < 3  # judged on the last lengths
    gate.set()

    async def fresh() -> bool:
        return app[BACKPRESSURE].lengths.get("export") == 3

    await wait_until(fresh, what="the held lengths to land")
    resp = await client.post("/exports", json={"bookId": "3", "type": "pdf"})
    assert resp.status == 503 and (await resp.json())["details"][0]["field"] == "queue"
    _, after = await core.registry("GET", "/counts")
    assert sum(after.values()) - sum(before.values()) == 3  # refused before registering anything
