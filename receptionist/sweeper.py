"""The sweeper: every job the registry holds as unfinished must be in a queue, or be made final.

It closes the gaps between the registry and the scheduler that a death can open:

- a **pending** job that no queue holds (a receptionist died between registering and enqueueing it, or the
  scheduler could not be reached then) is queued again;
- a **pending** job whose entry is dead (an operator's redrive that stopped halfway) is queued again;
- a **processing** job whose entry is dead (its handler died during the last attempt, so the lease expired
  into the dead-letter queue) is marked ``failed``;
- a **processing** job that no queue holds is marked ``cancelled`` when a cancel was asked (its lease
  expired after the cancel), else queued again (its attempts go on from where they were).

Every receptionist runs one, but only one sweeps at a time: a sweep first takes the scheduler's upkeep lock
``sweeper`` (:mod:`scheduler.locks`: a Redis key set ``NX PX`` when schedulers share Redis), renews it
before each page of jobs it acts on, stops as soon as it lost it, and gives it up when done. A receptionist
that died mid-sweep holds the others off for ``sweep_lock_s`` at most. The lock is what keeps two sweepers
off one job; every step is idempotent besides (enqueue on the job id, registry updates fenced by
attempt), so a sweeper paused past its lock's time, whose next step races the new holder's, still does no
harm. A job is only the sweeper's business once untouched for a while, so work in flight is left alone.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from loguru import logger

from receptionist.queueing import enqueue
from receptionist.settings import Settings
from receptionist.upkeep import every
from shared.contract import JobState, utcnow
from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.kinds import KINDS

PAGE = 500
#: The scheduler's lock that one sweeper at a time holds.
LOCK = "sweeper"


class Sweeper:
    def __init__(self, settings: Settings, registry: ServiceClient, scheduler: ServiceClient) -> None:
        self.settings = settings
        self.registry = registry
        self.scheduler = scheduler
        self.counters = {"sweeps": 0, "requeued": 0, "failed": 0, "cancelled": 0, "errors": 0, "skipped": 0}
        #: Who this sweeper is to the lock: its instance, and a nonce so that a restarted one is another.
        self.holder = f"{settings.instance_name('receptionist')}:{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        """Sweep every ``sweep_interval_s`` (jittered, so receptionists drift apart) until cancelled."""
        await every(self.settings.sweep_interval_s, self.sweep_once, "sweep", self.counters)

    async def sweep_once(self) -> dict[str, int] | None:
        """One pass over the pending and processing jobs; returns what it did, or None when another
        sweeper holds the lock (nothing was done)."""
        if not await self._lock():
            self.counters["skipped"] += 1
            return None
        done = {"requeued": 0, "failed": 0, "cancelled": 0}
        try:
            await self._sweep(done)
            self.counters["sweeps"] += 1
        finally:
            with contextlib.suppress(UpstreamError):
                await self.scheduler.post(f"/locks/{LOCK}/release", json={"holder": self.holder})
            for key, n in done.items():
                self.counters[key] += n
        return done

    async def _lock(self) -> bool:
        """Take the sweeper's lock, or renew it: False when another sweeper has it."""
        _, answer = await self.scheduler.post(f"/locks/{LOCK}", json={"holder": self.holder,
                                                                     "ttl_s": self.settings.sweep_lock_s})
        return bool(answer["held"])

    async def _sweep(self, done: dict[str, int]) -> None:
        now = utcnow()
        for state, after_s in ((JobState.PENDING, self.settings.sweep_pending_after_s),
                               (JobState.PROCESSING, self.settings.sweep_processing_after_s)):
            async for jobs in self._pages(state, now - timedelta(seconds=after_s)):
                _, data = await self.scheduler.post("/queues/states", json={"job_ids": [j["id"] for j in jobs]})
                held = data["states"]
                if not await self._lock():  # ran out (a long pause?) and another took it: leave it theirs
                    logger.warning("sweep stopped: the sweeper's lock went to another receptionist")
                    return
                for job in jobs:
                    action = await self._settle(job, held.get(job["id"]))
                    if action:
                        done[action] += 1

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
