"""The receptionist's app: its clients, background loops and route table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from receptionist import (
    data_exports,
    data_imports,
    ecgs,
    events,
    jobs,
    log_stream,
    operators,
    schedules,
    submissions,
    tasks,
    users,
)
from receptionist.data_reader import DataReader
from receptionist.expiry import ArtifactSweeper
from receptionist.firing import ScheduleFirer
from receptionist.keys import (
    ARTIFACT_SWEEPER,
    ARTIFACTS,
    BACKPRESSURE,
    COUNTERS,
    CREATES,
    DATA_READER,
    ENQUEUES,
    EVENT_STREAMS,
    FIRER,
    LOG_FOLLOWERS,
    LOGS,
    REGISTRY,
    SCHEDULER,
    SESSION,
    SETTINGS,
    SWEEPER,
    UPSTREAM,
)
from receptionist.log_followers import LogFollowers
from receptionist.queueing import Backpressure, creates_batcher, enqueues_batcher
from receptionist.settings import Settings
from receptionist.sse import OpenStreams
from receptionist.sweeper import Sweeper
from shared.artifacts import open_store
from shared.discovery import follow_instances
from shared.errors import ConveyorError, Unavailable, UpstreamError
from shared.http import ServiceClient
from shared.instances import InstanceKind
from shared.kinds import load_kinds
from shared.upstream_client import upstream_client_ctx
from shared.web import client_session_ctx, create_service_app

__all__ = ["SWEEPER", "create_app"]


async def _health(app: web.Application) -> dict[str, Any]:
    checks = {}
    for key, name in ((REGISTRY, "registry"), (SCHEDULER, "scheduler")):
        try:
            await app[key].get("/health", timeout_s=2)
        except UpstreamError as exc:
            raise Unavailable(f"{name}: {exc}") from exc
        checks[name] = "ok"
    try:
        await app[ARTIFACTS].check()
    except ConveyorError as exc:
        raise Unavailable(f"artifacts: {exc}") from exc
    checks["artifacts"] = "ok"
    return checks


async def _status(app: web.Application) -> dict[str, Any]:
    return {"counters": {**app[COUNTERS], "refused_queue_full": app[BACKPRESSURE].refused},
            "sweeper": app[SWEEPER].counters, "event_streams": app[EVENT_STREAMS].open,
            "event_stream_identities": len(app[EVENT_STREAMS].by_identity),
            "event_streams_refused": app[EVENT_STREAMS].refused,
            "artifacts_expired": app[ARTIFACT_SWEEPER].deleted, "schedules": app[FIRER].counters}


def _snapshot(app: web.Application) -> dict[str, Any]:
    """The heartbeat's snapshot, besides the requests in flight: its event streams and submissions."""
    return {"event_streams": app[EVENT_STREAMS].open, "submitted": app[COUNTERS]["submitted"]}


def create_app(settings: Settings) -> web.Application:
    load_kinds()  # CONVEYOR_KINDS and the conveyor.kinds entry points: a bad one stops the service here
    app = create_service_app("receptionist", settings, health=_health, status=_status, snapshot=_snapshot,
                             client_max_size=max(settings.max_json_bytes, settings.max_ecg_bytes),
                             max_json_bytes=settings.max_json_bytes)
    app[SETTINGS] = settings
    app[ARTIFACTS] = open_store(settings.artifacts)
    app[COUNTERS] = {"submitted": 0, "enqueue_failures": 0}
    app[EVENT_STREAMS] = OpenStreams(settings.event_streams_max, settings.event_streams_per_identity)
    app[LOG_FOLLOWERS] = LogFollowers()
    app.on_shutdown.append(events.stop_streams)
    app.cleanup_ctx.append(client_session_ctx(SESSION, settings))
    app.cleanup_ctx.append(upstream_client_ctx(UPSTREAM))

    async def clients(app: web.Application) -> AsyncIterator[None]:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        app[REGISTRY] = ServiceClient("registry", settings.registry_url, app[SESSION], token=token,
                                      timeout_s=settings.http_timeout_s, upstream=app[UPSTREAM])
        app[SCHEDULER] = ServiceClient("scheduler", settings.scheduler_url, app[SESSION], token=token,
                                       timeout_s=settings.http_timeout_s, upstream=app[UPSTREAM])
        app[LOGS] = ServiceClient("logging_service", settings.logging_url, app[SESSION], token=token,
                                  timeout_s=settings.http_timeout_s,
                                  upstream=app[UPSTREAM]) if settings.logging_url else None
        app[BACKPRESSURE] = Backpressure(app[SCHEDULER], settings.backpressure_refresh_s)
        app[CREATES] = creates_batcher(app[REGISTRY], settings.batch_window_s)
        app[ENQUEUES] = enqueues_batcher(app[SCHEDULER], settings.time_scale, settings.batch_window_s)
        app[SWEEPER] = Sweeper(settings, app[REGISTRY], app[SCHEDULER])
        app[FIRER] = ScheduleFirer(settings, app[REGISTRY], app[SCHEDULER], app[CREATES])
        app[ARTIFACT_SWEEPER] = ArtifactSweeper(app[ARTIFACTS], app[REGISTRY], settings.artifact_ttl_s,
                                                settings.artifact_sweep_interval_s)
        loops = []
        if settings.sweep_interval_s > 0:
            loops.append(asyncio.create_task(app[SWEEPER].run(), name="sweeper"))
        if settings.schedule_poll_s > 0:
            loops.append(asyncio.create_task(app[FIRER].run(), name="schedule-firer"))
        if settings.artifact_sweep_interval_s > 0:
            loops.append(asyncio.create_task(app[ARTIFACT_SWEEPER].run(), name="artifact-sweeper"))
        if settings.discovery_interval_s > 0:
            loops.append(asyncio.create_task(follow_instances(app[SCHEDULER], app[REGISTRY], InstanceKind.SCHEDULER,
                                                              settings.discovery_interval_s), name="discovery"))
        yield
        for task in loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[BACKPRESSURE].close()
        await app[CREATES].close()
        await app[ENQUEUES].close()
        await app[ARTIFACTS].close()

    app.cleanup_ctx.append(clients)
    app[DATA_READER] = DataReader(settings.data_store_url)

    async def data_reader(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[DATA_READER].close()

    app.cleanup_ctx.append(data_reader)
    router = app.router
    router.add_post("/exports", jobs.post_export)
    router.add_post("/imports", jobs.post_import)
    router.add_post("/tasks", jobs.post_task)
    router.add_get("/exports", jobs.get_exports)
    router.add_get("/imports", jobs.get_imports)
    router.add_get("/jobs", jobs.list_jobs)
    router.add_post("/jobs", submissions.post_job)
    router.add_get("/jobs/{job_id}", jobs.get_job)
    router.add_delete("/jobs/{job_id}", jobs.cancel_job)
    router.add_get("/jobs/{job_id}/result", jobs.get_result)
    router.add_get("/jobs/{job_id}/logs", jobs.get_job_logs)
    router.add_get("/queues", operators.queues)
    router.add_post("/queues/{name}/pause", operators.pause_queue)
    router.add_post("/queues/{name}/resume", operators.resume_queue)
    router.add_get("/instances", operators.instances)
    router.add_get("/logs", operators.logs)
    router.add_get("/logs/stream", log_stream.log_stream)
    router.add_get("/dead", operators.list_dead)
    router.add_post("/dead/requeue", operators.requeue_dead)
    router.add_post("/dead/discard", operators.discard_dead)
    router.add_get("/users", users.list_users)
    router.add_post("/users", users.add_user)
    router.add_delete("/users/{username}", users.remove_user)
    router.add_put("/users/{username}/password", users.change_password)
    router.add_put("/users/{username}/roles", users.change_roles)
    ecgs.add_routes(router)
    data_imports.add_routes(router)
    data_exports.add_routes(router)
    tasks.add_routes(router)
    events.add_routes(router)
    schedules.add_routes(router)
    return app
