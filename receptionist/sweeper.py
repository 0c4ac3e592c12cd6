"""The sweeper: every job the registry holds as unfinished must be in a queue, or be made final.

It closes the gaps between the registry and the scheduler that a death can open:

- a **pending** job that no queue holds (a receptionist died between registering and enqueueing it, or the
  scheduler could not be reached then) is queued again;
- a **pending** job whose entry is dead (an operator's redrive that stopped halfway) is queued again;
- a **processing** job whose entry is dead (its handler died during the last attempt, so the lease expired
  into the dead-letter queue) is marked ``failed``;
- a **processing** job that no queue holds is marked ``cancelled`` when a cancel was asked (its lease
  expired after the cancel), else queued again (its attempts go on from where they were).

Every receptionist runs one; they may overlap, since every step is idempotent (enqueue on the job id,
registry updates fenced by attempt). A job is only the sweeper's business once untouched for a while, so
work in flight is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from loguru import logger

from receptionist.queueing import enqueue
from receptionist.settings import Settings
from shared.contract import JobState, utcnow
from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.kinds import KINDS

PAGE = 500


class Sweeper:
    def __init__(self, settings: Settings, registry: ServiceClient, scheduler: ServiceClient) -> None:
        self.settings = settings
        self.registry = registry
        self.scheduler = scheduler
        self.counters = {"sweeps": 0, "requeued": 0, "failed": 0, "cancelled": 0, "errors": 0}

    async def run(self) -> None:
        """Sweep every ``sweep_interval_s`` (jittered, so receptionists drift apart) until cancelled."""
        interval = self.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.sweep_once()
            except UpstreamError as exc:
                self.counters["errors"] += 1
                logger.warning("sweep stopped early: {}", exc)
            except Exception:  # an upkeep loop logs and carries on
                self.counters["errors"] += 1
                logger.exception("sweep failed")

    async def sweep_once(self) -> dict[str, int]:
        """One pass over the pending and processing jobs; returns what it did."""
        done = {"requeued": 0, "failed": 0, "cancelled": 0}
        now = utcnow()
        for state, after_s in ((JobState.PENDING, self.settings.sweep_pending_after_s),
                               (JobState.PROCESSING, self.settings.sweep_processing_after_s)):
            async for jobs in self._pages(state, now - timedelta(seconds=after_s)):
                _, data = await self.scheduler.post("/queues/states", json={"job_ids": [j["id"] for j in jobs]})
                held = data["states"]
                for job in jobs:
                    action = await self._settle(job, held.get(job["id"]))
                    if action:
                        done[action] += 1
        self.counters["sweeps"] += 1
        for key, n in done.items():
            self.counters[key] += n
        return done

    async def _pages(self, state: JobState, before: Any) -> AsyncIterator[list[dict[str, Any]]]:
        cursor = None
        while True:
            params = {"state": str(state), "updated_before": before.isoformat(), "limit": PAGE}
            if cursor:
                params["cursor"] = cursor
            _, page = await self.registry.get("/jobs", params=params)
            if page["items"]:
                yield page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def _settle(self, job: dict[str, Any], entry: str | None) -> str | None:
        log = logger.bind(job_id=job["id"], state=job["state"], entry=entry)
        if job["state"] == JobState.PROCESSING and entry == "dead":
            return await self._report(job, JobState.FAILED, "failed", log,
                                      "the lease of its last attempt expired (its handler died?)")
        if job["state"] == JobState.PROCESSING and entry is None and job.get("cancel_requested"):
            return await self._report(job, JobState.CANCELLED, "cancelled", log, None)
        if entry is None or entry == "dead":
            if job["kind"] not in KINDS:  # a plugin's kind this receptionist does not load: one that does will
                log.bind(kind=job["kind"]).warning("not queued again by the sweeper: its kind is not registered here")
                return None
            await requeue(self.scheduler, job, self.settings.time_scale, dead=entry == "dead")
            log.warning("queued again by the sweeper: no queue held this {} job", job["state"])
            return "requeued"
        return None

    async def _report(self, job: dict[str, Any], state: JobState, action: str, log: Any,
                      error: str | None) -> str | None:
        update: dict[str, Any] = {"attempt": job["attempt"], "state": state}
        if error:
            update["error"] = error
        try:
            await self.registry.call("PATCH", f"/jobs/{job['id']}", json=update)
        except UpstreamError as exc:
            if exc.upstream_status != 409:  # 409: it moved meanwhile, which settles it too
                raise
            return None
        # The error may quote the job's payload: it goes in meta, which operators see redacted, not the message.
        log.bind(error=error).warning("made {} by the sweeper{}", state,
                                      "" if error else ": cancelled while its lease was lost")
        return action


async def requeue(scheduler: ServiceClient, job: dict[str, Any], time_scale: float, *, dead: bool = False) -> None:
    """Queue a registered job again; a dead entry of it is dropped first (its attempts go on)."""
    if dead:
        with contextlib.suppress(UpstreamError):
            await scheduler.call("DELETE", f"/queues/jobs/{job['id']}")
    await enqueue(scheduler, job, time_scale)
