"""Putting registered jobs into the scheduler's queues: what a queued job carries, whether a queue has
room (backpressure), and how a job is queued again (by the sweeper, or when an operator redrives it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from loguru import logger

from shared.batching import Batcher
from shared.contract import JobCreate, QueuedJob, RetryPolicy
from shared.errors import Unavailable, UpstreamError
from shared.http import ServiceClient
from shared.kinds import kind_spec, queue_for


def queued_job(job: dict[str, Any], time_scale: float) -> QueuedJob:
    """The scheduler's view of a registered job: its kind's retry policy (backoffs scaled like the
    simulated work), timeout, and the attempts already made, so deliveries are never fenced off and only
    the attempts the registry still allows are left (a redriven job's ``max_attempts`` was raised); and
    its priority and ``run_at`` (wall-clock: not scaled), which hold for every time it is queued."""
    spec = kind_spec(job["kind"])
    left = max(1, job["max_attempts"] - job["attempt"])
    retry = RetryPolicy(max_attempts=left, backoff_base_s=spec.retry.backoff_base_s * time_scale,
                        backoff_cap_s=spec.retry.backoff_cap_s * time_scale)
    return QueuedJob(id=job["id"], kind=job["kind"], type=job["type"], payload=job["payload"], owner=job["owner"],
                     retry=retry, timeout_s=spec.timeout_s, request_id=job.get("request_id"),
                     attempts_made=job["attempt"], priority=job.get("priority", 0), run_at=job.get("run_at"))


async def enqueue(scheduler: ServiceClient, job: dict[str, Any], time_scale: float) -> None:
    """Queue a registered job; idempotent on its id. Raises :class:`UpstreamError`."""
    await scheduler.post(f"/queues/{queue_for(job['kind'])}/jobs",
                         json={"jobs": [queued_job(job, time_scale)]})


def creates_batcher(registry: ServiceClient, window_s: float) -> Batcher[JobCreate, tuple[int, dict[str, Any]]]:
    """Registrations made together go to the registry as one ``POST /jobs/batch`` (one commit). Each
    caller gets ``(201 | 200, job)``, or the :class:`UpstreamError` its single POST would have raised."""

    async def send(specs: list[JobCreate]) -> list[tuple[int, dict[str, Any]] | UpstreamError]:
        _, data = await registry.post("/jobs/batch", json={"jobs": specs})  # idempotent: ids are fixed
        return [(r["status"], r["job"]) if r["status"] in (200, 201) else UpstreamError("registry", r["status"], r)
                for r in data["results"]]

    return Batcher(send, window_s=window_s)


def enqueues_batcher(scheduler: ServiceClient, time_scale: float, window_s: float) -> Batcher[dict[str, Any], None]:
    """Registered jobs queued together go to the scheduler as one request (``POST /queues/batch``), whatever
    their queues; a full queue refuses its own jobs alone, each with the error its queue's enqueue had."""

    async def send(jobs: list[dict[str, Any]]) -> list[UpstreamError | None]:
        by_queue: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            by_queue.setdefault(queue_for(job["kind"]), []).append(i)
        # Idempotent on the job ids, like the enqueue of one queue.
        _, data = await scheduler.post("/queues/batch", json={"queues": {
            queue: [queued_job(jobs[i], time_scale) for i in members] for queue, members in by_queue.items()}})
        outcomes: list[UpstreamError | None] = [None] * len(jobs)
        for queue, members in by_queue.items():
            result = data["results"][queue]
            if result["status"] != 200:
                refused = UpstreamError("scheduler", result["status"], result)
                for i in members:
                    outcomes[i] = refused
        return outcomes

    return Batcher(send, window_s=window_s)


class Backpressure:
    """Refuses work early when a queue is full, so a refused submission registers nothing.

    The lengths come from the scheduler and are trusted for ``refresh_s``; the scheduler enforces the limit
    again on enqueue, for the submissions that pass here in the meantime. Once some lengths are known, a
    submission never waits for fresh ones: it is judged on the last, and the next come in the background
    (a submission that waited for them paid a round trip to the scheduler, one in 25 at 100 a second). With
    ``refresh_s`` 0 every submission waits for the scheduler's answer.
    """

    def __init__(self, scheduler: ServiceClient, refresh_s: float) -> None:
        self.scheduler = scheduler
        self.refresh_s = refresh_s
        self._lengths: dict[str, int] = {}
        self._max = 0
        self._known = False
        self._asked_at = float("-inf")
        self._asking: asyncio.Task[None] | None = None
        self.refused = 0

    @property
    def lengths(self) -> dict[str, int]:
        """The queue lengths submissions are judged on now."""
        return dict(self._lengths)

    async def check(self, queue: str) -> None:
        now = time.monotonic()
        if now - self._asked_at >= self.refresh_s and self._asking is None:
            self._asked_at = now
            if self.refresh_s == 0 or not self._known:
                await self._ask()
            else:
                self._asking = asyncio.create_task(self._ask(), name="backpressure-lengths")
                self._asking.add_done_callback(self._asked)
        if self._max and self._lengths.get(queue, 0) >= self._max:
            self.refused += 1
            raise Unavailable(f"the {queue} queue is full; try again later",
                              [{"field": "queue", "message": f"{queue} holds {self._max} jobs, its maximum"}],
                              retry_after_s=max(1.0, self.refresh_s))

    async def _ask(self) -> None:
        try:
            _, data = await self.scheduler.get("/queues/lengths", timeout_s=2)
        except UpstreamError:
            return  # the enqueue will tell
        self._lengths, self._max, self._known = data["lengths"], data["max_queue_length"], True

    def _asked(self, task: asyncio.Task[None]) -> None:
        self._asking = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.opt(exception=exc).warning("could not refresh the queue lengths")

    async def close(self) -> None:
        """Stop a refresh under way (the app is stopping)."""
        if self._asking is not None:
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asking
