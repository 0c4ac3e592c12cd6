"""Only one sweeper sweeps at a time: two receptionists sweeping at once over the same jobs, and a sweeper
that finds the lock held by another. A real registry and scheduler (memory stores) on loopback."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from receptionist.app import SWEEPER, create_app
from receptionist.settings import Settings

JOBS = 30


def settings(core: Any, tmp_path: Path, name: str) -> Settings:
    return Settings(registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
                    sweep_interval_s=0, sweep_pending_after_s=0, time_scale=0, instance=name)


async def unqueued_jobs(core: Any, n: int) -> list[str]:
    """Pending jobs no queue holds, as a receptionist that died before enqueueing them leaves them."""
    jobs = [{"id": str(uuid.uuid4()), "kind": "task", "type": "task", "owner": "ada", "max_attempts": 3,
             "payload": {"description": "swept", "duration_s": 0, "fail_probability": 0}} for _ in range(n)]
    status, _ = await core.registry("POST", "/jobs/batch", json={"jobs": jobs})
    assert status == 200
    return [job["id"] for job in jobs]


async def test_two_sweepers_at_once_one_sweeps(aiohttp_client: Any, core: Any, tmp_path: Path) -> None:
    apps = [create_app(settings(core, tmp_path, f"receptionist-{i}")) for i in (1, 2)]
    for app in apps:
        await aiohttp_client(app)
    ids = await unqueued_jobs(core, JOBS)
    outcomes = await asyncio.gather(*(app[SWEEPER].sweep_once() for app in apps))
    assert sorted(outcomes, key=lambda o: o is None) == [{"requeued": JOBS, "failed": 0, "cancelled": 0}, None]
    assert sorted(app[SWEEPER].counters["skipped"] for app in apps) == [0, 1]
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": ids})
    assert held["states"] == dict.fromkeys(ids, "ready")
    # The lock was given up: the next sweep, by either, finds nothing left to do.
    assert await apps[1][SWEEPER].sweep_once() == {"requeued": 0, "failed": 0, "cancelled": 0}


async def test_a_sweeper_leaves_the_jobs_alone_while_another_holds_the_lock(aiohttp_client: Any, core: Any,
                                                                             tmp_path: Path) -> None:
    app = create_app(settings(core, tmp_path, "receptionist-1"))
    await aiohttp_client(app)
    ids = await unqueued_jobs(core, 3)
    status, answer = await core.scheduler("POST", "/locks/sweeper", json={"holder": "receptionist-2:x", "ttl_s": 60})
    assert status == 200 and answer["held"] is True
    assert await app[SWEEPER].sweep_once() is None
    _, held = await core.scheduler("POST", "/queues/states", json={"job_ids": ids})
    assert held["states"] == {}
    await core.scheduler("POST", "/locks/sweeper/release", json={"holder": "receptionist-2:x"})
    assert await app[SWEEPER].sweep_once() == {"requeued": 3, "failed": 0, "cancelled": 0}
