"""Autoscaled handlers with real processes: ``conveyor up --handlers 1 --max-handlers 4`` under 200 pdf
exports grows to 4 handlers, finishes every job once, and goes back to 1 after the quiet periods; each
decision is in ``stack.json`` and in the central log with its reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import Stack, alive
from tests.support import gauges, wait_until

TIME_SCALE = "0.05"  # a pdf export: 1.25 s
JOBS = 200


def handlers_running(stack: Stack) -> list[dict[str, Any]]:
    return [s for s in stack.state()["services"] if s["name"].startswith("handler-") and not s["standby"]]


@pytest.mark.timeout(300)
async def test_handlers_scale_up_under_load_and_back_down_when_quiet(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--max-handlers", "4", "--scale-down-after", "2",
                              "--time-scale", TIME_SCALE, "--rate-limit", "1000", "--rate-burst", "1000",
                              env={"HANDLER_CONCURRENCY": "4"})
    assert len(handlers_running(stack)) == 1 and stack.state()["autoscale"]["max_handlers"] == 4

    async def submit(i: int) -> str:
        status, job, _ = await stack.request("POST", "/exports", json={"bookId": f"b{i}", "type": "pdf"})
        assert status == 201, job
        return str(job["id"])

    ids = await asyncio.gather(*(submit(i) for i in range(JOBS)))

    # The same signal for a platform's autoscaler: the scheduler's queue gauges, the handlers' slots.
    token = (stack.data_dir / "service_token").read_text()
    headers = {"X-Service-Token": token}
    async with stack.session.get(stack.service("scheduler")["url"] + "/metrics", headers=headers) as resp:
        scheduler = gauges(await resp.text())
    assert scheduler[("conveyor_queue_ready", (("queue", "export"),))] > 0
    async with stack.session.get(stack.service("handler-1")["url"] + "/metrics", headers=headers) as resp:
        handler = gauges(await resp.text())
    assert handler[("conveyor_handler_slots", (("state", "busy"),))] + \
        handler[("conveyor_handler_slots", (("state", "free"),))] == 4
    most = 0
    waiting = set(ids)

    async def all_finished() -> bool:
        nonlocal most
        most = max(most, len(handlers_running(stack)))
        for job_id in list(waiting)[:20]:
            status, job, _ = await stack.request("GET", f"/jobs/{job_id}")
            assert status == 200 and job["state"] in ("pending", "processing", "finished"), job
            if job["state"] == "finished":
                waiting.discard(job_id)
        return not waiting

    await wait_until(all_finished, timeout_s=120, interval_s=0.2, what=f"{JOBS} pdf exports finished")
    assert most == 4, stack.state()["autoscale"]

    # Quiet: one handler fewer every 2 s quiet period, back to the minimum.
    async def back_to_one() -> bool:
        return len(handlers_running(stack)) == 1

    await wait_until(back_to_one, timeout_s=60, interval_s=0.2, what="the handlers scaled back to 1")
    stopped = [s for s in stack.state()["services"] if s["name"].startswith("handler-") and s["standby"]]
    assert len(stopped) == 3 and not any(alive(s["pid"]) for s in stopped)  # stopped, not restarted

    # No job lost or run twice: each finished on its first attempt.
    for job_id in ids:
        status, job, _ = await stack.request("GET", f"/jobs/{job_id}")
        assert status == 200 and (job["state"], job["attempt"]) == ("finished", 1), job

    decisions = stack.state()["autoscale"]["decisions"]
    assert [d["action"] for d in decisions] == ["up"] * 3 + ["down"] * 3
    assert all(d["reason"] for d in decisions) and decisions[0]["handlers"] == 2
    assert "jobs ready" in decisions[0]["reason"] and "quiet for" in decisions[-1]["reason"]

    # The scheduler's /status shows the launcher's last report, decisions and reasons included.
    async with stack.session.get(stack.service("scheduler")["url"] + "/status", headers=headers) as resp:
        [(name, reported)] = (await resp.json())["autoscale"].items()
    assert name.startswith("launcher@") and reported["handlers"] == 1 and not reported["stale"]
    assert [d["action"] for d in reported["decisions"]] == [d["action"] for d in decisions]

    # The launcher's decisions are in the central log too.
    logging_url = stack.service("logging_service")["url"]

    async def logged() -> bool:
        async with stack.session.get(f"{logging_url}/logs", params={"service": "launcher", "limit": "100"},
                                     headers={"X-Service-Token": token}) as resp:
            lines = (await resp.json())["items"]
        return sum("autoscale:" in line["message"] for line in lines) == 6

    await wait_until(logged, timeout_s=10, what="the autoscale decisions in the central log")
