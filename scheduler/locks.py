"""Upkeep locks over HTTP: upkeep that every instance of a service runs, but that only one should do at a
time, takes a named lock here first (the receptionists' sweeper, :mod:`receptionist.sweeper`).

``POST /locks/{name}`` with ``{"holder", "ttl_s"}`` takes the lock for ``ttl_s`` seconds, or extends it
when the holder has it already, and answers ``{"held": true}``; ``{"held": false}`` when another holder
has it. ``POST /locks/{name}/release`` with ``{"holder"}`` gives it up. Both are safe to repeat: a repeated
take by the holder extends its own lock, a repeated release finds it gone. The lock lives in the queue
store (:meth:`scheduler.store.QueueStore.acquire_lock`): in Redis a key set ``NX PX``, shared by every
scheduler; in process for the stores that one scheduler owns.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from scheduler.store import QueueStore
from shared.contract import utcnow
from shared.web import json_response, parse_model, read_model

LockName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Holder = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LockPath(_Body):
    name: LockName


class AcquireBody(_Body):
    holder: Holder
    ttl_s: float = Field(gt=0, le=3600)


class ReleaseBody(_Body):
    holder: Holder


def add_routes(router: web.UrlDispatcher, store_key: web.AppKey[QueueStore]) -> None:
    async def acquire(request: web.Request) -> web.Response:
        name = parse_model(LockPath, dict(request.match_info)).name
        body = await read_model(request, AcquireBody)
        held = await request.app[store_key].acquire_lock(name, body.holder, body.ttl_s, utcnow())
        return json_response({"name": name, "held": held})

    async def release(request: web.Request) -> web.Response:
        name = parse_model(LockPath, dict(request.match_info)).name
        body = await read_model(request, ReleaseBody)
        released = await request.app[store_key].release_lock(name, body.holder)
        return json_response({"name": name, "released": released})

    router.add_post("/locks/{name}", acquire)
    router.add_post("/locks/{name}/release", release)
