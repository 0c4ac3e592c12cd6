"""The registry's job metrics (``/metrics``), per kind, read with prometheus_client's own parser."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from registry.app import create_app
from registry.settings import Settings
from tests.registry.test_registry_api import patch, post_job


async def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await client.get("/metrics")).text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_counters_and_histograms_follow_each_kinds_jobs(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(Settings(store_url="memory://")))
    done = await post_job(client)
    retried = await post_job(client, max_attempts=2)
    cancelled = await post_job(client)
    task = await post_job(client, kind="task", type="demo", payload={"description": "t"})

    await patch(client, done["id"], attempt=1, state="processing")
    await patch(client, done["id"], attempt=1, progress=0.5)  # a progress report: no new start
    await patch(client, done["id"], attempt=1, state="finished", result={"ok": True})
    await patch(client, done["id"], attempt=1, state="finished", result={"ok": True})  # a repeat: counted once
    await patch(client, retried["id"], attempt=1, state="processing")
    await patch(client, retried["id"], attempt=1, state="pending", error="RuntimeError: once")
    await patch(client, retried["id"], attempt=2, state="processing")
    await patch(client, retried["id"], attempt=2, state="failed", error="RuntimeError: twice")
    resp = await client.post(f"/jobs/{cancelled['id']}/cancel")
    assert resp.status == 200

    found = await samples(client)
    export: Any = (("kind", "export"),)

    def count(name: str, kind: Any = export) -> float:
        return found.get((f"conveyor_jobs_{name}_total", kind), 0.0)

    assert {name: count(name) for name in ("submitted", "started", "retried", "finished", "failed",
                                           "dead_lettered", "cancelled")} == {
        "submitted": 3, "started": 3, "retried": 1, "finished": 1, "failed": 2, "dead_lettered": 1, "cancelled": 1}
    assert count("submitted", (("kind", "task"),)) == 1 and count("started", (("kind", "task"),)) == 0
    assert found[("conveyor_job_wait_seconds_count", export)] == 2  # first starts only
    assert found[("conveyor_job_run_seconds_count", export)] == 3  # finished, failed and failed again
    assert task["kind"] == "task"


async def test_the_wait_of_a_delayed_job_counts_from_its_run_at(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(Settings(store_url="memory://")))
    # Due a day ago (a time past means at once): its wait counts from submission, as any job's.
    past = await post_job(client, run_at=(datetime.now(timezone.utc) - timedelta(days=1)).isoformat())
    # Due in an hour yet started now (as if early): no wait, and never a negative one.
    later = await post_job(client, run_at=(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat())
    for job in (past, later):
        await patch(client, job["id"], attempt=1, state="processing")

    found = await samples(client)
    export: Any = (("kind", "export"),)
    assert found[("conveyor_job_wait_seconds_count", export)] == 2
    assert found[("conveyor_job_wait_seconds_sum", export)] < 60  # neither the day past nor the hour ahead
    assert found[("conveyor_job_wait_seconds_bucket", (*export, ("le", "0.005")))] >= 1
