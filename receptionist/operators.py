"""Operator routes: the queues, the logs, the dead letters, redriving them, and the service instances. An
operator sees states, not contents (:mod:`receptionist.redaction`)."""

from __future__ import annotations

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
from shared.api import QueueName, RequeueRequest, Role
from shared.errors import Unavailable, UpstreamError, ValidationFailed
from shared.instances import InstanceKind
from shared.kinds import UnknownKind, kind_spec
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
