"""Job metrics on a live stack (``conveyor up``, real processes), read with prometheus_client's own parser:
jobs of every outcome go through the gateway (finished, failed after retries and dead-lettered, cancelled
while waiting, cancelled while running), then every counter and histogram of the registry, every queue
gauge of the scheduler (a paused queue holding ready and delayed jobs beside a queue with a leased and a
dead one), the handler's busy and free slots and the services' log shipping counters are read back."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.test_identity_e2e import cli
from tests.support import wait_until

CONCURRENCY = 3
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(stack: Stack, service: str) -> Samples:
    headers = {"X-Service-Token": (stack.data_dir / "service_token").read_text().strip()}
    async with stack.session.get(stack.service(service)["url"] + "/metrics", headers=headers) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def submit(stack: Stack, path: str, body: dict[str, Any]) -> str:
    status, job, _ = await stack.request("POST", path, json=body)
    assert status == 201, job
    return str(job["id"])


async def reaches(stack: Stack, job_id: str, state: str) -> None:
    async def there() -> bool:
        status, job, _ = await stack.request("GET", f"/jobs/{job_id}")
        assert status == 200 and job["state"] in ("pending", "processing", state), job
        return bool(job["state"] == state)

    await wait_until(there, timeout_s=60, interval_s=0.1, what=f"job {job_id} {state}")


@pytest.mark.timeout(240)
async def test_every_outcome_shows_in_the_job_metrics(start_stack: Any) -> None:
    # Time scale 1: a task's duration is real (0 for the quick ones), and so is the retry backoff (~1-3 s).
    stack = await start_stack("--handlers", "1", "--time-scale", "1", "--rate-limit", "1000", "--rate-burst", "1000",
                              env={"HANDLER_CONCURRENCY": str(CONCURRENCY)})
    data = ["--data-dir", str(stack.data_dir)]
    code, out = await cli("user", "add", "olga", "--password", "olga's secret", "--role", "operator", *data)
    assert code == 0, out
    code, token = await cli("token", "olga", "--password", "olga's secret", *data)
    assert code == 0, token
    operator = {"Authorization": f"Bearer {token.strip()}"}

    # The export queue, paused, takes two jobs that wait ready and one that waits for its time.
    status, _, _ = await stack.request("POST", "/queues/export/pause", headers=operator)
    assert status == 200
    for n in range(2):
        await submit(stack, "/exports", {"bookId": f"b{n}", "type": "pdf"})
    await submit(stack, "/exports", {"bookId": "later", "type": "pdf", "delay_s": 3600})

    done = await submit(stack, "/tasks", {"description": "ok", "duration_s": 0, "fail_probability": 0})
    doomed = await submit(stack, "/tasks", {"description": "doomed", "duration_s": 0, "fail_probability": 1})
    waiting = await submit(stack, "/tasks", {"description": "later", "delay_s": 3600})
    running = await submit(stack, "/tasks", {"description": "long", "duration_s": 3600, "fail_probability": 0})
    status, _, _ = await stack.request("DELETE", f"/jobs/{waiting}")
    assert status in (200, 202)
    await reaches(stack, done, "finished")
    await reaches(stack, doomed, "failed")
    await reaches(stack, waiting, "cancelled")
    await reaches(stack, running, "processing")

    registry = await metrics(stack, "registry")
    task, export = (("kind", "task"),), (("kind", "export"),)
    counters = {name: registry.get((f"conveyor_jobs_{name}_total", task), 0.0)
                for name in ("submitted", "started", "retried", "finished", "failed", "dead_lettered", "cancelled")}
    # started: done once, doomed three times, running once; failed: each of doomed's attempts.
    assert counters == {"submitted": 4, "started": 5, "retried": 2, "finished": 1, "failed": 3, "dead_lettered": 1,
                        "cancelled": 1}
    assert registry[("conveyor_jobs_submitted_total", export)] == 3
    assert registry.get(("conveyor_jobs_started_total", export), 0.0) == 0
    assert registry[("conveyor_job_wait_seconds_count", task)] == 3  # first starts only
    assert registry[("conveyor_job_run_seconds_count", task)] == 4  # done's attempt and doomed's three
    assert registry[("conveyor_job_run_seconds_bucket", (*task, ("le", "+Inf")))] == 4
    assert registry[("conveyor_job_wait_seconds_sum", task)] >= 0

    scheduler = await metrics(stack, "scheduler")

    def queue(name: str) -> dict[str, float]:
        return {gauge: scheduler[(f"conveyor_queue_{gauge}", (("queue", name),))]
                for gauge in ("ready", "delayed", "leased", "dead", "paused", "oldest_ready_age_seconds")}

    exports, tasks = queue("export"), queue("task")
    assert exports["oldest_ready_age_seconds"] > 0
    assert {**exports, "oldest_ready_age_seconds": None} == {
        "ready": 2, "delayed": 1, "leased": 0, "dead": 0, "paused": 1, "oldest_ready_age_seconds": None}
    assert tasks == {"ready": 0, "delayed": 0, "leased": 1, "dead": 1, "paused": 0, "oldest_ready_age_seconds": 0}

    handler = await metrics(stack, "handler-1")
    assert (handler[("conveyor_handler_slots", (("state", "busy"),))],
            handler[("conveyor_handler_slots", (("state", "free"),))]) == (1, CONCURRENCY - 1)
    for service, samples in (("registry", registry), ("scheduler", scheduler), ("handler-1", handler)):
        assert samples[("conveyor_log_lines_dropped_total", ())] == 0, service
        assert samples[("conveyor_log_lines_shipped_total", ())] > 0, service

    # Cancelled while running: its handler stops it and reports it; the slot is free again.
    status, _, _ = await stack.request("DELETE", f"/jobs/{running}")
    assert status in (200, 202)
    await reaches(stack, running, "cancelled")

    async def slot_free() -> bool:
        return (await metrics(stack, "handler-1"))[("conveyor_handler_slots", (("state", "busy"),))] == 0

    await wait_until(slot_free, timeout_s=30, interval_s=0.1, what="the handler's slot free again")
    registry = await metrics(stack, "registry")
    assert registry[("conveyor_jobs_cancelled_total", task)] == 2
    assert registry[("conveyor_job_run_seconds_count", task)] == 4  # a cancelled run is no finished or failed one
