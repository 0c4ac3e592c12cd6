"""Priorities and delays through the whole stack, real processes (``conveyor up``), driven through the
gateway: one handler running one job at a time, so the order in which jobs start is the scheduler's."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.e2e.conftest import Stack
from tests.support import wait_until

TIME_SCALE = "0.1"  # a task of duration_s 20 runs 2 s


async def task(stack: Stack, duration_s: float, **scheduling: Any) -> dict[str, Any]:
    status, job, _ = await stack.request("POST", "/tasks", json={"description": f"{scheduling}", "duration_s": duration_s,
                                                                "fail_probability": 0, **scheduling})
    assert status == 201, job
    return dict(job)


async def job(stack: Stack, job_id: str) -> dict[str, Any]:
    status, body, _ = await stack.request("GET", f"/jobs/{job_id}")
    assert status == 200, body
    return dict(body)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_high_priority_job_runs_before_the_lows_waiting_and_a_delayed_one_waits(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", TIME_SCALE, "--rate-limit", "100",
                              "--rate-burst", "100", env={"HANDLER_CONCURRENCY": "1"})
    blocker = await task(stack, 30)

    async def blocker_runs() -> bool:
        return (await job(stack, blocker["id"]))["state"] == "processing"

    await wait_until(blocker_runs, timeout_s=30, interval_s=0.05, what="the first task running")
    lows = [await task(stack, 2) for _ in range(3)]
    high = await task(stack, 2, priority=10)
    assert (await job(stack, high["id"]))["priority"] == 10

    async def all_finished() -> list[dict[str, Any]] | None:
        jobs = [await job(stack, j["id"]) for j in (blocker, *lows, high)]
        assert all(j["state"] in ("pending", "processing", "finished") for j in jobs), jobs
        return jobs if all(j["state"] == "finished" for j in jobs) else None

    jobs = await wait_until(all_finished, timeout_s=60, interval_s=0.1, what="every task finished")
    assert all(j["attempt"] == 1 for j in jobs), jobs  # each started once: started_at is its only start
    started = {j["id"]: at(j["started_at"]) for j in jobs}
    # The high one was submitted last, while the lows waited: it ran next, then the lows in their order.
    order = sorted(started, key=started.__getitem__)
    assert order == [blocker["id"], high["id"], *(low["id"] for low in lows)]

    submitted = datetime.now().astimezone()
    delayed = await task(stack, 1, delay_s=3)
    run_at = at((await job(stack, delayed["id"]))["run_at"])
    assert submitted + timedelta(seconds=3) <= run_at <= submitted + timedelta(seconds=5)

    async def delayed_finished() -> dict[str, Any] | None:
        view = await job(stack, delayed["id"])
        if datetime.now().astimezone() < run_at:  # read wholly before its time
            assert view["state"] == "pending" and view["started_at"] is None, view
        return view if view["state"] == "finished" else None

    done = await wait_until(delayed_finished, timeout_s=30, interval_s=0.1, what="the delayed task finished")
    # Not before its time (the idle handler was waiting), and soon after it: the scheduler wakes at run_at.
    assert run_at <= at(done["started_at"]) <= run_at + timedelta(seconds=5)
