"""The handler's app: the worker runs in ``cleanup_ctx``; HTTP only shows its health and status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Gauge

from handler.settings import Settings
from handler.worker import Worker, queues_of
from shared.artifacts import open_store
from shared.datastore import DataStore
from shared.discovery import follow_instances
from shared.errors import ConveyorError, Unavailable, UpstreamError
from shared.http import ServiceClient
from shared.instances import InstanceKind
from shared.kinds import load_kinds
from shared.upstream_client import UpstreamClient, upstream_client_ctx
from shared.web import METRICS, client_session_ctx, create_service_app

SESSION = web.AppKey("session", aiohttp.ClientSession)
#: The lean client of the worker's calls to the scheduler and the registry.
UPSTREAM = web.AppKey("upstream", UpstreamClient)
WORKER = web.AppKey("worker", Worker)
SETTINGS = web.AppKey("settings", Settings)


async def _health(app: web.Application) -> dict[str, Any]:
    worker = app[WORKER]
    try:
        await worker.scheduler.get("/health", timeout_s=2)
    except UpstreamError as exc:
        raise Unavailable(f"scheduler: {exc}") from exc
    try:
        await worker.artifacts.check()
    except ConveyorError as exc:
        raise Unavailable(f"artifacts: {exc}") from exc
    return {"scheduler": "ok", "artifacts": "ok"}


async def _status(app: web.Application) -> dict[str, Any]:
    return app[WORKER].status()


def _snapshot(app: web.Application) -> dict[str, Any]:
    worker = app.get(WORKER)
    return worker.snapshot() if worker is not None else {}


def create_app(settings: Settings) -> web.Application:
    kinds = load_kinds()  # CONVEYOR_KINDS and the conveyor.kinds entry points: a bad one stops the service here
    app = create_service_app("handler", settings, health=_health, status=_status, snapshot=_snapshot)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(client_session_ctx(SESSION, settings))
    app.cleanup_ctx.append(upstream_client_ctx(UPSTREAM))

    async def run_worker(app: web.Application) -> AsyncIterator[None]:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        session = app[SESSION]
        queues = set(queues_of(settings, kinds))
        datastore = (DataStore.from_url(settings.data_store_url)
                     if any(spec.uses_datastore and spec.queue in queues for spec in kinds.specs()) else None)
        if datastore is not None:
            await datastore.open()
        worker = Worker(
            settings,
            scheduler=ServiceClient("scheduler", settings.scheduler_url, session, token=token,
                                    timeout_s=settings.http_timeout_s, upstream=app[UPSTREAM]),
            registry=ServiceClient("registry", settings.registry_url, session, token=token,
                                   timeout_s=settings.http_timeout_s, upstream=app[UPSTREAM]),
            artifacts=open_store(settings.artifacts),
            datastore=datastore,
        )
        app[WORKER] = worker
        slots = Gauge("conveyor_handler_slots", "This handler's job slots, busy (running a job) or free",
                      ["state"], registry=app[METRICS].registry)
        slots.labels("busy").set_function(lambda: len(worker.running))
        slots.labels("free").set_function(lambda: max(settings.concurrency - len(worker.running), 0))
        worker.start()
        following = (asyncio.create_task(follow_instances(worker.scheduler, worker.registry, InstanceKind.SCHEDULER,
                                                          settings.discovery_interval_s), name="discovery")
                     if settings.discovery_interval_s > 0 else None)
        yield
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await worker.stop()
        await worker.artifacts.close()
        if datastore is not None:
            await datastore.close()

    app.cleanup_ctx.append(run_worker)
    return app
