"""Job metrics for Prometheus, per kind, from the changes the registry accepts (``/metrics``):

- counters ``conveyor_jobs_submitted``, ``_started`` (each attempt), ``_retried`` (attempts after the first),
  ``_finished``, ``_failed`` (attempts that failed, retried or not), ``_dead_lettered`` (jobs failed for
  good: out of attempts, or a failure no retry can mend), ``_cancelled``;
- histograms ``conveyor_job_wait_seconds`` (submitted, or due for a job with a later ``run_at``, to first
  started: the time a delay asked for is no wait) and ``conveyor_job_run_seconds`` (the attempt's start to
  its end, for attempts that finished or failed).

Each registry counts the changes it accepted; with several, Prometheus sums them (``sum by (kind)``). A
change the registry answered as a repeat (unchanged) is not counted again.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Histogram

from shared.contract import Job, JobState, JobUpdate
from shared.web import METRICS

COUNTERS = ("submitted", "started", "retried", "finished", "failed", "dead_lettered", "cancelled")
#: From a few milliseconds (time scale 0) to the hour a bulk import may take.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class JobMetrics:
    def __init__(self, app: web.Application) -> None:
        registry = app[METRICS].registry
        self.counters = {name: Counter(f"conveyor_jobs_{name}", f"Jobs {name.replace('_', '-')}, per kind",
                                       ["kind"], registry=registry) for name in COUNTERS}
        self.wait = Histogram("conveyor_job_wait_seconds", "From submitted (or due) to first started, per kind", ["kind"],
                              registry=registry, buckets=BUCKETS)
        self.run = Histogram("conveyor_job_run_seconds", "An attempt's run, from its start to its end, per kind",
                             ["kind"], registry=registry, buckets=BUCKETS)
        self._children: dict[tuple[str, str], Counter] = {}
        self._timers: dict[tuple[Histogram, str], Histogram] = {}

    def _count(self, name: str, kind: str) -> None:
        child = self._children.get((name, kind))
        if child is None:  # ``labels()`` costs a lock and a tuple each time: its child is kept
            child = self._children[(name, kind)] = self.counters[name].labels(kind)
        child.inc()

    def _observe(self, histogram: Histogram, kind: str, seconds: float) -> None:
        child = self._timers.get((histogram, kind))
        if child is None:
            child = self._timers[(histogram, kind)] = histogram.labels(kind)
        child.observe(max(seconds, 0.0))

    def created(self, job: Job) -> None:
        self._count("submitted", str(job.kind))

    def cancelled(self, job: Job) -> None:
        """A job cancelled by request before it ran (a running one is counted when its handler reports)."""
        self._count("cancelled", str(job.kind))

    def moved(self, update: JobUpdate, job: Job) -> None:
        """A change the registry accepted and that changed ``job`` (now as after it)."""
        kind = str(job.kind)
        if job.state == JobState.PROCESSING:
            if job.started_at != job.updated_at:
                return  # a progress report
            self._count("started", kind)
            if job.attempt > 1:
                self._count("retried", kind)
            else:
                due = max(job.created_at, job.run_at) if job.run_at is not None else job.created_at
                self._observe(self.wait, kind, (job.updated_at - due).total_seconds())
            return
        ran = job.started_at is not None and update.state in (JobState.FINISHED, JobState.FAILED, JobState.PENDING)
        if ran and update.attempt == job.attempt:
            self._observe(self.run, kind, (job.updated_at - job.started_at).total_seconds())  # type: ignore[operator]
        if job.state == JobState.FINISHED:
            self._count("finished", kind)
        elif job.state == JobState.FAILED:
            self._count("failed", kind)
            self._count("dead_lettered", kind)
        elif job.state == JobState.PENDING and update.error is not None:
            self._count("failed", kind)  # an attempt that failed; the job waits for its retry
        elif job.state == JobState.CANCELLED:
            self._count("cancelled", kind)
