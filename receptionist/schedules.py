"""Periodic schedules, the public routes: a job of a kind, fired at every due time of a cron expression or
every ``every_s`` seconds (:mod:`shared.schedules`; the firing is :mod:`receptionist.firing`'s).

    POST   /schedules {kind, payload, cron | every_s, timezone?, priority?}  -> 201 the schedule
    GET    /schedules?limit=&cursor=      -> {items, next_cursor}, newest first, and a Link header
    GET    /schedules/{id}                -> the schedule
    POST   /schedules/{id}/pause|resume   -> the schedule
    DELETE /schedules/{id}                -> 204

The kind and payload are checked as ``POST /jobs`` checks them (the same kinds, the kind's permission, a
bad payload a 400 naming ``payload.<field>``); the cron expression and the time zone too (400 naming
``cron`` or ``timezone``). A schedule belongs to the user who made it. Another user's is a 404; an
operator sees every schedule, another user's without its payload, and changes none but their own (403).
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, create_model

from receptionist.access import Caller
from receptionist.jobs import job_body, load_record, refuse_nul
from receptionist.keys import REGISTRY, SETTINGS
from receptionist.queries import ListQuery, PublicQuery, page_answer, read_query
from receptionist.relay import relay
from receptionist.submissions import generic_kind
from shared.api import Role
from shared.errors import Forbidden, NotFound, UpstreamError
from shared.fetching import require_fetchable
from shared.kinds import KindSpec
from shared.schedules import ScheduleCreate, ScheduleRequest
from shared.web import json_response, parse_model, read_json

_MODELS: dict[tuple[str, type[BaseModel]], type[BaseModel]] = {}


def schedule_model(spec: KindSpec) -> type[BaseModel]:
    """The body of ``POST /schedules`` for ``spec``'s kind: its payload validated with the kind's model."""
    key = (spec.kind, spec.payload)
    if key not in _MODELS:
        _MODELS[key] = create_model(
            "ScheduleSubmission", __base__=ScheduleRequest,
            kind=(Literal[spec.kind], ...), payload=(spec.payload, ...))  # type: ignore[call-overload]
    return _MODELS[key]


def _view(schedule: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return schedule if _owns(caller, schedule) else {**schedule, "payload": None}


def _owns(caller: Caller, schedule: dict[str, Any]) -> bool:
    return caller.is_user and schedule["owner"] == caller.owner


def _reader(request: web.Request) -> Caller:
    caller = Caller.of(request)
    read_query(request, PublicQuery)
    if not (caller.is_user or caller.is_operator):
        caller.require(Role.USER)  # the 401 or 403 of a caller who may see no schedule
    return caller


async def post_schedule(request: web.Request) -> web.Response:
    caller = Caller.of(request)
    caller.require(Role.USER)
    read_query(request, PublicQuery)
    body: Any = await read_json(request)
    spec = generic_kind(request, parse_model(ScheduleRequest, body).kind,
                        "and cannot be scheduled; a schedule takes the kinds POST /jobs takes")
    submission: Any = parse_model(schedule_model(spec), body, foreign="payload")
    payload = submission.payload
    for name in spec.fetch_urls:
        require_fetchable(getattr(payload, name), request.app[SETTINGS].fetch_allow, "payload." + name)
    body, job_type = job_body(request.app[SETTINGS], spec, payload)
    refuse_nul(body, "payload.")
    create = ScheduleCreate(
        kind=spec.kind, payload=body, cron=submission.cron, every_s=submission.every_s,
        timezone=submission.timezone, priority=submission.priority, owner=caller.owner, job_type=job_type,
        max_attempts=spec.retry.max_attempts)
    try:
        _, schedule = await request.app[REGISTRY].post("/schedules", json=create)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return json_response(schedule, status=201)


async def list_schedules(request: web.Request) -> web.Response:
    """The caller's schedules, newest first; an operator's: every schedule (others' without payload)."""
    caller = Caller.of(request)
    if not (caller.is_user or caller.is_operator):
        caller.require(Role.USER)
    query = read_query(request, ListQuery)
    params: dict[str, Any] = {"limit": query.limit}
    if not caller.is_operator:
        params["owner"] = caller.owner
    if query.cursor:
        params["cursor"] = query.cursor
    try:
        _, page = await request.app[REGISTRY].get("/schedules", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return page_answer(request, [_view(s, caller) for s in page["items"]], page.get("next_cursor"))


async def _load(request: web.Request) -> tuple[dict[str, Any], Caller]:
    """The schedule in the path, when the caller may see it: its owner, or an operator; a 404 otherwise."""
    caller = _reader(request)
    schedule = await load_record(request, "schedules", request.match_info["schedule_id"], "schedule")
    if not (_owns(caller, schedule) or caller.is_operator):
        raise NotFound(f"no schedule {schedule['id']}")
    return schedule, caller


async def _owned(request: web.Request, what: str) -> dict[str, Any]:
    schedule, caller = await _load(request)
    if not _owns(caller, schedule):
        raise Forbidden(f"only its owner may {what} a schedule")
    return schedule


async def get_schedule(request: web.Request) -> web.Response:
    schedule, caller = await _load(request)
    return json_response(_view(schedule, caller))


async def _change(request: web.Request, action: str) -> web.Response:
    schedule = await _owned(request, action)
    try:
        _, schedule = await request.app[REGISTRY].post(f"/schedules/{schedule['id']}/{action}")
    except UpstreamError as exc:
        raise relay(exc) from exc
    return json_response(schedule)


async def pause_schedule(request: web.Request) -> web.Response:
    return await _change(request, "pause")


async def resume_schedule(request: web.Request) -> web.Response:
    return await _change(request, "resume")


async def delete_schedule(request: web.Request) -> web.Response:
    schedule = await _owned(request, "remove")
    try:
        await request.app[REGISTRY].call("DELETE", f"/schedules/{schedule['id']}")
    except UpstreamError as exc:
        raise relay(exc) from exc
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/schedules", post_schedule)
    router.add_get("/schedules", list_schedules)
    router.add_get("/schedules/{schedule_id}", get_schedule)
    router.add_delete("/schedules/{schedule_id}", delete_schedule)
    router.add_post("/schedules/{schedule_id}/pause", pause_schedule)
    router.add_post("/schedules/{schedule_id}/resume", resume_schedule)
