"""The firing loop: every receptionist asks the registry, every ``RECEPTIONIST_SCHEDULE_POLL_S``, which
schedules are due (by the registry's clock), and fires each once per due time.

Firing one due time is register, enqueue, advance:

1. register its job, under the idempotency key of (schedule, due time) (:func:`shared.schedules.idempotency_key`)
   in its owner's name: however many receptionists fire it, one job is made, the others find it;
2. queue the job (idempotent on its id). When the scheduler cannot take it, the sweeper queues it later, as
   for any submission whose enqueue failed;
3. move the schedule on (``POST /schedules/{id}/fired``), a compare-and-set on its ``next_run_at``: one
   receptionist wins; the others' 409 only says that another was first.

A receptionist that dies between 1 and 3 leaves the schedule due; the next poll, here or elsewhere, finds
the same job and moves it on. Missed due times (nothing fired the schedule for a while) are coalesced:
the most recent fires once, and the winner logs how many were skipped.

A schedule fires only what its owner could submit at the due time: the registry says who the owner is now
(:class:`~shared.schedules.FiringOwner`). One whose owner lost the ``user`` role or the kind's permission is
paused instead, with a warning (the owner resumes it once they have them again); one whose owner was
removed is paused too, if the registry's removal of their schedules has not come first.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from receptionist.queueing import enqueue
from receptionist.settings import Settings
from receptionist.upkeep import every
from shared.batching import Batcher
from shared.contract import JobCreate, JobState
from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.kinds import KINDS
from shared.schedules import Fired, Firing, idempotency_key


class ScheduleFirer:
    """Fires due schedules; ``counters`` for ``/status``."""

    def __init__(self, settings: Settings, registry: ServiceClient, scheduler: ServiceClient,
                 creates: Batcher[JobCreate, tuple[int, dict[str, Any]]]) -> None:
        self.settings = settings
        self.registry = registry
        self.scheduler = scheduler
        self.creates = creates
        self.counters = {"polls": 0, "fired": 0, "fired_by_another": 0, "skipped": 0, "paused": 0, "errors": 0}

    async def run(self) -> None:
        """Poll every ``schedule_poll_s`` (jittered, so receptionists drift apart) until cancelled."""
        await every(self.settings.schedule_poll_s, self.fire_due, "firing schedules", self.counters)

    async def fire_due(self) -> int:
        """One poll: fire what is due; how many due times this receptionist fired (won)."""
        self.counters["polls"] += 1
        _, data = await self.registry.get("/schedules/due", params={"limit": self.settings.schedule_batch})
        won = 0
        for item in data["items"]:
            if await self.fire(Firing.model_validate(item)):
                won += 1
        return won

    async def fire(self, due: Firing) -> bool:
        """Fire one due time; True when this receptionist moved the schedule on."""
        schedule = due.schedule
        log = logger.bind(schedule_id=str(schedule.id), kind=schedule.kind, due_at=due.due_at.isoformat())
        if schedule.kind not in KINDS:  # a plugin's kind this receptionist does not load: one that does fires it
            log.warning("schedule not fired here: its kind is not registered here")
            return False
        permission = self.settings.kind_permissions.get(str(schedule.kind))
        if due.owner is not None and not due.owner.may_submit(permission):
            await self._pause(due, log, permission)
            return False
        create = JobCreate(kind=schedule.kind, type=schedule.job_type, payload=schedule.payload, owner=schedule.owner,
                           max_attempts=schedule.max_attempts, idempotency_key=idempotency_key(schedule.id, due.due_at),
                           priority=schedule.priority, schedule_id=schedule.id)
        try:
            _, job = await self.creates.submit(create)
        except UpstreamError as exc:
            if exc.upstream_status != 409:
                raise
            # The owner's own submission took the key with another payload: nothing to fire, move on.
            log.error("schedule's job not registered: its idempotency key is taken by another job")
            job = None
        if job is not None and job["state"] == JobState.PENDING:
            try:
                await enqueue(self.scheduler, job, self.settings.time_scale)
            except UpstreamError as exc:
                log.bind(job_id=job["id"]).warning("could not enqueue the schedule's job ({}); the sweeper will", exc)
        try:
            await self.registry.post(f"/schedules/{schedule.id}/fired", json=Fired(
                expected=schedule.next_run_at, due_at=due.due_at, next_run_at=due.next_run_at))
        except UpstreamError as exc:
            if exc.upstream_status not in (404, 409):
                raise
            self.counters["fired_by_another"] += 1
            return False
        self.counters["fired"] += 1
        if job is not None:
            log.bind(job_id=job["id"]).info("schedule fired")
        if due.skipped:
            self.counters["skipped"] += due.skipped
            log.bind(skipped=due.skipped).warning(
                "schedule missed {} due times while nothing fired it; fired once, for the latest", due.skipped)
        return True

    async def _pause(self, due: Firing, log: Any, permission: str | None) -> None:
        """Pause a schedule whose owner may no longer submit its jobs (a 404: it was removed meanwhile)."""
        assert due.owner is not None
        if not due.owner.exists:
            why = "its owner was removed"
        elif permission is not None and permission not in due.owner.permissions:
            why = f"its owner no longer has the {permission} permission"
        else:
            why = "its owner no longer has the user role"
        try:
            await self.registry.post(f"/schedules/{due.schedule.id}/pause")
        except UpstreamError as exc:
            if exc.upstream_status != 404:
                raise
            return
        self.counters["paused"] += 1
        log.bind(owner=due.schedule.owner).warning("schedule paused, not fired: {}", why)
