"""The jobs API: submissions of each kind, the caller's jobs (grouped by state for books), one job, its
result, and cancel. Every route checks the caller (:mod:`receptionist.access`)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from loguru import logger
from pydantic import BaseModel, Field, field_validator

from receptionist.access import Caller
from receptionist.downloads import send_artifact
from receptionist.expiry import expired
from receptionist.keys import ARTIFACTS, BACKPRESSURE, COUNTERS, CREATES, ENQUEUES, REGISTRY, SCHEDULER, SETTINGS
from receptionist.operators import JobLogQuery, query_logs
from receptionist.queries import ListQuery, PublicQuery, link_header, page_answer, read_query
from receptionist.redaction import redact_job
from receptionist.relay import relay
from receptionist.settings import Settings
from receptionist.views import grouped, job_view, resource_view
from shared.api import Role
from shared.contract import NUL_MESSAGE, JobCreate, JobKind, JobState, KindName, Timestamp, as_utc, utcnow
from shared.errors import Conflict, Forbidden, Gone, NotFound, Unavailable, UpstreamError, ValidationFailed
from shared.fetching import require_fetchable
from shared.kinds import KINDS, KindSpec, kind_spec, queue_for
from shared.kinds.data_export import ESCAPE_FORMULAS, ExportFormat
from shared.logs import request_id_var
from shared.schedules import SCHEDULE_KEY_PREFIX
from shared.scheduling import FIELDS as SCHEDULING_FIELDS
from shared.scheduling import Scheduling, scheduling_of, submission_model
from shared.web import json_response, read_model

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: What an ``Idempotency-Key`` may not hold: control characters, and the lone surrogates aiohttp decodes
#: bytes that are not UTF-8 into (the registry could not store such a key: it was a 500).
_NOT_KEY_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class JobsQuery(ListQuery):
    kind: KindName | None = None
    state: JobState | None = None
    owner: str | None = Field(default=None, max_length=100, description="Operators: only this user's (their id)")
    #: Only jobs created before this moment (RFC 3339; without an offset, UTC): where the first page starts.
    created_before: Timestamp | None = None
    #: Only jobs created at this moment or later (RFC 3339; without an offset, UTC): where the last page ends.
    created_after: Timestamp | None = None

    @field_validator("created_before", "created_after")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        return None if moment is None else as_utc(moment)


def unknown_kind(name: str, field: str = "kind") -> ValidationFailed:
    """The 400 for a kind this receptionist does not have, naming the ones it has."""
    return ValidationFailed("invalid request", [{"field": field, "message": (
        f"no kind {name!r} is registered here; the kinds are {', '.join(KINDS)}")}])


async def submit(request: web.Request, kind: JobKind) -> web.Response:
    """A kind's own submission route: validate the body as its payload, with the scheduling fields beside
    it (:mod:`shared.scheduling`), register, enqueue: 201 with the job as the kind's own routes show it. A
    repeated ``Idempotency-Key`` gets the first job."""
    caller = check_submitter(request, kind)
    read_query(request, PublicQuery)
    spec = kind_spec(kind)
    submission = await read_model(request, submission_model(spec.payload))
    status, job = await accept(request, spec, submission, caller, scheduling=scheduling_of(submission))
    return json_response(resource_view(job), status=status)


def job_body(settings: Settings, spec: KindSpec, payload: BaseModel) -> tuple[dict[str, Any], str]:
    """What a validated ``payload`` of ``spec``'s kind is registered as, whichever route it came by (the
    kind's own, ``POST /jobs``, a schedule), and the job's type. The receptionist fills a task's empty
    ``duration_s`` and ``fail_probability`` with its defaults and records a CSV export's formula escaping;
    the type is an export's resource, a book's ``epub`` or ``pdf``, else the kind. The scheduling fields of
    a :func:`~shared.scheduling.submission_model` are not part of the payload; a kind's own payload (in
    ``POST /jobs``) keeps every field it has, whatever its name."""
    body = payload.model_dump(mode="json", exclude=set(SCHEDULING_FIELDS) if isinstance(payload, Scheduling) else None)
    if spec.kind == JobKind.TASK:
        for name, value in (("duration_s", settings.task_duration_s),
                            ("fail_probability", settings.task_fail_probability)):
            if body.get(name) is None:
                body[name] = value
    elif spec.kind == JobKind.DATA_EXPORT:
        if body.get("format") == ExportFormat.CSV:
            body[ESCAPE_FORMULAS] = settings.csv_escape_formulas
        return body, str(body["resource"])
    job_type = getattr(payload, "type", None)  # a book's epub or pdf; a job's type is 64 characters at most
    return body, job_type if isinstance(job_type, str) and 0 < len(job_type) <= 64 else spec.kind


def _nul_in(value: Any, path: str) -> str | None:
    """The path (``a.b.0``) of the first string or key under ``value`` that holds a NUL; None when none does."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return inner
            if (found := _nul_in(item, inner)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_in(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def refuse_nul(body: dict[str, Any], field_prefix: str = "") -> None:
    """A 400 naming the field, when a payload to register holds a NUL character in a string or a key, on
    every backend alike: the registry's PostgreSQL store keeps a payload as jsonb, which cannot hold one
    (it was a 500). The built-in kinds' text fields refuse it in their models already; this covers the
    free-form payloads of a kind of your own. The body is walked only when its JSON holds ``\\u0000``, as
    JSON writes a NUL: encoding it is one call in C, walking it a Python call a value."""
    if b"\\u0000" in orjson.dumps(body) and (found := _nul_in(body, "")) is not None:
        raise ValidationFailed("invalid request", [{"field": field_prefix + found, "message": NUL_MESSAGE}])


async def accept(request: web.Request, spec: KindSpec, payload: BaseModel, caller: Caller, field_prefix: str = "",
                 scheduling: Scheduling | None = None) -> tuple[int, dict[str, Any]]:
    """Register and enqueue a validated ``payload`` of ``spec``'s kind (:func:`job_body`): its URL fields
    are refused (400 naming ``field_prefix`` + the field) when their literal host may not be fetched;
    ``scheduling`` gives the job its priority and its time."""
    for name in spec.fetch_urls:
        require_fetchable(getattr(payload, name), request.app[SETTINGS].fetch_allow, field_prefix + name)
    body, job_type = job_body(request.app[SETTINGS], spec, payload)
    refuse_nul(body, field_prefix)
    key = await admit(request, spec.kind)
    return await register(request, spec.kind, body, caller=caller, job_type=job_type, idempotency_key=key,
                          scheduling=scheduling)


def check_submitter(request: web.Request, kind: str) -> Caller:
    """The caller, when it may submit jobs of ``kind``: a user, with the kind's permission if it needs one."""
    caller = Caller.of(request)
    caller.require(Role.USER)
    permission = request.app[SETTINGS].kind_permissions.get(str(kind))
    if permission:
        caller.require_permission(permission, f"submitting {kind} jobs")
    return caller


async def admit(request: web.Request, kind: str) -> str | None:
    """The submission's ``Idempotency-Key`` (400 when malformed), once ``kind``'s queue has room (503)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and len(request.headers.getall(IDEMPOTENCY_HEADER)) > 1:
        raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": "given more than once"}])
    if key is not None and (not 1 <= len(key) <= 200 or _NOT_KEY_TEXT.search(key)):
        raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": (
            "1 to 200 characters of UTF-8 text, without control characters")}])
    if key is not None and key.startswith(SCHEDULE_KEY_PREFIX):
        raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": (
            f"a key starting with {SCHEDULE_KEY_PREFIX!r} is the schedules' own; choose another")}])
    await request.app[BACKPRESSURE].check(queue_for(kind))
    return key


async def register(request: web.Request, kind: str, body: dict[str, Any], *, caller: Caller,
                   job_type: str | None = None, job_id: uuid.UUID | None = None,
                   idempotency_key: str | None = None,
                   scheduling: Scheduling | None = None) -> tuple[int, dict[str, Any]]:
    """Register a validated payload and enqueue its job: ``(201, job)``, or ``(200, job)`` for the first
    job of a repeated ``Idempotency-Key`` (whose priority and time stand, whatever the repeat asks).
    ``scheduling`` gives the job its priority and the time it may run from (a 400 when it names both a
    time and a delay)."""
    app = request.app
    when = (scheduling or Scheduling()).job_fields(utcnow())
    create = JobCreate(
        **({"id": job_id} if job_id is not None else {}),
        kind=kind,
        type=job_type or str(kind),
        payload=body,
        owner=caller.owner,
        max_attempts=kind_spec(kind).retry.max_attempts,
        request_id=request_id_var.get(),
        idempotency_key=idempotency_key,
        **when,
    )
    try:
        status, job = await app[CREATES].submit(create)
    except UpstreamError as exc:
        raise _key_reused(relay(exc), idempotency_key) from exc
    if status == 200 and job["state"] != JobState.PENDING:
        return 200, job  # an idempotent replay of a job under way
    try:
        await app[ENQUEUES].submit(job)
    except UpstreamError as exc:
        await _not_queued(app, job, exc)
    app[COUNTERS]["submitted"] += 1
    logger.bind(job_id=job["id"], kind=str(kind), type=job["type"]).info("job accepted")
    return 201 if status == 201 else 200, job


#: The details of a 409 for an ``Idempotency-Key`` used before with another request.
KEY_REUSED = [{"field": IDEMPOTENCY_HEADER,
               "message": "used before with another request (another payload, file or signal): choose another key"}]


def _key_reused(error: Exception, key: str | None) -> Exception:
    """The registry's 409 for a key it knows with another request, told in the client's terms: the client
    sent an ``Idempotency-Key`` header, not the registry's ``idempotency_key`` field, nor the job ``id`` that
    an import or an ECG derives from the key."""
    if key is None or not isinstance(error, Conflict):
        return error
    if {detail.get("field") for detail in error.details} & {"idempotency_key", "id"}:
        return Conflict("idempotency key reused with a different request", [dict(detail) for detail in KEY_REUSED])
    return error


async def _not_queued(app: web.Application, job: dict[str, Any], exc: UpstreamError) -> None:
    """The job is registered but the scheduler did not take it. A full queue refuses the submission (the
    job is marked failed, the client told to come back later); an unreachable scheduler does not: the
    sweeper queues the job once it answers again, so the job is accepted all the same."""
    app[COUNTERS]["enqueue_failures"] += 1
    body = exc.upstream_body if isinstance(exc.upstream_body, dict) else {}
    full = exc.upstream_status == 503 and any(d.get("field") == "queue" for d in body.get("details") or [])
    log = logger.bind(job_id=job["id"])
    if not full and app[SETTINGS].sweep_interval_s > 0:
        log.warning("could not enqueue ({}); the sweeper will", exc)
        return
    log.error("could not enqueue: {}", exc)
    await _give_up(app, job["id"], f"could not be queued: {body.get('error') or exc}")
    raise Unavailable(body.get("error") or "the job could not be queued; nothing was accepted, try again",
                      body.get("details"), retry_after_s=1.0) from exc


async def _give_up(app: web.Application, job_id: str, error: str) -> None:
    """Mark a job we could not queue as failed, so it is not left pending forever."""
    try:
        await app[REGISTRY].call("PATCH", f"/jobs/{job_id}", json={"attempt": 0, "state": "failed", "error": error})
    except UpstreamError as exc:
        logger.bind(job_id=job_id).error("could not mark the unqueued job failed: {}", exc)


def shown(caller: Caller, job: dict[str, Any]) -> dict[str, Any]:
    """A job as ``GET /jobs/{id}`` and ``DELETE /jobs/{id}`` show it to ``caller``, whatever its kind: whole
    to its owner, redacted to an operator who does not own it."""
    return job_view(job) if caller.owns(job) else redact_job(job)


async def _page(request: web.Request, params: dict[str, Any], query: ListQuery) -> tuple[dict[str, Any], dict[str, str]]:
    """One page of the registry's jobs matching ``params``, newest first, and its ``Link`` header."""
    params["limit"] = query.limit
    if query.cursor:
        params["cursor"] = query.cursor
    try:
        _, page = await request.app[REGISTRY].get("/jobs", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return page, link_header(request, page.get("next_cursor"))


async def own_jobs(request: web.Request, kind: JobKind) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the caller's jobs of ``kind``, newest first (``limit``, ``cursor``), and its next cursor."""
    caller = Caller.of(request)
    caller.require(Role.USER)
    page, _ = await _page(request, {"kind": str(kind), "owner": caller.owner}, read_query(request, ListQuery))
    return page["items"], page.get("next_cursor")


async def list_grouped(request: web.Request, kind: JobKind) -> web.Response:
    """The caller's book jobs of one kind, grouped by state, with the list's ``next_cursor``."""
    items, next_cursor = await own_jobs(request, kind)
    return page_answer(request, items, next_cursor, body=grouped(items))


async def list_jobs(request: web.Request) -> web.Response:
    """``GET /jobs``: the caller's jobs; for operators, every job (others' without payload or result)."""
    caller = Caller.of(request)
    if not (caller.is_user or caller.is_operator):
        raise Forbidden("this needs the user or operator role")
    query = read_query(request, JobsQuery)
    params: dict[str, Any] = {}
    if not caller.is_operator:
        if query.owner is not None:
            raise ValidationFailed("invalid request", [{"field": "owner", "message": (
                "only operators filter by owner; your own jobs are the ones listed")}])
        params["owner"] = caller.owner
    elif query.owner is not None:
        params["owner"] = query.owner
    if query.created_before is not None:
        params["created_before"] = query.created_before.isoformat()
    if query.created_after is not None:
        if query.created_before is not None and query.created_after >= query.created_before:
            raise ValidationFailed("invalid request", [{"field": "created_after", "message": (
                "must be earlier than created_before")}])
        params["created_after"] = query.created_after.isoformat()
    if query.kind is not None:
        if query.kind not in KINDS:
            raise unknown_kind(query.kind)
        params["kind"] = query.kind
    if query.state is not None:
        params["state"] = str(query.state)
    page, _ = await _page(request, params, query)
    items = [job_view(job) if caller.owns(job) else redact_job(job) for job in page["items"]]
    return page_answer(request, items, page.get("next_cursor"))


async def load_job(request: web.Request, raw_id: str, noun: str = "job") -> dict[str, Any]:
    """The registry's record of the job ``raw_id`` names; a 404 ("no <noun> ...") when it is not a UUID or
    not a job. Who may see it is the caller's check."""
    return await load_record(request, "jobs", raw_id, noun)


async def load_record(request: web.Request, collection: str, raw_id: str, noun: str) -> dict[str, Any]:
    """The registry's ``/<collection>/<id>`` for the id ``raw_id``; a 404 ("no <noun> ...") when it is not a
    UUID or the registry has no such record."""
    try:
        record_id = uuid.UUID(raw_id)
    except ValueError:
        raise NotFound(f"no {noun} {raw_id}") from None
    try:
        _, record = await request.app[REGISTRY].get(f"/{collection}/{record_id}")
    except UpstreamError as exc:
        if exc.upstream_status == 404:
            raise NotFound(f"no {noun} {record_id}") from exc
        raise
    return record


async def fetch_job(request: web.Request) -> dict[str, Any]:
    """The job named in the path, when the caller may see it: its owner, or an operator. To anyone else
    it is a 404, like a job that does not exist (a 403 would tell that it does)."""
    job = await load_job(request, request.match_info["job_id"])
    caller = Caller.of(request)
    if not (caller.owns(job) or caller.is_operator):
        raise NotFound(f"no job {job['id']}")
    return job


async def post_export(request: web.Request) -> web.Response:
    return await submit(request, JobKind.EXPORT)


async def post_import(request: web.Request) -> web.Response:
    return await submit(request, JobKind.IMPORT)


async def get_exports(request: web.Request) -> web.Response:
    return await list_grouped(request, JobKind.EXPORT)


async def get_imports(request: web.Request) -> web.Response:
    return await list_grouped(request, JobKind.IMPORT)


async def post_task(request: web.Request) -> web.Response:
    return await submit(request, JobKind.TASK)


async def get_job_logs(request: web.Request) -> web.Response:
    """``GET /jobs/{id}/logs``: the log lines of one job (its owner's, or an operator's, redacted), newest
    first."""
    job = await fetch_job(request)
    return await query_logs(request, read_query(request, JobLogQuery), redact=not Caller.of(request).owns(job),
                            job_id=uuid.UUID(job["id"]))


async def get_job(request: web.Request) -> web.Response:
    read_query(request, PublicQuery)
    job = await fetch_job(request)
    return json_response(shown(Caller.of(request), job))


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job: a pending one at once (200), a running one at its handler's next heartbeat (202 with
    ``cancel_requested``). A job already finished or failed is a 409; cancelling twice is harmless. Its
    owner or an operator may (an operator's cancel of another user's job is logged with the operator's
    name). The answer is the job as ``GET /jobs/{id}`` shows it to the caller, whatever its kind."""
    read_query(request, PublicQuery)
    job = await fetch_job(request)  # another user's job is a 404 to anyone but an operator
    caller = Caller.of(request)
    owned = caller.owns(job)
    try:
        _, job = await request.app[REGISTRY].post(f"/jobs/{job['id']}/cancel")
    except UpstreamError as exc:
        raise relay(exc) from exc
    try:
        await request.app[SCHEDULER].post(f"/queues/jobs/{job['id']}/cancel")
    except UpstreamError as exc:
        # A pending job is cancelled in the registry already, so no handler will run it; a running one
        # learns it from the sweeper once its lease is gone.
        logger.bind(job_id=job["id"]).warning("the scheduler did not take the cancel: {}", exc)
    if owned:
        logger.bind(job_id=job["id"], state=job["state"]).info("cancel requested")
    else:
        logger.bind(job_id=job["id"], state=job["state"], operator=caller.username).info(
            "cancel requested by operator {}", caller.username)
    status = 200 if job["state"] == JobState.CANCELLED else 202
    return json_response(shown(caller, job), status=status)


async def get_result(request: web.Request) -> web.StreamResponse:
    read_query(request, PublicQuery)
    job = await fetch_job(request)
    if not Caller.of(request).owns(job):
        raise Forbidden("only its owner may read a job's result")
    result = job.get("result") or {}
    if job["state"] != JobState.FINISHED or "artifact" not in result:
        raise NotFound(f"job {job['id']} has no result yet (it is {job['state']})")
    ttl_s = request.app[SETTINGS].artifact_ttl_s
    if expired(job, ttl_s):
        raise Gone(f"the result of job {job['id']} has expired",
                   [{"field": "job_id", "message": f"results are kept {ttl_s:g}s"}])
    key = result["artifact"]
    if not (isinstance(key, str) and key.rsplit("/", 1)[-1].startswith(f"{job['id']}-")):
        # Not a file of this job's (every key a handler writes starts with its job's id): a result a kind
        # made up, stored before handlers checked it. It is nobody's to download from here.
        raise NotFound(f"the result of job {job['id']} is missing", [
            {"field": "job_id", "message": "its result names no file of this job's"}])
    return await send_artifact(
        request, request.app[ARTIFACTS], key, content_type=result.get("content_type", "application/octet-stream"),
        filename=result.get("filename", key.rsplit("/", 1)[-1]),
        missing=NotFound(f"the result of job {job['id']} is missing", [
            {"field": "job_id", "message": "its file is not in the artifact store (deleted, or never written)"}]))
