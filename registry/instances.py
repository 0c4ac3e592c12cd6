"""The registry's service instances: their routes, when one counts as gone, and the sweep that drops the
long gone. What instances send is :mod:`shared.instances`; they send it with :mod:`shared.heartbeat`.

    PUT    /instances/{id}         InstanceBeat -> 200 InstanceView; 400 for an id that is no UUID
    DELETE /instances/{id}         -> 204; 404 when unknown
    GET    /instances?kind=&gone=  -> InstanceList, by kind, then name

An instance is **gone** when it has been silent for longer than ``REGISTRY_INSTANCE_GONE_S``, or than three
of its own heartbeat intervals when that is longer (an instance that beats slowly is not gone between two
beats). A gone instance is still listed, with ``gone: true``, until it has been silent for
``REGISTRY_INSTANCE_DROP_S``; then it is dropped. A heartbeat brings a gone instance back.

The registry registers itself too, straight into its store (:class:`StoreSink`): with several registries
on one database, every one of them is listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web
from loguru import logger

from registry.queries import RegistryQuery
from registry.store import JobStore
from shared.contract import utcnow
from shared.errors import NotFound, ValidationFailed
from shared.instances import MAX_BEAT_BYTES, Instance, InstanceBeat, InstanceKind, InstanceList, InstanceView
from shared.web import json_response, parse_model, query_model, read_json

#: An instance is gone after this many of its own heartbeat intervals of silence, at least.
MISSED_BEATS = 3


class InstanceQuery(RegistryQuery):
    kind: InstanceKind | None = None
    #: Only the gone ones (true), or only the alive ones (false); both when absent.
    gone: bool | None = None


@dataclass(frozen=True)
class Liveness:
    """How long an instance may be silent before it is gone (``gone_s``) and before it is dropped
    (``drop_s``)."""

    gone_s: float
    drop_s: float

    def view(self, instance: Instance, now: datetime) -> InstanceView | None:
        """The instance as listed at ``now``; None once it is to be dropped."""
        silent_s = max(0.0, (now - instance.last_seen).total_seconds())
        if silent_s > self.drop_s:
            return None
        gone = silent_s > max(self.gone_s, MISSED_BEATS * instance.heartbeat_s)
        return InstanceView(**instance.model_dump(), silent_s=round(silent_s, 3), gone=gone)


class StoreSink:
    """The registry's own heartbeats: straight into its store, which it may not reach over HTTP."""

    def __init__(self, app: web.Application, store_key: web.AppKey[JobStore]) -> None:
        self.app = app
        self.store_key = store_key

    async def put(self, instance_id: uuid.UUID, beat: InstanceBeat) -> None:
        await self.app[self.store_key].put_instance(_stored(instance_id, beat, utcnow()))

    async def remove(self, instance_id: uuid.UUID) -> None:
        await self.app[self.store_key].delete_instance(instance_id)

    async def close(self) -> None:
        pass


def _stored(instance_id: uuid.UUID, beat: InstanceBeat, now: datetime) -> Instance:
    return Instance(**beat.model_dump(), id=instance_id, last_seen=now)


def _instance_id(request: web.Request, missing: type[NotFound] | type[ValidationFailed]) -> uuid.UUID:
    raw = request.match_info["instance_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise missing("not an instance id", [{"field": "instance_id", "message": "a UUID is required"}]) from None


def add_instance_routes(app: web.Application, store_key: web.AppKey[JobStore], liveness: Liveness) -> None:
    """Add the instance routes to the registry app, and the sweep that drops instances silent for longer
    than ``liveness.drop_s``."""

    async def put(request: web.Request) -> web.Response:
        instance_id = _instance_id(request, ValidationFailed)
        beat = parse_model(InstanceBeat, await read_json(request, MAX_BEAT_BYTES))
        instance = _stored(instance_id, beat, utcnow())
        await request.app[store_key].put_instance(instance)
        view = liveness.view(instance, instance.last_seen)
        return json_response(view)

    async def delete(request: web.Request) -> web.Response:
        instance_id = _instance_id(request, NotFound)
        if not await request.app[store_key].delete_instance(instance_id):
            raise NotFound(f"instance {instance_id} not found", [{"field": "instance_id", "message": "no such instance"}])
        logger.info("instance {} deregistered", instance_id)
        return web.Response(status=204)

    async def list_(request: web.Request) -> web.Response:
        query = query_model(request, InstanceQuery)
        now = utcnow()
        views = [liveness.view(i, now) for i in await request.app[store_key].list_instances(kind=query.kind)]
        items = [v for v in views if v is not None and (query.gone is None or v.gone == query.gone)]
        return json_response(InstanceList(items=items))

    async def sweep(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_drop_loop(app, store_key, liveness.drop_s), name="instance-sweep")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweep)
    app.router.add_put("/instances/{instance_id}", put)
    app.router.add_delete("/instances/{instance_id}", delete)
    app.router.add_get("/instances", list_)


async def _drop_loop(app: web.Application, store_key: web.AppKey[JobStore], drop_s: float) -> None:
    """Drop the instances silent for longer than ``drop_s``, a few times per ``drop_s``; an upkeep loop:
    a failure is logged, and the next round tries again."""
    interval_s = min(max(drop_s / 4, 0.05), 60.0)
    while True:
        await asyncio.sleep(interval_s)
        try:
            dropped = await app[store_key].drop_instances(utcnow() - timedelta(seconds=drop_s))
        except Exception as exc:
            logger.warning("dropping long gone instances failed: {}", exc)
            continue
        if dropped:
            logger.info("dropped {} instances silent for over {:g} s", dropped, drop_s)
