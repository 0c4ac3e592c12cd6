"""Failover end to end: ``conveyor up --registries 2 --schedulers 2`` on PostgreSQL and Redis, and one
registry and one scheduler SIGKILLed while a few hundred tasks are submitted and run. Every submission is
answered 2xx, or 503 with ``Retry-After``; every accepted job ends, and ends once (the registry's history
of every change shows no job finished twice)."""

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
CLIENTS = 10
TASK_S = 0.3


async def submit_each_once(stack: Stack, accepted: set[str], answers: list[tuple[int, str | None]]) -> None:
    """Submit JOBS tasks from CLIENTS clients, each once, into ``accepted`` (the ids of the 2xx answers) and
    ``answers`` (every answer's status, with its ``Retry-After``)."""
    numbers = iter(range(JOBS))

    async def client() -> None:
        for n in numbers:
            status, job, headers = await stack.request(
                "POST", "/tasks", json={"description": f"failover {n}", "duration_s": TASK_S},
                headers={"Idempotency-Key": f"failover-{n}"})
            answers.append((status, headers.get("Retry-After")))
            if status in (200, 201):
                accepted.add(job["id"])

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def answered(answers: list[Any], n: int) -> None:
    async def enough() -> bool:
        return len(answers) >= n

    await wait_until(enough, timeout_s=60, interval_s=0.01, what=f"{n} answers")


async def restarted(stack: Stack, name: str) -> None:
    """The launcher restarted ``name`` and it answers /health again."""

    async def healthy() -> bool:
        now = stack.service(name)
        if now["restarts"] < 1:
            return False
        try:
            async with stack.session.get(now["url"] + "/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(healthy, timeout_s=30, interval_s=0.1, what=f"{name} restarted")


async def test_two_registries_and_two_schedulers_lose_nothing_when_one_of_each_is_killed(
        postgres_url: str, redis_url: str, start_stack: Any) -> None:
    # The backends first: their fixtures then outlive the stack (the schema is dropped after it stopped).
    stack = await start_stack("--registries", "2", "--schedulers", "2", "--handlers", "2", "--time-scale", "1",
                              "--rate-limit", "0", env={
        "REGISTRY_STORE_URL": postgres_url, "SCHEDULER_STORE_URL": redis_url,
        "HANDLER_CONCURRENCY": "8", "HANDLER_LEASE_S": "3", "HANDLER_HEARTBEAT_S": "0.5",
        "RECEPTIONIST_TASK_FAIL_PROBABILITY": "0.1", "RECEPTIONIST_SWEEP_INTERVAL_S": "1",
        "RECEPTIONIST_SWEEP_PENDING_AFTER_S": "2", "RECEPTIONIST_SWEEP_PROCESSING_AFTER_S": "4",
    })
    names = [s["name"] for s in stack.state()["services"]]
    assert {"registry-1", "registry-2", "scheduler-1", "scheduler-2"} <= set(names), names
    headers = {"X-Service-Token": (stack.data_dir / "service_token").read_text()}
    registry = stack.service("registry-2")["url"]  # the one left alone, to read the outcome from

    accepted: set[str] = set()
    answers: list[tuple[int, str | None]] = []
    submitting = asyncio.create_task(submit_each_once(stack, accepted, answers))
    # receptionist-1 and handler-1 call registry-1 first, receptionist-2 and handler-2 scheduler-2 first.
    await answered(answers, JOBS // 4)
    os.kill(stack.service("registry-1")["pid"], signal.SIGKILL)
    await answered(answers, JOBS // 2)
    os.kill(stack.service("scheduler-2")["pid"], signal.SIGKILL)
    await submitting

    assert len(answers) == JOBS
    unclear = [(status, retry_after) for status, retry_after in answers
               if status not in (200, 201) and not (status == 503 and retry_after)]
    assert not unclear, f"answers neither 2xx nor 503 with Retry-After: {unclear}"
    assert accepted, "nothing was accepted"
    await restarted(stack, "registry-1")
    await restarted(stack, "scheduler-2")
    # The handlers that called the killed instances first failed over to the others.
    for handler, service, killed in (("handler-1", "registry", "registry-1"), ("handler-2", "scheduler", "scheduler-2")):
        async with stack.session.get(stack.service(handler)["url"] + "/status", headers=headers) as resp:
            instances = (await resp.json())["instances"][service]
        assert instances[0]["url"] == stack.service(killed)["url"] and instances[0]["failures"] >= 1, instances
        assert instances[1]["requests"] > 0, instances

    async def all_ended() -> dict[str, str] | None:
        states = {}
        try:
            for job_id in accepted:
                async with stack.session.get(f"{registry}/jobs/{job_id}", headers=headers) as resp:
                    states[job_id] = (await resp.json())["state"]
        except aiohttp.ClientError:
            return None
        return states if all(s in ("finished", "failed", "cancelled") for s in states.values()) else None

    started = time.monotonic()
    states = await wait_until(all_ended, timeout_s=180, interval_s=0.5, what="every accepted job to end")
    assert "finished" in states.values(), f"nothing finished in {time.monotonic() - started:.0f}s"

    # Count transitions, not only end states: every change the registry recorded.
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
    terminal = ("finished", "failed", "cancelled")
    ended: dict[str, int] = {}
    for event in events:
        if event["state"] in terminal and event["previous_state"] not in terminal:
            ended[event["job_id"]] = ended.get(event["job_id"], 0) + 1
    assert {job_id: ended.get(job_id, 0) for job_id in accepted} == dict.fromkeys(accepted, 1), \
        "an accepted job ended more than once, or never"
