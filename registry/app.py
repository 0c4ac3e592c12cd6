"""The registry's HTTP API: jobs (create, read, update under the state machine, cancel, redrive, list), their
change events (long polls: ``wait_s`` waits for the first event past ``after``) and counts by state; the user
routes come from :mod:`registry.users`, the service instance routes from :mod:`registry.instances`, the
periodic schedules' from :mod:`registry.schedules`. Every job
in and out is a model of :mod:`shared.contract`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.bell import ChangeBell
from registry.instances import Liveness, StoreSink, add_instance_routes
from registry.metrics import JobMetrics
from registry.queries import RegistryQuery
from registry.schedules import add_schedule_routes
from registry.settings import Settings
from registry.store import JobEvent, JobStore, store_from_url
from registry.store.paging import decode_cursor, encode_cursor
from registry.users import add_user_routes
from shared.contract import (
    Job,
    JobCreate,
    JobCreateBatch,
    JobState,
    JobUpdate,
    JobUpdateBatch,
    KindName,
    TransitionRefused,
    utcnow,
)
from shared.errors import Conflict, NotFound, Unavailable
from shared.web import create_service_app, json_response, query_model, read_model


@dataclass
class RequestCounters:
    """What this registry was asked since it started, for ``/status``."""

    created: int = 0  # jobs registered
    existing: int = 0  # creations answered with the job already registered (idempotent repeats)
    updated: int = 0  # updates, cancels and redrives that changed a job
    unchanged: int = 0  # updates, cancels and redrives accepted without a change (replays, repeats)
    refused: int = 0  # updates, cancels and redrives refused by the state machine or fencing, idempotency clashes


STORE = web.AppKey("store", JobStore)
COUNTERS = web.AppKey("counters", RequestCounters)
BELL = web.AppKey("bell", ChangeBell)
JOB_METRICS = web.AppKey("job_metrics", JobMetrics)


class JobListQuery(RegistryQuery):
    kind: KindName | None = None
    state: JobState | None = None
    owner: str | None = Field(default=None, max_length=200)
    #: Jobs last changed strictly before this moment (ISO 8601 with a UTC offset): the sweeper's query.
    updated_before: datetime | None = None
    #: Jobs created strictly before this moment: where the first page starts (a cursor, once paging).
    created_before: datetime | None = None
    #: Jobs created at this moment or later: where the walk stops (pass it again with the cursor).
    created_after: datetime | None = None
    cancel_requested: bool | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=1000)

    @field_validator("updated_before", "created_before", "created_after")
    @classmethod
    def _aware(cls, moment: datetime | None) -> datetime | None:
        # A moment without an offset is ambiguous; guessing UTC would silently sweep the wrong jobs.
        if moment is not None and moment.utcoffset() is None:
            raise ValueError("needs a UTC offset, like 2030-01-01T12:00:00Z or +00:00 (encode + as %2B)")
        if moment is not None:
            try:
                (moment - timedelta(microseconds=1)).astimezone(timezone.utc)
            except OverflowError:
                raise ValueError("out of the calendar's range once in UTC") from None
        return moment

    @field_validator("cursor")
    @classmethod
    def _known_cursor(cls, cursor: str | None) -> str | None:
        if cursor is not None:
            decode_cursor(cursor)  # raises ValueError, which pydantic reports as this field's error
        return cursor


class RedriveRequest(BaseModel):
    """The body of ``POST /jobs/{id}/redrive`` (optional: no body means the defaults)."""

    model_config = ConfigDict(extra="forbid")

    extra_attempts: int = Field(default=3, ge=1, le=100)


class EventQuery(RegistryQuery):
    after: int = Field(default=0, ge=0, le=2**63 - 1)  # seq is a 64-bit integer in every store
    limit: int = Field(default=1000, ge=1, le=1000)
    #: A long poll: wait up to this long for a first event past ``after``; 0 answers at once.
    wait_s: float = Field(default=0.0, ge=0, le=30)


class AllEventsQuery(EventQuery):
    owner: str | None = Field(default=None, max_length=200)
    kind: KindName | None = None


class CountQuery(RegistryQuery):
    kind: KindName | None = None


class EventPage(BaseModel):
    """The answer of the event routes: events in ``seq`` order; resume with ``after=<last seq>``.
    ``last_seq`` is the store's newest event of any job when the page was read: where a stream that
    wants only what comes next starts."""

    items: list[JobEvent]
    last_seq: int


def _job_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["job_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        # Not a UUID cannot name a job: the same answer as an unknown one.
        raise NotFound(f"job {raw} not found", [{"field": "job_id", "message": "no such job"}]) from None


def _not_found(job_id: uuid.UUID) -> NotFound:
    return NotFound(f"job {job_id} not found", [{"field": "job_id", "message": "no such job"}])


def _refused(request: web.Request, exc: TransitionRefused, field: str = "state") -> Conflict:
    request.app[COUNTERS].refused += 1
    return Conflict(str(exc), [{"field": field, "message": str(exc)}], current=exc.current)


def _log_moved(job: Job) -> None:
    """One DEBUG line for a change that moved a job to another state (or to a new attempt); none for a
    progress report, which apply_update tells apart: entering processing sets ``started_at`` to
    ``updated_at``. DEBUG because the actors log these events at INFO (the receptionist "accepted", the
    handler "finished" with its duration) and the events table is the history: on the hot path of every
    job, a second line of the same event costs more than it tells."""
    if job.state == JobState.PROCESSING and job.started_at != job.updated_at:
        return
    if job.finished_at is not None and job.started_at is not None:
        logger.debug("job {} is {} (attempt {}) after {:.3f} s", job.id, job.state.value, job.attempt,
                     (job.finished_at - job.started_at).total_seconds(), job_id=str(job.id))
    else:
        logger.debug("job {} is {} (attempt {})", job.id, job.state.value, job.attempt, job_id=str(job.id))


def _created(app: web.Application, spec: JobCreate, job: Job, created: bool) -> int:
    """The status of a registration: 201 made, 200 the same request again; a Conflict when the id or the
    idempotency key is taken by another request."""
    counters = app[COUNTERS]
    if created:
        app[BELL].ring()
        counters.created += 1
        app[JOB_METRICS].created(job)
        logger.debug("job {} registered: {} {} for {}", job.id, job.kind, job.type, job.owner, job_id=str(job.id))
        return 201
    if job.kind == spec.kind and job.type == spec.type and job.owner == spec.owner and job.payload == spec.payload:
        counters.existing += 1
        return 200
    counters.refused += 1
    if job.id == spec.id:
        raise Conflict("job id reused with a different request",
                       [{"field": "id", "message": f"job {job.id} exists with another kind, type, owner or payload"}])
    raise Conflict("idempotency key reused with a different request",
                   [{"field": "idempotency_key",
                     "message": f"job {job.id} was registered with this key and another kind, type or payload"}])


async def create_job(request: web.Request) -> web.Response:
    spec = await read_model(request, JobCreate)
    job, created = await request.app[STORE].create(spec, utcnow())
    return json_response(job, status=_created(request.app, spec, job, created))


async def create_jobs(request: web.Request) -> web.Response:
    """Several registrations in one request (and one transaction, on SQLite and PostgreSQL): receptionists send the
    submissions that arrive together this way. One result per job, in order, with the status its single
    ``POST /jobs`` would have had: 201 or 200 with ``job``, or 409 with the error."""
    batch = await read_model(request, JobCreateBatch)
    outcomes = await request.app[STORE].create_many(batch.jobs, utcnow())
    results: list[dict[str, Any]] = []
    for spec, (job, created) in zip(batch.jobs, outcomes, strict=True):
        try:
            results.append({"status": _created(request.app, spec, job, created), "job": job})
        except Conflict as exc:
            results.append({"status": 409, **exc.body()})
    return json_response({"results": results})


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    job = await request.app[STORE].get(job_id)
    if job is None:
        raise _not_found(job_id)
    return json_response(job)


def _counted(app: web.Application, changed: bool) -> bool:
    """Count an accepted update or cancel, and wake the event long polls when it changed the job."""
    if changed:
        app[BELL].ring()
        app[COUNTERS].updated += 1
    else:
        app[COUNTERS].unchanged += 1
    return changed


async def update_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    update = await read_model(request, JobUpdate)
    try:
        job, changed = await request.app[STORE].update(job_id, update, utcnow())
    except KeyError:
        raise _not_found(job_id) from None
    except TransitionRefused as exc:
        raise _refused(request, exc, "attempt" if update.attempt < exc.current.attempt else "state") from None
    if _counted(request.app, changed):
        _log_moved(job)
        request.app[JOB_METRICS].moved(update, job)
    return json_response(job)


async def update_jobs(request: web.Request) -> web.Response:
    """Several updates in one request (and one transaction, on SQLite and PostgreSQL): a handler reports the jobs of a
    batch together. Each is judged on its own; the answer has one result per update, in order, with the
    status the single ``PATCH`` would have answered: 200 with the job (with ``"answer": "brief"``, its
    state and attempt only), 404, or 409 with ``current``."""
    batch = await read_model(request, JobUpdateBatch)
    outcomes = await request.app[STORE].update_many([(item.id, item) for item in batch.updates], utcnow())
    counters = request.app[COUNTERS]
    brief = batch.answer == "brief"
    results: list[dict[str, Any]] = []
    for item, outcome in zip(batch.updates, outcomes, strict=True):
        if isinstance(outcome, KeyError):
            results.append({"id": item.id, "status": 404, "error": _not_found(item.id).message})
        elif isinstance(outcome, TransitionRefused):
            counters.refused += 1
            results.append({"id": item.id, "status": 409, "error": str(outcome), "current": outcome.current})
        else:
            job, changed = outcome
            if _counted(request.app, changed):
                _log_moved(job)
                request.app[JOB_METRICS].moved(item, job)
            results.append({"id": item.id, "status": 200, "state": job.state, "attempt": job.attempt}
                           if brief else {"id": item.id, "status": 200, "job": job})
    return json_response({"results": results})


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    try:
        job, changed = await request.app[STORE].request_cancel(job_id, utcnow())
    except KeyError:
        raise _not_found(job_id) from None
    except TransitionRefused as exc:
        raise _refused(request, exc) from None
    if _counted(request.app, changed):
        if job.state == JobState.PROCESSING:
            logger.bind(job_id=str(job.id)).info("job {} cancel requested while processing", job.id)
        else:
            _log_moved(job)
            request.app[JOB_METRICS].cancelled(job)
    return json_response(job)


async def redrive_job(request: web.Request) -> web.Response:
    """An operator gives a failed job another chance: back to ``pending`` with more attempts allowed.
    Putting it back on a queue is the sweeper's (or the operator's) next step; this only records it."""
    job_id = _job_id(request)
    body = await read_model(request, RedriveRequest) if request.body_exists else RedriveRequest()
    try:
        job, changed = await request.app[STORE].redrive(job_id, body.extra_attempts, utcnow())
    except KeyError:
        raise _not_found(job_id) from None
    except TransitionRefused as exc:
        raise _refused(request, exc) from None
    if _counted(request.app, changed):
        logger.bind(job_id=str(job.id)).info("job {} redriven: pending again on attempt {}, at most {} attempts",
                                            job.id, job.attempt, job.max_attempts)
    return json_response(job)


async def list_jobs(request: web.Request) -> web.Response:
    query = query_model(request, JobListQuery)
    cursor = query.cursor
    if cursor is None and query.created_before is not None:
        # The keyset every page walks, started at that moment: an indexed range, however old the moment.
        cursor = encode_cursor(query.created_before - timedelta(microseconds=1), uuid.UUID(int=2**128 - 1))
    page = await request.app[STORE].list(kind=query.kind, state=query.state, owner=query.owner,
                                         updated_before=query.updated_before,
                                         cancel_requested=query.cancel_requested, limit=query.limit,
                                         cursor=cursor, created_after=query.created_after)
    return json_response(page)


async def job_events(request: web.Request) -> web.Response:
    """``GET /jobs/{id}/events?after=&limit=&wait_s=``: one job's events past ``after`` (404 for an unknown
    job, at once); with ``wait_s``, waits that long at most for the first one."""
    job_id = _job_id(request)
    query = query_model(request, EventQuery)
    store = request.app[STORE]

    async def fetch() -> list[JobEvent]:
        return await store.events(job_id=job_id, after_seq=query.after, limit=query.limit)

    events = await fetch()
    if not events and await store.get(job_id) is None:
        raise _not_found(job_id)
    if not events and query.wait_s > 0:
        events = await request.app[BELL].wait_for(fetch, query.wait_s)
    return json_response(EventPage(items=events, last_seq=await store.last_seq()))


async def all_events(request: web.Request) -> web.Response:
    """``GET /events?after=&limit=&owner=&kind=&wait_s=``: every job's events past ``after`` (of one owner
    or kind when given); with ``wait_s``, waits that long at most for the first one."""
    query = query_model(request, AllEventsQuery)
    store = request.app[STORE]

    async def fetch() -> list[JobEvent]:
        return await store.events(after_seq=query.after, limit=query.limit, owner=query.owner, kind=query.kind)

    events = await request.app[BELL].wait_for(fetch, query.wait_s)
    return json_response(EventPage(items=events, last_seq=await store.last_seq()))


async def counts(request: web.Request) -> web.Response:
    query = query_model(request, CountQuery)
    by_state = await request.app[STORE].count_by_state(kind=query.kind)
    return json_response({state.value: n for state, n in by_state.items()})


async def _health(app: web.Application) -> dict[str, Any]:
    try:
        await app[STORE].ping()
    except Unavailable:
        raise
    except Exception as exc:
        raise Unavailable(f"registry store ping failed: {type(exc).__name__}: {exc}") from exc
    return {"store": "ok"}


async def _status(app: web.Application) -> dict[str, Any]:
    store = app[STORE]
    by_state = await store.count_by_state()
    return {"jobs": {state.value: n for state, n in by_state.items()}, "users": await store.count_users(),
            "requests": asdict(app[COUNTERS]), "long_polls_waiting": app[BELL].waiting}


def _snapshot(app: web.Application) -> dict[str, Any]:
    return {"long_polls_waiting": app[BELL].waiting}


def _without_secrets(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def create_app(settings: Settings) -> web.Application:
    """The registry app; its store (chosen by ``settings.store_url``) opens on startup, closes on cleanup."""
    app = create_service_app("registry", settings, health=_health, status=_status, snapshot=_snapshot,
                             instance_sink=lambda app: StoreSink(app, STORE))
    app[COUNTERS] = RequestCounters()
    app[JOB_METRICS] = JobMetrics(app)
    app[BELL] = ChangeBell(settings.event_recheck_s)

    async def close_bell(app: web.Application) -> None:
        # Long polls answer at once instead of holding up the shutdown for their whole wait.
        app[BELL].close()

    app.on_shutdown.append(close_bell)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = store_from_url(settings.store_url)
        await store.open()
        app[STORE] = store
        logger.info("registry store open: {}", _without_secrets(settings.store_url))
        try:
            yield
        finally:
            await store.close()

    app.cleanup_ctx.append(store_ctx)
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_patch("/jobs/{job_id}", update_job)
    app.router.add_post("/jobs/updates", update_jobs)
    app.router.add_post("/jobs/batch", create_jobs)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/jobs/{job_id}/redrive", redrive_job)
    app.router.add_get("/jobs/{job_id}/events", job_events)
    app.router.add_get("/events", all_events)
    app.router.add_get("/counts", counts)
    add_user_routes(app, STORE)
    add_schedule_routes(app, STORE)
    add_instance_routes(app, STORE, Liveness(settings.instance_gone_s, settings.instance_drop_s))
    return app
