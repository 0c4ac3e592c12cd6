"""Operator routes: the queues, pausing and resuming them, the logs, the dead letters, redriving and
discarding them, and the service instances. An operator sees states, not contents
(:mod:`receptionist.redaction`). Every action is logged (to the central log) with the operator's name."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from loguru import logger
from pydantic import Field

from receptionist.access import Caller
from receptionist.keys import LOGS, REGISTRY, SCHEDULER, SETTINGS
from receptionist.queries import ListQuery, PublicQuery, decode_cursor, encode_cursor, page_answer, page_of, read_query
from receptionist.redaction import redact_error, redact_log_line
from receptionist.relay import relay
from receptionist.sweeper import requeue
from shared.api import QUEUE_PATTERN, DiscardRequest, QueueName, RequeueRequest, Role
from shared.contract import UtcTimestamp, as_utc
from shared.errors import NotFound, Unavailable, UpstreamError, ValidationFailed
from shared.instances import InstanceKind
from shared.kinds import KINDS, UnknownKind, kind_spec
from shared.logs import LogLevel
from shared.web import json_response, read_model

#: Dead letters a redrive of ``all`` asks the scheduler for at a time (it goes on until none is left).
REDRIVE_BATCH = 500


#: Lines of one and the same time a log cursor may skip (the logging service hands out 5,000 at most).
LOG_SKIP_MAX = 3000


#: The longest text a log query searches for, and what it may not hold (no stored message has a NUL).
LOG_TEXT_MAX = 200
NO_NUL = r"^[^\x00]*$"

_Selection = TypeVar("_Selection", bound=RequeueRequest)


class DeadQuery(ListQuery):
    queue: QueueName | None = None


class JobLogQuery(ListQuery):
    """``GET /jobs/{id}/logs``: the job is the path's."""

    service: str | None = Field(default=None, max_length=100)
    level: LogLevel | None = None
    min_level: LogLevel | None = None
    request_id: str | None = Field(default=None, max_length=200)
    #: RFC 3339; one without an offset is UTC, as the logging service reads it (and as a cursor's time is).
    since: UtcTimestamp | None = None
    until: UtcTimestamp | None = None
    q: str | None = Field(default=None, min_length=1, max_length=LOG_TEXT_MAX, pattern=NO_NUL,
                          description="A substring of the message, in any case")


class LogQuery(JobLogQuery):
    """``GET /logs``."""

    job_id: uuid.UUID | None = None


class InstanceQuery(ListQuery):
    kind: InstanceKind | None = None
    gone: bool | None = None


async def queues(request: web.Request) -> web.Response:
    """``GET /queues``: every queue, by name, a page at a time: its name (``queue``), ready, delayed, leased,
    dead, totals, the age of its oldest ready job and whether it is paused, from a snapshot of the
    scheduler's counters. What autoscaling launchers last reported comes beside the list (``autoscale``),
    when there is any."""
    Caller.of(request).require(Role.OPERATOR)
    query = read_query(request, ListQuery)
    try:
        _, status = await request.app[SCHEDULER].get("/status")
    except UpstreamError as exc:
        raise relay(exc) from exc
    rows = [{"queue": name, **fields} for name, fields in status["queues"].items()]
    items, next_cursor = page_of(rows, lambda row: (row["queue"],), query, width=1)
    extra = {"autoscale": status["autoscale"]} if "autoscale" in status else {}
    return page_answer(request, items, next_cursor, body={"items": items, **extra})


async def pause_queue(request: web.Request) -> web.Response:
    """``POST /queues/{name}/pause``: the queue takes jobs but hands none out (leases out go on). Idempotent;
    answers the queue as ``GET /queues`` shows it."""
    return await _set_paused(request, True)


async def resume_queue(request: web.Request) -> web.Response:
    """``POST /queues/{name}/resume``: hand the queue's jobs out again. Idempotent; answers the queue."""
    return await _set_paused(request, False)


async def _require_queue(app: web.Application, name: str, field: str) -> None:
    """A 404 naming ``field`` unless ``name`` is a queue: one of a kind's, or one the scheduler holds jobs in."""
    known = set(KINDS.queues())
    if re.fullmatch(QUEUE_PATTERN, name) and len(name) <= 100 and name not in known:
        try:
            _, status = await app[SCHEDULER].get("/status")
        except UpstreamError as exc:
            raise relay(exc) from exc
        known |= set(status["queues"])
    if name not in known:
        raise NotFound(f"no queue {name!r}", [{"field": field, "message": (
            "not a queue of any kind, nor one the scheduler holds jobs in")}])


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    read_query(request, PublicQuery)
    name = request.match_info["name"]
    scheduler = request.app[SCHEDULER]
    await _require_queue(request.app, name, "name")
    try:
        _, snapshot = await scheduler.post(f"/queues/{name}/{'pause' if paused else 'resume'}")
    except UpstreamError as exc:
        raise relay(exc) from exc
    logger.bind(queue=name, operator=caller.username).info(
        "queue {} {} by {}", name, "paused" if paused else "resumed", caller.username)
    return json_response(snapshot)


async def instances(request: web.Request) -> web.Response:
    """``GET /instances``: every service instance the registry knows (:mod:`shared.instances`), by kind
    and name, with its last status snapshot and whether it is gone."""
    Caller.of(request).require(Role.OPERATOR)
    query = read_query(request, InstanceQuery)
    params = {key: str(value).lower() if isinstance(value, bool) else str(value)
              for key, value in query.model_dump(exclude_none=True, exclude={"limit", "cursor"}).items()}
    try:
        _, answer = await request.app[REGISTRY].get("/instances", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    items, next_cursor = page_of(answer["items"], lambda item: (item["kind"], item["name"], item["id"]), query,
                                 width=3)
    return page_answer(request, items, next_cursor)


def _moment(text: str) -> datetime:
    """An ISO time in UTC (a naive one is UTC); a ValueError for one outside the calendar once in UTC."""
    return as_utc(datetime.fromisoformat(text))


async def query_logs(request: web.Request, query: JobLogQuery, *, redact: bool,
                     job_id: uuid.UUID | None = None) -> web.Response:
    """A page of log lines from the logging service (of ``job_id`` when given), newest first; as an operator
    sees them with ``redact``.

    The logging service has no cursor: a page's cursor is the time of its last line and how many lines of
    that very time were shown, so the next page asks for the lines up to that time and skips those."""
    app = request.app
    if app[LOGS] is None:
        raise Unavailable("no logging service is configured (RECEPTIONIST_LOGGING_URL)")
    params = {k: (v.isoformat() if isinstance(v, datetime) else str(v))
              for k, v in query.model_dump(exclude_none=True, exclude={"cursor", "limit"}).items()}
    if job_id is not None:
        params["job_id"] = str(job_id)
    at, seen = None, 0
    if query.cursor:
        moment, seen = decode_cursor(query.cursor, 2)
        try:
            # A cursor made here has its time's offset and a count (a bool is an int to Python, not to us).
            at = _moment(moment) if datetime.fromisoformat(moment).tzinfo is not None else None
        except (TypeError, ValueError):
            at = None
        if at is None or type(seen) is not int or not 0 <= seen < LOG_SKIP_MAX:
            raise ValidationFailed("invalid request", [{"field": "cursor", "message": "not a cursor this list handed out"}])
        until = at + timedelta(microseconds=1)
        if query.until is None or until < query.until:
            params["until"] = until.isoformat()
    params["limit"] = str(query.limit + seen + 1)
    try:
        _, data = await app[LOGS].get("/logs", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    lines = data["items"]
    skip = 0
    while skip < min(seen, len(lines)) and _moment(lines[skip]["timestamp"]) == at:
        skip += 1
    lines = lines[skip:]
    page, more = lines[:query.limit], len(lines) > query.limit
    next_cursor = None
    if more and page:
        last = _moment(page[-1]["timestamp"])
        same = sum(1 for line in page if _moment(line["timestamp"]) == last) + (seen if last == at else 0)
        next_cursor = encode_cursor([last.isoformat(), same]) if same < LOG_SKIP_MAX else None
    items = [redact_log_line(line) for line in page] if redact else page
    return page_answer(request, items, next_cursor)


async def logs(request: web.Request) -> web.Response:
    """``GET /logs``: every service's log lines, filtered (operators; redacted, whoever's job they tell of)."""
    Caller.of(request).require(Role.OPERATOR)
    return await query_logs(request, read_query(request, LogQuery), redact=True)


async def list_dead(request: web.Request) -> web.Response:
    """Dead letters, oldest death first (ties by job id): which job, whose, which attempt, what error
    (redacted, unless the operator owns the job). The scheduler pages them by keyset; its cursor is
    handed on as is."""
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    query = read_query(request, DeadQuery)
    data = await _dead_page(request.app, query.queue, query.limit, query.cursor)
    items = [{"job_id": item["job"]["id"], "queue": item["queue"], "kind": item["job"]["kind"],
              "owner": item["job"]["owner"], "attempt": item["attempt"],
              "error": item["error"] if caller.owns(item["job"]) else redact_error(item["error"]),
              "died_at": item["died_at"]} for item in data["items"]]
    return page_answer(request, items, data["next_cursor"])


async def _dead_page(app: web.Application, queue: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of the scheduler's ``GET /dead``: ``{items, next_cursor}``."""
    params: dict[str, Any] = {"limit": limit, **({"queue": queue} if queue else {}),
                              **({"cursor": cursor} if cursor else {})}
    try:
        _, data = await app[SCHEDULER].get("/dead", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return dict(data)


def _selection(body: _Selection) -> _Selection:
    """A dead letter selection: the named ``job_ids``, or ``all`` (of ``queue``); never both nor neither."""
    if (body.job_ids is None) == (not body.all):
        raise ValidationFailed("invalid request", [{"field": "job_ids", "message": "give job_ids, or all: true"}])
    if body.queue is not None and not body.all:
        raise ValidationFailed("invalid request", [{"field": "queue", "message": 'goes with "all": true'}])
    return body


async def requeue_dead(request: web.Request) -> web.Response:
    """Redrive dead letters: the registry gives each failed job its kind's attempts again (its history
    kept), then the job is queued again. One by one (``job_ids``) or every one (``all``, of ``queue``)."""
    Caller.of(request).require(Role.OPERATOR)
    read_query(request, PublicQuery)
    body = _selection(await read_model(request, RequeueRequest))
    if body.all and body.queue is not None:
        await _require_queue(request.app, body.queue, "queue")
    app = request.app
    requeued: list[str] = []
    skipped: list[dict[str, str]] = []
    if not body.all:
        await _redrive(app, [str(i) for i in body.job_ids or []], requeued, skipped)
        return json_response({"requeued": requeued, "skipped": skipped})
    # Every dead letter (of the queue), a page at a time to the last: those redriven leave the list, and
    # the keyset goes on after the rest. A job that died again meanwhile comes later in the list: it is
    # redriven once per request, not again.
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = await _dead_page(app, body.queue, REDRIVE_BATCH, cursor)
        ids = [item["job"]["id"] for item in page["items"] if item["job"]["id"] not in seen]
        seen.update(ids)
        await _redrive(app, ids, requeued, skipped)
        cursor = page["next_cursor"]
        if not cursor:
            return json_response({"requeued": requeued, "skipped": skipped})


async def _redrive(app: web.Application, ids: list[str], requeued: list[str], skipped: list[dict[str, str]]) -> None:
    """Redrive each job of ``ids``: its id goes to ``requeued``, or to ``skipped`` with the reason."""
    for job_id in ids:
        try:
            _, job = await app[REGISTRY].call("GET", f"/jobs/{job_id}")
            extra = kind_spec(job["kind"]).retry.max_attempts
            _, job = await app[REGISTRY].post(f"/jobs/{job_id}/redrive", json={"extra_attempts": extra})
            await requeue(app[SCHEDULER], job, app[SETTINGS].time_scale, dead=True)
        except UnknownKind as exc:  # a plugin's kind that this receptionist does not load
            skipped.append({"id": job_id, "reason": str(exc)})
            continue
        except UpstreamError as exc:
            if exc.upstream_status not in (404, 409):
                raise
            skipped.append({"id": job_id, "reason": (exc.upstream_body or {}).get("error", str(exc))})
            continue
        requeued.append(job_id)
        logger.bind(job_id=job_id).info("dead letter redriven")


async def discard_dead(request: web.Request) -> web.Response:
    """``POST /dead/discard``: forget dead letters for good, by ``job_ids`` or ``all`` (of ``queue``). Each job
    stays ``failed`` in the registry, its history kept; the central log tells who discarded it (a line with
    the job's id, so it shows among the job's logs)."""
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    read_query(request, PublicQuery)
    body = _selection(await read_model(request, DiscardRequest))
    if body.all and body.queue is not None:
        await _require_queue(request.app, body.queue, "queue")
    selection: dict[str, Any] = ({"job_ids": [str(i) for i in body.job_ids]} if body.job_ids is not None
                                 else {"all": True, **({"queue": body.queue} if body.queue else {})})
    try:
        _, answer = await request.app[SCHEDULER].post("/dead/discard", json=selection)
    except UpstreamError as exc:
        raise relay(exc) from exc
    discarded: list[str] = answer["discarded"]
    for job_id in discarded:
        logger.bind(job_id=job_id, operator=caller.username).info("dead letter discarded by {}", caller.username)
    return json_response({"discarded": discarded})
