"""Handlers under trouble: cancel while running, timeouts, a lost lease, a graceful stop."""

from __future__ import annotations

from typing import Any

from tests.support import wait_until


async def job_of(core: Any, job_id: str) -> dict[str, Any]:
    return (await core.registry("GET", f"/jobs/{job_id}"))[1]


async def in_state(core: Any, job_id: str, state: str, timeout_s: float = 10.0) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        job = await job_of(core, job_id)
        return job if job["state"] == state else None

    return await wait_until(reached, timeout_s=timeout_s, what=f"job {job_id} {state}")


async def submit_task(receptionist: Any, **payload: Any) -> str:
    resp = await receptionist.post("/tasks", json={"description": "t", "fail_probability": 0, **payload})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_cancel_stops_a_running_job_within_a_heartbeat(pipeline: Any, core: Any) -> None:
    receptionist, start_handler = pipeline
    handler = await start_handler(time_scale=1.0, heartbeat_s=0.1)
    job_id = await submit_task(receptionist, duration_s=60)
    await in_state(core, job_id, "processing")
    resp = await receptionist.delete(f"/jobs/{job_id}")
    assert resp.status == 202 and (await resp.json())["cancel_requested"] is True
    job = await in_state(core, job_id, "cancelled", timeout_s=5)  # a heartbeat is 0.1 s; the task 60 s
    assert job["attempt"] == 1 and job["finished_at"]

    async def settled() -> dict[str, Any] | None:
        status = await (await handler.get("/status")).json()
        return status if status["cancelled"] == 1 and status["running"] == [] else None

    await wait_until(settled, what="the handler to settle the cancelled job")

    async def acked() -> bool:  # the ack waits for company (HANDLER_ACK_WINDOW_S), then it is gone from its queue
        _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": [job_id]})
        return held["states"] == {}

    await wait_until(acked, what="the cancelled job's lease to be acked")


async def test_an_attempt_past_its_timeout_fails_as_timed_out(pipeline: Any, core: Any) -> None:
    receptionist, start_handler = pipeline
    # A task's timeout is 600 s, times the time scale: 0.6 s here, for 3 s of simulated work.
    await start_handler(time_scale=0.001, min_timeout_s=0.1)
    job_id = await submit_task(receptionist, duration_s=3000)
    job = await in_state(core, job_id, "failed", timeout_s=15)
    assert [e["attempt"] for e in job["errors"]] == [1, 2, 3]
    assert all(e["error"].startswith("timed out after 0.6s") for e in job["errors"])


async def test_a_handler_that_lost_its_lease_cannot_overwrite_the_new_attempt(pipeline: Any, core: Any) -> None:
    receptionist, start_handler = pipeline
    # This handler never extends its leases in time: its 1 s lease expires while the 2 s task runs.
    # With one slot, it cannot take the job again itself once the lease expired.
    slow = await start_handler(time_scale=1.0, lease_s=1.0, heartbeat_s=60, concurrency=1)
    job_id = await submit_task(receptionist, duration_s=2)
    await in_state(core, job_id, "processing")

    async def redelivered() -> bool:
        _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": [job_id]})
        return held["states"].get(job_id) == "ready"

    await wait_until(redelivered, what="the expired lease to make the job ready again")
    await start_handler(time_scale=0.0)  # takes it over as attempt 2, and finishes at once
    job = await in_state(core, job_id, "finished")
    assert job["attempt"] == 2

    async def slow_done() -> dict[str, Any] | None:
        status = await (await slow.get("/status")).json()
        return status if status["processed"] == 1 else None

    status = await wait_until(slow_done, what="the first handler to end its attempt")
    assert status["succeeded"] == 0  # its "finished" for attempt 1 was refused
    _, events = await core.registry("GET", f"/jobs/{job_id}/events")
    finished = [e for e in events["items"] if e["state"] == "finished"]
    assert len(finished) == 1 and finished[0]["attempt"] == 2
    assert (await job_of(core, job_id))["attempt"] == 2


async def test_a_stopping_handler_hands_running_jobs_back(pipeline: Any, core: Any) -> None:
    receptionist, start_handler = pipeline
    first = await start_handler(time_scale=1.0, grace_s=0.2)
    job_id = await submit_task(receptionist, duration_s=60)
    await in_state(core, job_id, "processing")
    await first.close()  # SIGTERM does the same: stop polling, wait grace_s, hand back the rest
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": [job_id]})
    assert held["states"] == {job_id: "ready"}  # back at once, not after a lease expiry
    await start_handler(time_scale=0.0)
    job = await in_state(core, job_id, "finished")
    assert job["attempt"] == 1  # handing back is not a failed attempt


async def test_the_heartbeat_names_the_running_jobs(pipeline: Any, core: Any, monkeypatch: Any) -> None:
    """What the dashboard's instances view shows of a handler: its running jobs, by id, in the registry's
    instance record; the ids at most ``RUNNING_IDS``, the count always whole."""
    from handler import worker
    from shared.heartbeat import HEARTBEAT

    monkeypatch.setattr(worker, "RUNNING_IDS", 2)
    receptionist, start_handler = pipeline
    handler = await start_handler(time_scale=1.0, heartbeat_s=0.1, concurrency=4, instance_heartbeat_s=0.05)
    await handler.app[HEARTBEAT].start(str(handler.server.make_url("")).rstrip("/"))
    jobs = [await submit_task(receptionist, duration_s=60) for _ in range(3)]
    for job_id in jobs:
        await in_state(core, job_id, "processing")

    async def record(check: Any) -> dict[str, Any] | None:
        _, page = await core.registry("GET", "/instances", params={"kind": "handler"})
        statuses = [item["status"] for item in page["items"]]
        return statuses[0] if len(statuses) == 1 and check(statuses[0]) else None

    status = await wait_until(lambda: record(lambda s: s.get("running") == 3), what="three running jobs reported")
    assert len(status["running_ids"]) == 2 and set(status["running_ids"]) < set(jobs)
    assert status["slots"] == 4 and status["free_slots"] == 1
    for job_id in jobs:
        assert (await receptionist.delete(f"/jobs/{job_id}")).status == 202
    status = await wait_until(lambda: record(lambda s: s.get("running") == 0), what="the cancelled jobs gone")
    assert status["running_ids"] == []


async def test_a_stopping_handler_sends_the_acks_still_waiting_for_company(pipeline: Any, core: Any) -> None:
    """An ack waits up to ``ACK_WINDOW_S`` for others (1 s here) and nothing waits on it; a handler stopped
    meanwhile sends it as it stops, so the finished job's lease is not left to expire."""
    receptionist, start_handler = pipeline
    handler = await start_handler(ack_window_s=1.0)
    export = await (await receptionist.post("/exports", json={"bookId": "b", "type": "epub"})).json()
    await in_state(core, export["id"], "finished")
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": [export["id"]]})
    assert held["states"] == {export["id"]: "leased"}  # finished, its ack still waiting for company
    await handler.close()  # the app's cleanup stops the worker
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": [export["id"]]})
    assert held["states"] == {}
