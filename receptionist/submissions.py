"""``POST /jobs {kind, payload}``: a job of any registered kind that has no submission route of its own (a
plugin's kinds, book exports and imports), its payload validated with the kind's own model. A bad payload
is a 400 naming the field under ``payload`` (``payload.width``); a kind this receptionist does not have is
a 400 naming it; a kind with a route of its own (``task``: ``POST /tasks``) is a 400 naming that route.
The answer is the job as ``GET /jobs/{id}`` shows it; ``Idempotency-Key`` works as on every submission, and
so do ``priority``, ``run_at`` and ``delay_s``, beside ``kind`` and ``payload``."""

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
    """The kind ``name`` as ``POST /jobs`` and ``POST /schedules`` take it: registered here, without a route
    of its own (else a 400 naming ``kind``, ``elsewhere`` saying where it may not go), and one the caller may
    submit."""
    if name not in KINDS:
        raise unknown_kind(name)
    spec = KINDS[name]
    if spec.own_route:
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
    submission = parse_model(submission_model(spec), body)
    status, job = await accept(request, spec, submission.payload, caller,  # type: ignore[attr-defined]
                               field_prefix="payload.", scheduling=scheduling_of(submission))
    return json_response(job_view(job), status=status)
