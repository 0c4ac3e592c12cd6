"""The worker loop: long-poll the scheduler, run each delivery's kind, keep its lease alive, report the
outcome to the registry, then settle the lease.

The order of the two reports is what keeps jobs from being lost or finished twice: the registry hears
the outcome first, the scheduler second. A handler that dies between the two leaves a lease that expires;
the job is handed out again, and the registry refuses the newcomer's "processing" (the job already ended),
so the newcomer only acks it. Every registry report names the delivery's attempt, so a handler that lost
its lease cannot overwrite the work of the one that took over (fencing).

A handler that cannot reach any registry instance takes no jobs until one answers (:class:`Outage`): a job
it cannot report is handed back at once, and dequeuing more would only hand them back in a loop. A
scheduler that cannot be reached is asked again after a backoff too; neither ever spins.

Jobs run in lanes, each with its own poll loop and slots. Kinds without a concurrency limit share one lane
of ``HANDLER_CONCURRENCY`` slots; a kind with a limit (``@kind(..., concurrency=N)``) has a lane of its
own, N slots on each handler process, for its own queue. A lane asks the scheduler for no more jobs than it
has free slots and does not poll while it has none, so a limited kind's waiting jobs stay in its queue,
unleased, for any handler with a free slot, and never wait behind the other kinds' jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
from loguru import logger

from handler.backoff import Backoff, Outage
from handler.context import RunningJob
from handler.lanes import Lane, lanes_of, queues_of
from handler.reports import REJECTED, cut_error, encode_result, refusal, send_reports
from handler.settings import Settings
from shared.artifacts import ArtifactStore
from shared.batching import Batcher
from shared.contract import Delivery, JobState
from shared.datastore import DataStore
from shared.errors import UpstreamError
from shared.fetching import policy_of
from shared.http import ServiceClient
from shared.kinds import KINDS, JobCancelled, KindRegistry, is_permanent
from shared.logs import request_id_var

#: Running jobs whose ids the heartbeat names at most: with the rest of the snapshot, well under the 4 KB
#: a status may hold (:data:`shared.instances.MAX_STATUS_BYTES`), whatever the slots; ``running`` counts all.
RUNNING_IDS = 50


class Worker:
    def __init__(self, settings: Settings, scheduler: ServiceClient, registry: ServiceClient,
                 artifacts: ArtifactStore, datastore: DataStore | None = None, kinds: KindRegistry = KINDS) -> None:
        self.settings = settings
        self.datastore = datastore
        self.scheduler = scheduler
        self.registry = registry
        self.artifacts = artifacts
        self.kinds = kinds
        self.queues = queues_of(settings, kinds)
        self.lanes = lanes_of(self.queues, settings.concurrency, kinds)
        self.running: dict[str, RunningJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._loop_tasks: list[asyncio.Task[None]] = []
        #: ``polls``: dequeue calls; ``dequeued``: deliveries they brought.
        self.counters = {"processed": 0, "succeeded": 0, "failed": 0, "retried": 0, "cancelled": 0,
                         "skipped": 0, "lost": 0, "handed_back": 0, "polls": 0, "dequeued": 0}
        self.registry_outage = Outage(self._registry_answers, Backoff(settings.backoff_base_s, settings.backoff_cap_s))
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        # Reports of jobs that start or end together, and their acks, travel as one request each.
        self.reports: Batcher[tuple[str, dict[str, Any]], dict[str, Any]] = Batcher(
            functools.partial(send_reports, registry), window_s=settings.batch_window_s)
        self.acks: Batcher[Delivery, None] = Batcher(self._send_acks, window_s=settings.ack_window_s, nagle=False)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_tasks = [asyncio.create_task(self._poll_loop(lane), name=f"handler-poll-{lane.name}")
                            for lane in self.lanes]

    async def stop(self) -> None:
        """Stop taking jobs, give running ones ``grace_s`` to finish, then hand the rest back. Safe twice."""
        self._stopping.set()
        loops, self._loop_tasks = self._loop_tasks, []
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._tasks:
            logger.info("stopping: waiting up to {}s for {} running jobs", self.settings.grace_s, len(self._tasks))
            await asyncio.wait(list(self._tasks.values()), timeout=self.settings.grace_s)
        for running in list(self.running.values()):
            running.stop("stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.registry_outage.close()
        await self.reports.close()
        await self.acks.close()

    def status(self) -> dict[str, Any]:
        return {
            **self.counters,
            "running": sorted(self.running),
            "idle": not self._tasks,
            "concurrency": self.settings.concurrency,
            "queues": self.queues,
            "lanes": {lane.name: {"queues": lane.queues, "slots": lane.slots, "running": len(lane.running),
                                  "settling": len(lane.settling)}
                      for lane in self.lanes},
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "registry": self.registry_outage.status(),
            "instances": {"registry": self.registry.report(), "scheduler": self.scheduler.report()},
            "batches": {"reports": {"requests": self.reports.batches, "items": self.reports.items},
                        "acks": {"requests": self.acks.batches, "items": self.acks.items}},
        }

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's snapshot (:mod:`shared.heartbeat`): jobs running (how many, and the ids of the
        first :data:`RUNNING_IDS` taken), slots, queues, and what it did."""
        slots = sum(lane.slots for lane in self.lanes)
        return {"running": len(self.running), "slots": slots,
                "free_slots": max(0, slots - sum(len(lane.running) for lane in self.lanes)), "queues": self.queues,
                "processed": self.counters["processed"], "stopping": self._stopping.is_set(),
                # Last: `conveyor ps` shows a status on one line, and the ids would push the rest off it.
                "running_ids": list(itertools.islice(self.running, RUNNING_IDS))}

    def _note_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    # -- taking work -------------------------------------------------------------------------------------

    async def _registry_answers(self) -> bool:
        try:
            await self.registry.get("/health", timeout_s=2)
        except UpstreamError:
            return False
        return True

    def _unreachable(self, exc: UpstreamError) -> bool:
        """Whether ``exc`` says no registry instance could take the call (as opposed to a refusal), and if so
        begin an outage: no jobs are taken until one answers."""
        if exc.upstream_status != 0 and exc.upstream_status < 500:
            return False
        self.registry_outage.begin(str(exc))
        return True

    async def _poll_loop(self, lane: Lane) -> None:
        backoff = Backoff(self.settings.backoff_base_s, self.settings.backoff_cap_s)
        while not self._stopping.is_set():
            free = lane.free
            if free <= 0:
                lane.slot_free.clear()
                await lane.slot_free.wait()
                continue
            if self.registry_outage.ongoing:
                await self.registry_outage.wait_over()
                continue
            try:
                self.counters["polls"] += 1
                _, data = await self.scheduler.call(
                    "POST", "/dequeue", idempotent=False, timeout_s=self.settings.poll_wait_s + 10,
                    json={"queues": lane.queues, "max": min(free, 100),
                          "wait_s": self.settings.poll_wait_s, "lease_s": self.settings.lease_s},
                )
            except UpstreamError as exc:
                self._note_error(f"dequeue failed: {exc}")
                delay_s = backoff.next_s()
                logger.warning("dequeue failed ({}); trying again in {:.1f}s", exc, delay_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay_s)
                continue
            backoff.reset()
            self.counters["dequeued"] += len(data["deliveries"])
            for raw in data["deliveries"]:
                delivery = Delivery.model_validate(raw)
                key = str(delivery.job.id)
                task = asyncio.create_task(self._process(delivery, lambda key=key, lane=lane: self._ran(key, lane)),
                                           name=f"job-{key}")
                self._tasks[key] = task
                lane.running.add(key)
                task.add_done_callback(lambda _t, key=key, lane=lane: self._done(key, lane))

    def _ran(self, key: str, lane: Lane) -> None:
        """The job's run is over: its slot takes the next job while its outcome is reported and acked."""
        self.running.pop(key, None)
        if key in lane.running:
            lane.running.discard(key)
            lane.settling.add(key)
        lane.slot_free.set()

    def _done(self, key: str, lane: Lane) -> None:
        self._tasks.pop(key, None)
        self.running.pop(key, None)
        lane.running.discard(key)
        lane.settling.discard(key)
        lane.slot_free.set()

    # -- one job -----------------------------------------------------------------------------------------

    async def _process(self, delivery: Delivery, ran: Callable[[], None] = lambda: None) -> None:
        """Run one delivery, then report and settle it; ``ran`` is called as soon as the run is over (the
        slot is free for the next job while the outcome travels to the registry and the scheduler)."""
        job = delivery.job
        request_id_var.set(job.request_id)
        log = logger.bind(job_id=str(job.id), kind=str(job.kind), attempt=delivery.attempt)
        if not await self._mark_processing(delivery, log):
            return
        running = RunningJob(delivery, registry=self.registry, artifacts=self.artifacts,
                             time_scale=self.settings.time_scale,
                             progress_interval_s=self.settings.progress_interval_s, datastore=self.datastore,
                             fetch_policy=policy_of(tuple(self.settings.fetch_allow)))
        self.running[str(job.id)] = running
        heartbeat = asyncio.create_task(self._heartbeat(running), name=f"heartbeat-{job.id}")
        started = time.perf_counter()
        outcome: str
        retry = True
        timeout_s = 0.0
        try:
            spec = self.kinds[job.kind]  # a kind this handler lacks fails the attempt: another may have it
            timeout_s = job.timeout_s or spec.timeout_s
            if spec.timeout_scaled:
                timeout_s = max(timeout_s * self.settings.time_scale, self.settings.min_timeout_s)
            result = await asyncio.wait_for(spec.run(running), timeout=timeout_s)
            # BadResult: the attempt fails for good, naming what cannot be stored
            stored = encode_result(result, running.artifacts_written)
            outcome = "finished"
        except JobCancelled:
            outcome = running.stop_reason or "cancelled"
        except TimeoutError:
            outcome, error = "failed", f"timed out after {timeout_s:g}s"
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if self._stopping.is_set() or (task is not None and task.cancelling()):
                outcome = "stopping"
            else:  # the kind's own (a future it awaited was cancelled): handed back, it would run again at once
                outcome, error = "failed", "CancelledError: raised by the kind's run, which nobody cancelled"
                retry = not is_permanent(exc)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # The kind's own failure (a sys.exit() in it too, which would otherwise end the handler): the
            # attempt fails, the handler carries on.
            outcome, error = "failed", cut_error(f"{type(exc).__name__}: {exc}")
            retry = not is_permanent(exc)  # a refused URL, an unusable file, a bad result: the job fails now
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        duration_s = time.perf_counter() - started
        self.counters["processed"] += 1
        ran()
        if outcome == "finished":
            await self._finish(delivery, running, result, stored, duration_s, log)
        elif outcome == "failed":
            await running.discard_artifacts()
            await self._fail(delivery, error, duration_s, log, retry=retry)
        elif outcome == "cancelled":
            await running.discard_artifacts()
            await self._report_cancelled(delivery, log)
        elif outcome == "lease lost":
            await running.discard_artifacts()
            self.counters["lost"] += 1
            log.warning("lease lost after {:.3f}s; the job is someone else's now", duration_s)
        else:  # stopping
            await running.discard_artifacts()
            await self._settle("release", delivery)
            self.counters["handed_back"] += 1
            log.info("handed back on stop")

    async def _mark_processing(self, delivery: Delivery, log: Any) -> bool:
        """Tell the registry this attempt runs. False when the job must not run (it ended, or was
        cancelled, or the registry is unreachable)."""
        job = delivery.job
        try:
            await self.reports.submit((str(job.id), {"attempt": delivery.attempt, "state": JobState.PROCESSING}))
            return True
        except UpstreamError as exc:
            if exc.upstream_status == 409:
                current = (exc.upstream_body or {}).get("current") or {}
                self.counters["skipped"] += 1
                log.info("not running: registry says the job is {} on attempt {}",
                         current.get("state"), current.get("attempt"))
                await self._settle("ack", delivery)
            elif exc.upstream_status == 404:
                self.counters["skipped"] += 1
                log.error("not running: the registry does not know this job")
                await self._settle("ack", delivery)
            else:
                self._note_error(f"registry unreachable: {exc}")
                self._unreachable(exc)
                log.warning("registry unreachable; handing the job back")
                await self._settle("release", delivery)
            return False

    async def _finish(self, delivery: Delivery, running: RunningJob, result: dict[str, Any] | None,
                      stored: orjson.Fragment | None, duration_s: float, log: Any) -> None:
        """Report the result (``stored``: ``result`` as :func:`encode_result` encoded it), then ack."""
        job = delivery.job
        update: dict[str, Any] = {"attempt": delivery.attempt, "state": JobState.FINISHED, "result": stored}
        if result is not None and "artifact" in result:
            update["result_url"] = f"/jobs/{job.id}/result"
        outcome = await self._report(delivery, update, log)
        if outcome == "ok":
            self.counters["succeeded"] += 1
            log.bind(duration_s=round(duration_s, 4)).info("job finished")
            await self._settle("ack", delivery)
            return
        await running.discard_artifacts()
        if outcome.startswith("rejected: "):
            # The registry will never take this report: handing the job back would run it again, and again.
            await self._fail(delivery, cut_error(f"the registry refused the result ({outcome[10:]})"), duration_s,
                             log, retry=False)
            return
        await self._settle("release" if outcome == "unreachable" else "ack", delivery)

    async def _fail(self, delivery: Delivery, error: str, duration_s: float, log: Any, retry: bool = True) -> None:
        """The scheduler decides what a failed attempt leads to (a retry, the dead letters, or nothing when
        the job was cancelled meanwhile; without ``retry``, a permanent failure, the dead letters at once
        unless cancelled); the registry is then told. If the handler dies in between, the
        sweeper settles it: a dead entry of a processing job makes it failed; a retry runs anyway."""
        try:
            _, outcome = await self.scheduler.call("POST", "/leases/nack", json={
                "job_id": str(delivery.job.id), "lease_id": delivery.lease_id, "error": error, "retry": retry})
        except UpstreamError as exc:
            if exc.upstream_status == 409:
                self.counters["lost"] += 1
                # The error may quote the job's payload: in meta (redacted for operators), not the message.
                log.bind(error=error).warning("lease lost before the failure could be reported")
            else:  # the lease expires and the job is handed out again, or dead-lettered on its last attempt
                self._note_error(f"nack failed: {exc}")
                log.error("could not nack ({}); the lease will expire", exc)
            return
        update: dict[str, Any] = {"attempt": delivery.attempt}
        if outcome["cancelled"]:
            update["state"], counter, message = JobState.CANCELLED, "cancelled", "attempt failed; the job was cancelled"
        elif outcome["dead"]:
            update.update(state=JobState.FAILED, error=error)
            counter, message = "failed", "job failed for good" if retry else "job failed for good: not retryable"
        else:
            update.update(state=JobState.PENDING, error=error)
            counter, message = "retried", "attempt failed; retry due"
        await self._report(delivery, update, log)
        self.counters[counter] += 1
        self._note_error(error)
        log.bind(duration_s=round(duration_s, 4), error=error).warning(message)

    async def _report_cancelled(self, delivery: Delivery, log: Any) -> None:
        outcome = await self._report(delivery, {"attempt": delivery.attempt, "state": JobState.CANCELLED}, log)
        await self._settle("release" if outcome == "unreachable" else "ack", delivery)
        self.counters["cancelled"] += 1
        log.info("job cancelled while running")

    async def _report(self, delivery: Delivery, update: dict[str, Any], log: Any) -> str:
        """Send an outcome to the registry: "ok", "refused" (fenced, or the job ended or is gone),
        "rejected: <why>" (a report the registry cannot take, which sending again would not mend) or
        "unreachable". Only a report the registry received may be followed by an ack: after an
        unreachable one the lease goes back, and the job is run again rather than lost."""
        try:
            await self.reports.submit((str(delivery.job.id), update))
            return "ok"
        except UpstreamError as exc:
            if exc.upstream_status in (404, 409):
                log.warning("registry refused the {} report: {}", update.get("state"),
                            (exc.upstream_body or {}).get("error"))
                return "refused"
            if exc.upstream_status in REJECTED:
                why = refusal(exc)
                log.error("registry rejected the {} report: {}", update.get("state"), why)
                return f"rejected: {why}"
            self._note_error(f"registry unreachable: {exc}")
            self._unreachable(exc)
            log.error("could not report {} to the registry: {}; handing the job back", update.get("state"), exc)
            return "unreachable"

    async def _send_acks(self, deliveries: list[Delivery]) -> list[UpstreamError | None]:
        _, data = await self.scheduler.call("POST", "/leases/acks", json={
            "items": [{"job_id": str(d.job.id), "lease_id": d.lease_id} for d in deliveries]})
        lost = set(data["lost"])
        return [UpstreamError("scheduler", 409, {"error": "lease lost"}) if str(d.job.id) in lost else None
                for d in deliveries]

    async def _settle(self, verb: str, delivery: Delivery, error: str | None = None) -> None:
        """ack, nack or release the delivery's lease. A lost lease is fine: someone else has the job.

        An ack is not waited for: it waits for company (``ACK_WINDOW_S``), and the job, whose outcome the
        registry has, leaves its slot meanwhile; :meth:`stop` still sends the acks waiting."""
        if verb == "ack":
            self.acks.put(delivery).add_done_callback(lambda acked: self._acked(delivery, acked))
            return
        body: dict[str, Any] = {"job_id": str(delivery.job.id), "lease_id": delivery.lease_id}
        if error is not None:
            body["error"] = error
        try:
            await self.scheduler.call("POST", f"/leases/{verb}", json=body)
        except UpstreamError as exc:
            self._settle_failed(verb, delivery, exc)

    def _acked(self, delivery: Delivery, acked: asyncio.Future[None]) -> None:
        if acked.cancelled():  # the handler stops
            return
        exc = acked.exception()
        if isinstance(exc, UpstreamError):
            self._settle_failed("ack", delivery, exc)
        elif exc is not None:
            logger.bind(job_id=str(delivery.job.id)).opt(exception=exc).error("ack failed: {!r}", exc)

    def _settle_failed(self, verb: str, delivery: Delivery, exc: UpstreamError) -> None:
        if exc.upstream_status != 409:
            self._note_error(f"{verb} failed: {exc}")
            logger.bind(job_id=str(delivery.job.id)).warning("{} failed: {}", verb, exc)

    async def _heartbeat(self, running: RunningJob) -> None:
        body = {"job_id": str(running.job.id), "lease_id": running.delivery.lease_id,
                "lease_s": self.settings.lease_s}
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                _, data = await self.scheduler.call("POST", "/leases/extend", json=body, timeout_s=5)
            except UpstreamError as exc:
                if exc.upstream_status == 409:
                    running.stop("lease lost")
                    return
                logger.bind(job_id=str(running.job.id)).warning("lease extension failed: {}", exc)
                continue
            if data and data.get("cancelled"):
                running.stop("cancelled")
