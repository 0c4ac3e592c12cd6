"""The receptionist's routes: submissions of each kind, lists grouped by state, a job, its result."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from receptionist.settings import Settings
from receptionist.views import book_view, grouped, job_view
from shared.artifacts import ArtifactStore
from shared.contract import JobCreate, JobKind, JobState, QueuedJob, queue_for
from shared.errors import Conflict, NotFound, Unavailable, UpstreamError, ValidationFailed
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

USER_HEADER = "X-Conveyor-User"
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


async def submit(request: web.Request, kind: JobKind, route: str) -> web.Response:
    """Validate, register, enqueue: 201 with the job. A repeated ``Idempotency-Key`` gets the first job."""
    app = request.app
    spec = kind_spec(kind)
    payload = await read_model(request, spec.payload_models[route])
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": "1 to 200 characters"}])
    create = JobCreate(
        kind=kind,
        type=getattr(payload, "type", str(kind)),
        payload=payload.model_dump(mode="json"),
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
    queued = QueuedJob(id=job["id"], kind=kind, type=job["type"], payload=job["payload"], owner=job["owner"],
                       retry=spec.retry, timeout_s=spec.timeout_s, request_id=job["request_id"])
    try:
        await app[SCHEDULER].post(f"/queues/{queue_for(kind)}/jobs", json={"jobs": [queued]})
    except UpstreamError as exc:
        app[COUNTERS]["enqueue_failures"] += 1
        logger.bind(job_id=job["id"]).error("could not enqueue: {}", exc)
        await _give_up(app, job["id"], f"could not be queued: {exc}")
        raise Unavailable("the job could not be queued; nothing was accepted, try again") from exc
    app[COUNTERS]["submitted"] += 1
    logger.bind(job_id=job["id"], kind=str(kind), type=job["type"]).info("job accepted")
    return json_response(view_for(job), status=201 if status == 201 else 200)


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
    return {"counters": app[COUNTERS]}


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
        yield

    app.cleanup_ctx.append(clients)
    app.router.add_post("/exports", post_export)
    app.router.add_post("/imports", post_import)
    app.router.add_get("/exports", get_exports)
    app.router.add_get("/imports", get_imports)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/result", get_result)
    return app
