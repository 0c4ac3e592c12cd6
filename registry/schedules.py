"""The registry's periodic schedules: kept here, the system of record, and handed to the firers (the
receptionists) when due, by this registry's clock.

    POST   /schedules                 ScheduleCreate -> 201 Schedule (next_run_at computed); 409 for a taken id
    GET    /schedules?owner=&limit=&cursor=  -> ScheduleList, newest first
    GET    /schedules/due?limit=      -> FiringList: what to fire now (shared.schedules.firing)
    GET    /schedules/{id}            -> Schedule; 404
    POST   /schedules/{id}/pause      -> Schedule; 404
    POST   /schedules/{id}/resume     -> Schedule, due next after now; 404
    POST   /schedules/{id}/fired      Fired -> 200 Schedule when this firer moved it on; 409 when another did
    DELETE /schedules/{id}            -> 204; 404

Firing is register-then-advance: a firer registers the job of a due time under a key unique to (schedule,
due time), then moves the schedule on with ``/fired``, a compare-and-set on ``next_run_at``. Of several
firers of one due time, every registration finds the same job and one compare-and-set wins; a firer
that dies in between leaves the schedule due, and the next one registers the same job again (finding it)
and moves it on, so no due time is lost or fired twice.
"""

from __future__ import annotations

import uuid

from aiohttp import web
from pydantic import Field, field_validator

from registry.queries import RegistryQuery
from registry.store import JobStore
from registry.store.paging import decode_cursor
from shared.contract import utcnow
from shared.errors import Conflict, NotFound
from shared.schedules import Fired, FiringList, FiringOwner, Schedule, ScheduleCreate, firing, next_due
from shared.web import json_response, query_model, read_model


class ScheduleListQuery(RegistryQuery):
    owner: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=1000)

    @field_validator("cursor")
    @classmethod
    def _known_cursor(cls, cursor: str | None) -> str | None:
        if cursor is not None:
            decode_cursor(cursor)
        return cursor


class DueQuery(RegistryQuery):
    limit: int = Field(default=100, ge=1, le=1000)


def _schedule_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["schedule_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _not_found(raw) from None


async def _owner(store: JobStore, owner: str) -> FiringOwner | None:
    """A schedule's owner as the registry knows them now; None for an owner who is no user of the registry's
    (an anonymous caller's id is no UUID)."""
    try:
        user_id = uuid.UUID(owner)
    except ValueError:
        return None
    user = await store.get_user_by_id(user_id)
    if user is None:
        return FiringOwner(exists=False)
    return FiringOwner(exists=True, roles=[str(role) for role in user.roles], permissions=list(user.permissions))


def _not_found(schedule_id: object) -> NotFound:
    return NotFound(f"schedule {schedule_id} not found", [{"field": "schedule_id", "message": "no such schedule"}])


def add_schedule_routes(app: web.Application, store_key: web.AppKey[JobStore]) -> None:
    """The schedule routes, on the store under ``store_key``."""

    async def create(request: web.Request) -> web.Response:
        spec = await read_model(request, ScheduleCreate)
        now = utcnow()
        schedule = Schedule(**spec.model_dump(), next_run_at=next_due(spec, now, now), created_at=now, updated_at=now)
        if not await request.app[store_key].create_schedule(schedule):
            raise Conflict("schedule id taken", [{"field": "id", "message": f"schedule {spec.id} exists"}])
        return json_response(schedule, status=201)

    async def listing(request: web.Request) -> web.Response:
        query = query_model(request, ScheduleListQuery)
        page = await request.app[store_key].list_schedules(owner=query.owner, limit=query.limit, cursor=query.cursor)
        return json_response(page)

    async def due(request: web.Request) -> web.Response:
        """The due schedules, each with its owner as they are now: roles change and users go, and a
        schedule fires only what its owner could still submit (the firer decides, it knows the kinds'
        permissions)."""
        query = query_model(request, DueQuery)
        now = utcnow()
        store = request.app[store_key]
        items = [f for s in await store.due_schedules(now, query.limit) if (f := firing(s, now)) is not None]
        for item in items:
            item.owner = await _owner(store, item.schedule.owner)
        return json_response(FiringList(items=items))

    async def get(request: web.Request) -> web.Response:
        schedule_id = _schedule_id(request)
        schedule = await request.app[store_key].get_schedule(schedule_id)
        if schedule is None:
            raise _not_found(schedule_id)
        return json_response(schedule)

    async def pause(request: web.Request) -> web.Response:
        schedule_id = _schedule_id(request)
        schedule = await request.app[store_key].set_schedule_paused(schedule_id, True, None, utcnow())
        if schedule is None:
            raise _not_found(schedule_id)
        return json_response(schedule)

    async def resume(request: web.Request) -> web.Response:
        """Due next after now: the due times it missed while paused are not made up for. Resuming a
        schedule that is not paused changes nothing."""
        schedule_id = _schedule_id(request)
        store = request.app[store_key]
        schedule = await store.get_schedule(schedule_id)
        if schedule is None:
            raise _not_found(schedule_id)
        if schedule.paused:
            now = utcnow()
            schedule = await store.set_schedule_paused(
                schedule_id, False, next_due(schedule.timing(), schedule.created_at, now), now)
            if schedule is None:
                raise _not_found(schedule_id)
        return json_response(schedule)

    async def fired(request: web.Request) -> web.Response:
        schedule_id = _schedule_id(request)
        body = await read_model(request, Fired)
        schedule = await request.app[store_key].advance_schedule(schedule_id, body.expected, body.due_at,
                                                                 body.next_run_at, utcnow())
        if schedule is None:
            raise Conflict("the schedule was fired by another, paused or removed",
                           [{"field": "expected", "message": "not the schedule's next_run_at (or it is paused)"}])
        return json_response(schedule)

    async def delete(request: web.Request) -> web.Response:
        schedule_id = _schedule_id(request)
        if not await request.app[store_key].delete_schedule(schedule_id):
            raise _not_found(schedule_id)
        return web.Response(status=204)

    router = app.router
    router.add_post("/schedules", create)
    router.add_get("/schedules", listing)
    router.add_get("/schedules/due", due)
    router.add_get("/schedules/{schedule_id}", get)
    router.add_delete("/schedules/{schedule_id}", delete)
    router.add_post("/schedules/{schedule_id}/pause", pause)
    router.add_post("/schedules/{schedule_id}/resume", resume)
    router.add_post("/schedules/{schedule_id}/fired", fired)
