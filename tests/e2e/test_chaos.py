"""Chaos: kill a handler, then the scheduler, then the registry while jobs run. Nothing accepted is lost,
and nothing is finished twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack
from tests.support import wait_until

JOBS = 300
TASK_S = 0.4


async def submit_all(stack: Stack) -> set[str]:
    """Submit JOBS tasks from 10 clients; a refused or broken submission is retried with the same
    Idempotency-Key until it is accepted, as a careful client would."""
    accepted: set[str] = set()
    numbers = iter(range(JOBS))

    async def client() -> None:
        for n in numbers:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, job, _ = await stack.request(
                        "POST", "/tasks", json={"description": f"chaos {n}", "duration_s": TASK_S},
                        headers={"Idempotency-Key": f"chaos-{n}"})
                except aiohttp.ClientError:
                    status = 0
                if status in (200, 201):
                    accepted.add(job["id"])
                    break
                assert time.monotonic() < deadline, f"task {n} never accepted (last status {status})"
                await asyncio.sleep(0.1)

    await asyncio.gather(*(client() for _ in range(10)))
    return accepted


async def kill_and_wait_restart(stack: Stack, name: str) -> None:
    """SIGKILL a service; the launcher restarts it; wait until it answers /health again."""
    before = stack.service(name)
    os.kill(before["pid"], signal.SIGKILL)

    async def restarted() -> bool:
        now = stack.service(name)
        if now["restarts"] == before["restarts"]:
            return False
        try:
            async with stack.session.get(now["url"] + "/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(restarted, timeout_s=30, interval_s=0.05, what=f"{name} restarted")


async def test_nothing_is_lost_or_finished_twice_when_services_die(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "3", "--time-scale", "1", "--rate-limit", "0", env={
        "HANDLER_CONCURRENCY": "8", "HANDLER_LEASE_S": "3", "HANDLER_HEARTBEAT_S": "0.5",
        "RECEPTIONIST_TASK_FAIL_PROBABILITY": "0.1", "RECEPTIONIST_SWEEP_INTERVAL_S": "1",
        "RECEPTIONIST_SWEEP_PENDING_AFTER_S": "2", "RECEPTIONIST_SWEEP_PROCESSING_AFTER_S": "4",
    })
    token = (stack.data_dir / "service_token").read_text()
    registry = stack.service("registry")["url"]
    headers = {"X-Service-Token": token}

    killed = {name: stack.service(name)["pid"] for name in ("handler-1", "scheduler", "registry")}
    submitting = asyncio.create_task(submit_all(stack))
    await asyncio.sleep(1.0)  # let work start everywhere
    os.kill(killed["handler-1"], signal.SIGKILL)
    await asyncio.sleep(1.0)
    await kill_and_wait_restart(stack, "scheduler")
    await asyncio.sleep(1.0)
    await kill_and_wait_restart(stack, "registry")
    accepted = await submitting
    assert len(accepted) == JOBS

    # The launcher's own events are in the central log: each start (kept from before the logging service
    # was up), each crash with its exit code and backoff, each restart.
    expected = {"started logging_service (pid ", "started gateway (pid "}
    for name, pid in killed.items():
        expected |= {f"started {name} (pid {pid})", f"{name} (pid {pid}) exited with code -9 (SIGKILL); restarting in 1s",
                     f"restarted {name} (pid {stack.service(name)['pid']}, restart #1)"}

    async def launcher_logged() -> bool:
        async with stack.session.get(stack.service("logging_service")["url"] + "/logs", headers=headers,
                                     params={"service": "launcher", "limit": "500"}) as resp:
            messages = [line["message"] for line in (await resp.json())["items"]]
        return all(any(message.startswith(want) for message in messages) for want in expected)

    await wait_until(launcher_logged, timeout_s=15, what="the launcher's starts, crashes and restarts in the central log")

    async def counts() -> dict[str, int] | None:
        try:
            async with stack.session.get(registry + "/counts", params={"kind": "task"}, headers=headers) as resp:
                current = await resp.json()
        except aiohttp.ClientError:
            return None
        return current if current["pending"] == current["processing"] == 0 else None

    final = await wait_until(counts, timeout_s=180, interval_s=0.25, what="every accepted job to end")
    assert final["finished"] + final["failed"] + final["cancelled"] == JOBS
    assert final["finished"] > 0

    # Count transitions, not only end states: the registry's history of every change.
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        async with stack.session.get(registry + "/events", params={"after": after, "limit": 1000},
                                     headers=headers) as resp:
            items = (await resp.json())["items"]
        if not items:
            break
        events.extend(items)
        after = items[-1]["seq"]
    created = {e["job_id"] for e in events if e["type"] == "created"}
    assert accepted <= created, "an accepted job is missing from the registry"
    finished_count: dict[str, int] = {}
    for event in events:
        if event["state"] == "finished" and event["previous_state"] != "finished":
            finished_count[event["job_id"]] = finished_count.get(event["job_id"], 0) + 1
    assert finished_count and max(finished_count.values()) == 1, "a job was finished more than once"
    assert len(finished_count) == final["finished"]
    for job_id in accepted:
        async with stack.session.get(f"{registry}/jobs/{job_id}", headers=headers) as resp:
            assert (await resp.json())["state"] in ("finished", "failed")
