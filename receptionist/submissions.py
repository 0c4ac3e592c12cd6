"""``POST /jobs {kind, payload}``: a job of any registered kind, a plugin's or a built-in one (``task``,
``export``, ``data_export`` ...), its payload validated with the kind's own model and registered as the
kind's own route would register it (a task gets the receptionist's default duration). A bad payload is a
400 naming the field under ``payload`` (``payload.width``); a kind this receptionist does not have is a 400
naming it. Only a kind whose submission carries more than a JSON payload (``ecg``: its signals are streamed
to the artifact store; ``data_import``: a file, and the resource in the query) is a 400 naming the route it
comes by. The answer is the job as ``GET /jobs/{id}`` shows it, whatever the kind; ``Idempotency-Key`` works
as on every submission, and so do ``priority``, ``run_at`` and ``delay_s``, beside ``kind`` and ``payload``."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, create_model

from receptionist.access import Caller
from receptionist.jobs import accept, check_submitter, unknown_kind
from receptionist.queries import PublicQuery, read_query
from receptionist.views import job_view
from shared.api import JobSubmission, Role
from shared.errors import ValidationFailed
from shared.kinds import KINDS, KindSpec
from shared.scheduling import Scheduling, scheduling_of
from shared.web import json_response, parse_model, read_json

_MODELS: dict[tuple[str, type[BaseModel]], type[BaseModel]] = {}


def submission_model(spec: KindSpec) -> type[BaseModel]:
    """The body of a submission of ``spec``'s kind: ``{"kind": <its name>, "payload": <its model>}``, and
    the scheduling fields (:mod:`shared.scheduling`)."""
    key = (spec.kind, spec.payload)
    if key not in _MODELS:
        _MODELS[key] = create_model(
            "KindSubmission", __base__=Scheduling,
            kind=(Literal[spec.kind], ...), payload=(spec.payload, ...))  # type: ignore[call-overload]
    return _MODELS[key]


def generic_kind(request: web.Request, name: str, elsewhere: str) -> KindSpec:
    """The kind ``name`` as ``POST /jobs`` and ``POST /schedules`` take it: registered here, not submitted
    only by a route of its own (else a 400 naming ``kind``, ``elsewhere`` saying where it may not go), and
    one the caller may submit."""
    if name not in KINDS:
        raise unknown_kind(name)
    spec = KINDS[name]
    if spec.own_route_only:
        raise ValidationFailed("invalid request", [{"field": "kind", "message": (
            f"{spec.kind} jobs are submitted with POST {spec.own_route}, {elsewhere}")}])
    check_submitter(request, spec.kind)
    return spec


async def post_job(request: web.Request) -> web.Response:
    """Validate, register, enqueue: 201 with the job (200 with the first one for a repeated key)."""
    caller = Caller.of(request)
    caller.require(Role.USER)
    read_query(request, PublicQuery)
    body: Any = await read_json(request)
    spec = generic_kind(request, parse_model(JobSubmission, body).kind, "not POST /jobs")
    submission = parse_model(submission_model(spec), body, foreign="payload")
    status, job = await accept(request, spec, submission.payload, caller,  # type: ignore[attr-defined]
                               field_prefix="payload.", scheduling=scheduling_of(submission))
    return json_response(job_view(job), status=status)
