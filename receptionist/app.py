"""The receptionist's routes: submissions of each kind, lists grouped by state, a job, its result."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from receptionist.queueing import Backpressure, enqueue
from receptionist.settings import Settings
from receptionist.sweeper import Sweeper, requeue
from receptionist.views import book_view, grouped, job_view
from shared.artifacts import ArtifactStore
from shared.contract import JobCreate, JobKind, JobState, queue_for
from shared.errors import Conflict, Forbidden, NotFound, Unavailable, UpstreamError, ValidationFailed
from shared.http import ServiceClient
from shared.kinds import kind_spec
from shared.logs import request_id_var
from shared.web import client_session_ctx, create_service_app, json_response, query_model, read_model

SETTINGS = web.AppKey("settings", Settings)
SESSION = web.AppKey("session", aiohttp.ClientSession)
REGISTRY = web.AppKey("registry", ServiceClient)
SCHEDULER = web.AppKey("scheduler", ServiceClient)
ARTIFACTS = web.AppKey("artifacts", ArtifactStore)
COUNTERS = web.AppKey("counters", dict)
BACKPRESSURE = web.AppKey("backpressure", Backpressure)
SWEEPER = web.AppKey("sweeper", Sweeper)

USER_HEADER = "X-Conveyor-User"
ROLES_HEADER = "X-Conveyor-Roles"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=500)


def owner_of(request: web.Request) -> str:
    """The caller, as the gateway named it."""
    return request.headers.get(USER_HEADER) or "anonymous"


def relay(exc: UpstreamError) -> Exception:
    """A neighbour's refusal that concerns the client's request, as our own error; else unavailable."""
    body = exc.upstream_body if isinstance(exc.upstream_body, dict) else {}
    if exc.upstream_status == 409:
        return Conflict(body.get("error", "conflict"), body.get("details"))
    if exc.upstream_status == 404:
        return NotFound(body.get("error", "not found"))
    if exc.upstream_status == 400:
        return ValidationFailed(body.get("error", "invalid request"), body.get("details"))
    return exc


async def submit(request: web.Request, kind: JobKind, route: str, defaults: dict[str, Any] | None = None
                 ) -> web.Response:
    """Validate, register, enqueue: 201 with the job. A repeated ``Idempotency-Key`` gets the first job."""
    app = request.app
    settings = app[SETTINGS]
    spec = kind_spec(kind)
    payload = await read_model(request, spec.payload_models[route])
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": "1 to 200 characters"}])
    await app[BACKPRESSURE].check(queue_for(kind))
    body = payload.model_dump(mode="json")
    for name, value in (defaults or {}).items():
        if body.get(name) is None:
            body[name] = value
    create = JobCreate(
        kind=kind,
        type=getattr(payload, "type", str(kind)),
        payload=body,
        owner=owner_of(request),
        max_attempts=spec.retry.max_attempts,
        request_id=request_id_var.get(),
        idempotency_key=key,
    )
    try:
        status, job = await app[REGISTRY].post("/jobs", json=create)
    except UpstreamError as exc:
        raise relay(exc) from exc
    if status == 200 and job["state"] != JobState.PENDING:
        return json_response(view_for(job), status=200)  # an idempotent replay of a job under way
    try:
        await enqueue(app[SCHEDULER], job, settings.time_scale)
    except UpstreamError as exc:
        await _not_queued(app, job, exc)
    app[COUNTERS]["submitted"] += 1
    logger.bind(job_id=job["id"], kind=str(kind), type=job["type"]).info("job accepted")
    return json_response(view_for(job), status=201 if status == 201 else 200)


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


def view_for(job: dict[str, Any]) -> dict[str, Any]:
    return book_view(job) if job["kind"] in (JobKind.EXPORT, JobKind.IMPORT) else job_view(job)


async def list_grouped(request: web.Request, kind: JobKind) -> web.Response:
    query = query_model(request, ListQuery)
    params: dict[str, Any] = {"kind": str(kind), "owner": owner_of(request), "limit": query.limit}
    if query.cursor:
        params["cursor"] = query.cursor
    try:
        _, page = await request.app[REGISTRY].get("/jobs", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    headers = {}
    if page.get("next_cursor"):
        headers["Link"] = f'<{request.path}?limit={query.limit}&cursor={page["next_cursor"]}>; rel="next"'
    return json_response(grouped(page["items"]), headers=headers)


async def fetch_own_job(request: web.Request) -> dict[str, Any]:
    """The job named in the path, if it exists and is the caller's; another's job is a 404 like a missing one."""
    raw = request.match_info["job_id"]
    try:
        job_id = uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no job {raw}") from None
    try:
        _, job = await request.app[REGISTRY].get(f"/jobs/{job_id}")
    except UpstreamError as exc:
        if exc.upstream_status == 404:
            raise NotFound(f"no job {job_id}") from exc
        raise
    if job["owner"] != owner_of(request):
        raise NotFound(f"no job {job_id}")
    return job


async def post_export(request: web.Request) -> web.Response:
    return await submit(request, JobKind.EXPORT, "exports")


async def post_import(request: web.Request) -> web.Response:
    return await submit(request, JobKind.IMPORT, "imports")


async def get_exports(request: web.Request) -> web.Response:
    return await list_grouped(request, JobKind.EXPORT)


async def get_imports(request: web.Request) -> web.Response:
    return await list_grouped(request, JobKind.IMPORT)


async def post_task(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return await submit(request, JobKind.TASK, "tasks", defaults={
        "duration_s": settings.task_duration_s, "fail_probability": settings.task_fail_probability})


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job: a pending one at once (200), a running one at its handler's next heartbeat (202 with
    ``cancel_requested``). A job already finished or failed is a 409; cancelling twice is harmless."""
    job = await fetch_own_job(request)
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
    logger.bind(job_id=job["id"], state=job["state"]).info("cancel requested")
    return json_response(view_for(job), status=200 if job["state"] == JobState.CANCELLED else 202)


class DeadQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queue: str | None = Field(default=None, max_length=100)
    limit: int = Field(default=100, ge=1, le=1000)


class RequeueBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=1000)
    all: bool = False
    queue: str | None = Field(default=None, max_length=100)


def require_operator(request: web.Request) -> None:
    if "operator" not in request.headers.get(ROLES_HEADER, "").split(","):
        raise Forbidden("operators only")


async def list_dead(request: web.Request) -> web.Response:
    require_operator(request)
    query = query_model(request, DeadQuery)
    params: dict[str, Any] = {"limit": query.limit, **({"queue": query.queue} if query.queue else {})}
    _, data = await request.app[SCHEDULER].get("/dead", params=params)
    return json_response(data)


async def requeue_dead(request: web.Request) -> web.Response:
    """Redrive dead letters: the registry gives each failed job its kind's attempts again (its history
    kept), then the job is queued again. One by one (``job_ids``) or every one (``all``, of ``queue``)."""
    require_operator(request)
    body = await read_model(request, RequeueBody)
    if (body.job_ids is None) == (not body.all):
        raise ValidationFailed("invalid request", [{"field": "job_ids", "message": "give job_ids, or all: true"}])
    app = request.app
    ids = [str(i) for i in body.job_ids or []]
    if body.all:
        params: dict[str, Any] = {"limit": 1000, **({"queue": body.queue} if body.queue else {})}
        _, dead = await app[SCHEDULER].get("/dead", params=params)
        ids = [item["job"]["id"] for item in dead["items"]]
    requeued, skipped = [], []
    for job_id in ids:
        try:
            _, job = await app[REGISTRY].call("GET", f"/jobs/{job_id}")
            extra = kind_spec(job["kind"]).retry.max_attempts
            _, job = await app[REGISTRY].post(f"/jobs/{job_id}/redrive", json={"extra_attempts": extra})
            await requeue(app[SCHEDULER], job, app[SETTINGS].time_scale, dead=True)
        except UpstreamError as exc:
            if exc.upstream_status not in (404, 409):
                raise
            skipped.append({"id": job_id, "reason": (exc.upstream_body or {}).get("error", str(exc))})
            continue
        requeued.append(job_id)
        logger.bind(job_id=job_id).info("dead letter redriven")
    return json_response({"requeued": requeued, "skipped": skipped})


async def get_job(request: web.Request) -> web.Response:
    return json_response(job_view(await fetch_own_job(request)))


async def get_result(request: web.Request) -> web.StreamResponse:
    job = await fetch_own_job(request)
    result = job.get("result") or {}
    if job["state"] != JobState.FINISHED or "artifact" not in result:
        raise NotFound(f"job {job['id']} has no result yet (it is {job['state']})")
    path = request.app[ARTIFACTS].path(result["artifact"])
    if not path.is_file():
        raise NotFound(f"the result of job {job['id']} is no longer available")
    return web.FileResponse(path, headers={
        "Content-Type": result.get("content_type", "application/octet-stream"),
        "Content-Disposition": f'attachment; filename="{result.get("filename", path.name)}"',
    })


async def _health(app: web.Application) -> dict[str, Any]:
    checks = {}
    for key, name in ((REGISTRY, "registry"), (SCHEDULER, "scheduler")):
        try:
            await app[key].get("/health", timeout_s=2)
        except UpstreamError as exc:
            raise Unavailable(f"{name}: {exc}") from exc
        checks[name] = "ok"
    return checks


async def _status(app: web.Application) -> dict[str, Any]:
    return {"counters": {**app[COUNTERS], "refused_queue_full": app[BACKPRESSURE].refused},
            "sweeper": app[SWEEPER].counters}


def create_app(settings: Settings) -> web.Application:
    app = create_service_app("receptionist", settings, health=_health, status=_status,
                             client_max_size=settings.max_json_bytes)
    app[SETTINGS] = settings
    app[ARTIFACTS] = ArtifactStore(settings.artifacts_dir)
    app[COUNTERS] = {"submitted": 0, "enqueue_failures": 0}
    app.cleanup_ctx.append(client_session_ctx(SESSION, settings))

    async def clients(app: web.Application):  # type: ignore[no-untyped-def]
        token = settings.service_token.get_secret_value() if settings.service_token else None
        app[REGISTRY] = ServiceClient("registry", settings.registry_url, app[SESSION], token=token,
                                      timeout_s=settings.http_timeout_s)
        app[SCHEDULER] = ServiceClient("scheduler", settings.scheduler_url, app[SESSION], token=token,
                                       timeout_s=settings.http_timeout_s)
        app[BACKPRESSURE] = Backpressure(app[SCHEDULER], settings.backpressure_refresh_s)
        app[SWEEPER] = Sweeper(settings, app[REGISTRY], app[SCHEDULER])
        task = asyncio.create_task(app[SWEEPER].run(), name="sweeper") if settings.sweep_interval_s > 0 else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(clients)
    app.router.add_post("/exports", post_export)
    app.router.add_post("/imports", post_import)
    app.router.add_get("/exports", get_exports)
    app.router.add_get("/imports", get_imports)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/result", get_result)
    app.router.add_delete("/jobs/{job_id}", cancel_job)
    app.router.add_post("/tasks", post_task)
    app.router.add_get("/dead", list_dead)
    app.router.add_post("/dead/requeue", requeue_dead)
    return app
