"""Periodic schedules through the whole stack, real processes (``conveyor up``): two registries on one
PostgreSQL, two schedulers on one Redis and two receptionists, every one of them firing due schedules. A
schedule every 2 s fires every due time of its grid once: the due times its jobs were fired for are the
consecutive due times from its first to its last firing, none twice and none missed, and each job ran."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.e2e.conftest import Stack
from tests.support import wait_until

EVERY_S = 2
#: The firings waited for: about 10 s of the schedule.
FIRINGS = 5


async def schedule_jobs(stack: Stack, schedule_id: str) -> list[dict[str, Any]]:
    status, page, _ = await stack.request("GET", "/jobs", params={"kind": "export", "limit": "1000"})
    assert status == 200, page
    return [job for job in page["items"] if job["schedule_id"] == schedule_id]


def due_time(job: dict[str, Any]) -> datetime:
    """The due time a fired job was made for, from its idempotency key (``schedule:<id>:<due time>``)."""
    return datetime.fromisoformat(job["idempotency_key"].split(":", 2)[2])


async def test_two_receptionists_and_two_schedulers_fire_each_due_time_once(
        postgres_url: str, redis_url: str, start_stack: Any) -> None:
    stack = await start_stack("--registries", "2", "--schedulers", "2", "--receptionists", "2", "--handlers", "1",
                              "--time-scale", "0", "--rate-limit", "0", env={
        "REGISTRY_STORE_URL": postgres_url, "SCHEDULER_STORE_URL": redis_url,
        "RECEPTIONIST_SCHEDULE_POLL_S": "0.1"})
    names = {s["name"] for s in stack.state()["services"]}
    assert {"receptionist-1", "receptionist-2", "scheduler-1", "scheduler-2", "registry-1", "registry-2"} <= names

    status, made, _ = await stack.request("POST", "/schedules", json={
        "kind": "export", "payload": {"bookId": "b-1", "type": "epub"}, "every_s": EVERY_S})
    assert status == 201, made
    created = datetime.fromisoformat(made["created_at"])
    assert datetime.fromisoformat(made["next_run_at"]) == created + timedelta(seconds=EVERY_S)

    async def fired_enough() -> list[dict[str, Any]] | None:
        jobs = await schedule_jobs(stack, made["id"])
        return jobs if len(jobs) >= FIRINGS else None

    await wait_until(fired_enough, timeout_s=FIRINGS * EVERY_S + 20, interval_s=0.2, what=f"{FIRINGS} firings")
    status, paused, _ = await stack.request("POST", f"/schedules/{made['id']}/pause")
    assert status == 200 and paused["paused"] is True
    # A firing under way when the pause came may still land; then the schedule stays as it is.
    last_fired = datetime.fromisoformat(paused["last_fired_at"])

    async def settled() -> list[dict[str, Any]] | None:
        jobs = await schedule_jobs(stack, made["id"])
        return jobs if all(job["state"] == "finished" for job in jobs) else None

    jobs = await wait_until(settled, timeout_s=30, interval_s=0.2, what="every fired job finished")
    status, final, _ = await stack.request("GET", f"/schedules/{made['id']}")
    assert status == 200 and final["last_fired_at"] == paused["last_fired_at"]

    # No due time fired twice: as many distinct due times as jobs.
    dues = sorted(due_time(job) for job in jobs)
    assert len(set(dues)) == len(jobs), dues
    # And none missed: the due times are the schedule's grid, from its first due time to its last firing.
    expected = [created + timedelta(seconds=EVERY_S * n) for n in range(1, len(dues) + 1)]
    assert dues == expected, dues
    # The last firing the schedule recorded is the last due time, or the one before when a firing was
    # under way as the pause came (its job registered, its move refused: the schedule was paused).
    moved = [due for due in dues if due <= last_fired]
    assert dues[-1] - last_fired in (timedelta(0), timedelta(seconds=EVERY_S)) and len(moved) >= FIRINGS - 1
    assert all(job["attempt"] == 1 and job["priority"] == 0 and job["type"] == "epub" for job in jobs)

    # Each due time the schedule moved past was moved by one receptionist: their counts add up.
    headers = {"X-Service-Token": (stack.data_dir / "service_token").read_text()}
    fired = []
    for name in ("receptionist-1", "receptionist-2"):
        async with stack.session.get(stack.service(name)["url"] + "/status", headers=headers) as resp:
            fired.append((await resp.json())["schedules"]["fired"])
    assert sum(fired) == len(moved), fired

    status, _, _ = await stack.request("DELETE", f"/schedules/{made['id']}")
    assert status == 204
    assert (await stack.request("GET", f"/schedules/{made['id']}"))[0] == 404
