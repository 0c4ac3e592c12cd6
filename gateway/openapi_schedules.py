"""The periodic schedules in the OpenAPI document (:mod:`receptionist.schedules`): their routes, the body of
``POST /schedules`` (one variant per kind ``POST /jobs`` takes, its payload that kind's model, with
``cron`` or ``every_s``, exactly one), and the links from a new schedule to what can be done with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.openapi_kinds import SCHEMAS, _put_payload
from shared.contract import MAX_PRIORITY, MIN_PRIORITY
from shared.kinds import KINDS, KindRegistry
from shared.schedules import ScheduleTiming, ScheduleView, ScheduleViewList

if TYPE_CHECKING:
    from gateway.openapi import _Builder

TAG = ("schedules", "Periodic schedules: a job of a kind fired on a cron expression or every N seconds")
#: Exactly one of ``cron`` and ``every_s`` (a null one counts as absent).
CRON_OR_EVERY = {"oneOf": [
    {"required": ["cron"], "properties": {"cron": {"type": "string"}, "every_s": {"type": "null"}}},
    {"required": ["every_s"], "properties": {"every_s": {"type": "number"}, "cron": {"type": "null"}}},
]}
_FOLLOWERS = ("getSchedule", "pauseSchedule", "resumeSchedule", "deleteSchedule")


def request_schema(schemas: dict[str, Any], kinds: KindRegistry = KINDS) -> dict[str, Any]:
    """Put ``ScheduleSubmission`` and its variants among ``schemas``; a ``$ref`` to it."""
    timing = ScheduleTiming.model_json_schema(mode="validation")["properties"]
    variants = []
    for spec in kinds.specs():
        if spec.own_route_only:
            continue
        name = f"ScheduleSubmission.{spec.kind}"
        schemas[name] = {
            "type": "object",
            "title": f"{spec.kind} schedule",
            "description": f"A schedule of `{spec.kind}` jobs, its payload as that kind's model takes it",
            "properties": {"kind": {"type": "string", "const": spec.kind}, "payload": _put_payload(schemas, spec),
                           **timing,
                           "priority": {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY,
                                        "default": 0, "description": "The priority of every job it fires"}},
            "required": ["kind", "payload"],
            "additionalProperties": False,
            **CRON_OR_EVERY,
        }
        variants.append({"$ref": SCHEMAS + name})
    schemas["ScheduleSubmission"] = {
        "title": "ScheduleSubmission",
        "description": "A periodic schedule: a job of `kind` with `payload` (checked like a `POST /jobs` of that "
                       "kind), fired at every due time of `cron` (in `timezone`) or every `every_s` seconds.",
        "oneOf": variants,
    }
    return {"$ref": SCHEMAS + "ScheduleSubmission"}


def add_schedule_routes(b: _Builder) -> None:
    """The schedule routes, their answers, and the links from ``createSchedule`` to the schedule."""
    from gateway.openapi import _AUTHZ, CURSOR, _h, _path, _query

    schedule_id = _path("schedule_id", {"type": "string", "format": "uuid"},
                        "The schedule's id (anything but a UUID is a 404)")
    b.add("post", "/schedules", "createSchedule", "Schedule a job of a kind, periodically", "schedules", {
        "201": b.answer("The schedule, with its next due time", ScheduleView),
    }, ("400", *_AUTHZ, "413", "415"), description=(
        "`kind` is any kind `POST /jobs` takes, and `payload` is checked as there (a 400 naming "
        "`payload.<field>`). `cron` (five fields, or `@hourly`, `@daily`...) is read in `timezone` (an IANA "
        "name, UTC by default); `every_s` counts from the schedule's creation; a bad one is a 400 naming it. "
        "Each due time fires one job, whichever receptionist fires it; due times missed while nothing could "
        "fire are coalesced into one firing of the latest."))
    b.paths["/schedules"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": request_schema(b.schemas.schemas)}}}
    b.add("get", "/schedules", "listSchedules", "The caller's schedules (every one, for operators)", "schedules", {
        "200": b.answer("The schedules, newest first", ScheduleViewList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Schedules per page"),
        CURSOR])
    b.add("get", "/schedules/{schedule_id}", "getSchedule", "A schedule", "schedules", {
        "200": b.answer("The schedule", ScheduleView),
    }, ("404", *_AUTHZ), parameters=[schedule_id])
    for action, summary, description in (
            ("pause", "Pause a schedule", "It fires nothing until resumed."),
            ("resume", "Resume a schedule", "It is due next after now: what it missed while paused is not made up.")):
        b.add("post", f"/schedules/{{schedule_id}}/{action}", f"{action}Schedule", summary, "schedules", {
            "200": b.answer("The schedule", ScheduleView),
        }, ("404", *_AUTHZ), parameters=[schedule_id], description=description + " Its owner's alone.")
    b.add("delete", "/schedules/{schedule_id}", "deleteSchedule", "Remove a schedule", "schedules", {
        "204": b.answer("Removed (the jobs it fired stay)"),
    }, ("404", *_AUTHZ), parameters=[schedule_id], description="Its owner's alone.")
    links = {target: {"operationId": target, "parameters": {"schedule_id": "$response.body#/id"}}
             for target in _FOLLOWERS}
    b.paths["/schedules"]["post"]["responses"]["201"]["links"] = links
