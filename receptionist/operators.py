"""Operator routes: the queues, pausing and resuming them, the logs, the dead letters, redriving and
discarding them, and the service instances. An operator sees states, not contents
(:mod:`receptionist.redaction`). Every action is logged (to the central log) with the operator's name."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from receptionist.access import Caller
from receptionist.keys import LOGS, REGISTRY, SCHEDULER, SETTINGS
from receptionist.redaction import redact_error, redact_log_line
from receptionist.relay import relay
from receptionist.sweeper import requeue
from shared.api import QUEUE_PATTERN, DiscardRequest, QueueName, RequeueRequest, Role
from shared.errors import NotFound, Unavailable, UpstreamError, ValidationFailed
from shared.instances import InstanceKind
from shared.kinds import KINDS, UnknownKind, kind_spec
from shared.web import json_response, query_model, read_model


class DeadQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queue: QueueName | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    service: str | None = Field(default=None, max_length=100)
    level: str | None = Field(default=None, max_length=20)
    min_level: str | None = Field(default=None, max_length=20)
    job_id: uuid.UUID | None = None
    request_id: str | None = Field(default=None, max_length=200)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class InstanceQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: InstanceKind | None = None
    gone: bool | None = None


async def queues(request: web.Request) -> web.Response:
    """Every queue: ready, delayed, leased, dead, totals and the age of its oldest ready job."""
    Caller.of(request).require(Role.OPERATOR)
    try:
        _, status = await request.app[SCHEDULER].get("/status")
    except UpstreamError as exc:
        raise relay(exc) from exc
    return json_response({"queues": status["queues"],
                          **({"autoscale": status["autoscale"]} if "autoscale" in status else {})})


async def pause_queue(request: web.Request) -> web.Response:
    """``POST /queues/{name}/pause``: the queue takes jobs but hands none out (leases out go on). Idempotent;
    answers the queue as ``GET /queues`` shows it."""
    return await _set_paused(request, True)


async def resume_queue(request: web.Request) -> web.Response:
    """``POST /queues/{name}/resume``: hand the queue's jobs out again. Idempotent; answers the queue."""
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    name = request.match_info["name"]
    scheduler = request.app[SCHEDULER]
    known = set(KINDS.queues())
    if re.fullmatch(QUEUE_PATTERN, name) and len(name) <= 100 and name not in known:
        try:
            _, status = await scheduler.get("/status")
        except UpstreamError as exc:
            raise relay(exc) from exc
        known |= set(status["queues"])
    if name not in known:
        raise NotFound(f"no queue {name!r}", [{"field": "name", "message": (
            "not a queue of any kind, nor one the scheduler holds jobs in")}])
    try:
        _, snapshot = await scheduler.post(f"/queues/{name}/{'pause' if paused else 'resume'}")
    except UpstreamError as exc:
        raise relay(exc) from exc
    snapshot.pop("queue", None)
    logger.bind(queue=name, operator=caller.username).info(
        "queue {} {} by {}", name, "paused" if paused else "resumed", caller.username)
    return json_response(snapshot)


async def instances(request: web.Request) -> web.Response:
    """``GET /instances``: every service instance the registry knows (:mod:`shared.instances`), by kind
    and name, with its last status snapshot and whether it is gone."""
    Caller.of(request).require(Role.OPERATOR)
    query = query_model(request, InstanceQuery)
    params = {key: str(value).lower() if isinstance(value, bool) else str(value)
              for key, value in query.model_dump(exclude_none=True).items()}
    try:
        _, answer = await request.app[REGISTRY].get("/instances", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return json_response(answer)


async def query_logs(app: web.Application, query: LogQuery, *, redact: bool) -> dict[str, Any]:
    """Log lines from the logging service, newest first; as an operator sees them with ``redact``."""
    if app[LOGS] is None:
        raise Unavailable("no logging service is configured (RECEPTIONIST_LOGGING_URL)")
    params = {k: (v.isoformat() if isinstance(v, datetime) else str(v))
              for k, v in query.model_dump(exclude_none=True).items()}
    try:
        _, data = await app[LOGS].get("/logs", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    return {"items": [redact_log_line(line) for line in data["items"]] if redact else data["items"]}


async def logs(request: web.Request) -> web.Response:
    """``GET /logs``: every service's log lines, filtered (operators; redacted, whoever's job they tell of)."""
    Caller.of(request).require(Role.OPERATOR)
    return json_response(await query_logs(request.app, query_model(request, LogQuery), redact=True))


async def list_dead(request: web.Request) -> web.Response:
    """Dead letters, oldest death first: which job, whose, which attempt, what error (redacted, unless the
    operator owns the job)."""
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    query = query_model(request, DeadQuery)
    params: dict[str, Any] = {"limit": query.limit, **({"queue": query.queue} if query.queue else {})}
    try:
        _, data = await request.app[SCHEDULER].get("/dead", params=params)
    except UpstreamError as exc:
        raise relay(exc) from exc
    items = [{"job_id": item["job"]["id"], "queue": item["queue"], "kind": item["job"]["kind"],
              "owner": item["job"]["owner"], "attempt": item["attempt"],
              "error": item["error"] if caller.owns(item["job"]) else redact_error(item["error"]),
              "died_at": item["died_at"]} for item in data["items"]]
    return json_response({"items": items})


async def requeue_dead(request: web.Request) -> web.Response:
    """Redrive dead letters: the registry gives each failed job its kind's attempts again (its history
    kept), then the job is queued again. One by one (``job_ids``) or every one (``all``, of ``queue``)."""
    Caller.of(request).require(Role.OPERATOR)
    body = await read_model(request, RequeueRequest)
    if (body.job_ids is None) == (not body.all):
        raise ValidationFailed("invalid request", [{"field": "job_ids", "message": "give job_ids, or all: true"}])
    app = request.app
    ids = [str(i) for i in body.job_ids or []]
    if body.all:
        params: dict[str, Any] = {"limit": 1000, **({"queue": body.queue} if body.queue else {})}
        try:
            _, dead = await app[SCHEDULER].get("/dead", params=params)
        except UpstreamError as exc:
            raise relay(exc) from exc
        ids = [item["job"]["id"] for item in dead["items"]]
    requeued, skipped = [], []
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
    return json_response({"requeued": requeued, "skipped": skipped})


async def discard_dead(request: web.Request) -> web.Response:
    """``POST /dead/discard``: forget dead letters for good, by ``job_ids`` or ``all`` (of ``queue``). Each job
    stays ``failed`` in the registry, its history kept; the central log tells who discarded it (a line with
    the job's id, so it shows among the job's logs)."""
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    body = await read_model(request, DiscardRequest)
    if (body.job_ids is None) == (not body.all):
        raise ValidationFailed("invalid request", [{"field": "job_ids", "message": "give job_ids, or all: true"}])
    if body.queue is not None and not body.all:
        raise ValidationFailed("invalid request", [{"field": "queue", "message": 'goes with "all": true'}])
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
