"""When, and before which others, a submitted job runs: the ``priority``, ``run_at`` and ``delay_s`` that every
job-submitting route takes beside its payload. In a kind's own route's JSON body they sit at its top level,
next to the payload's own fields (:func:`submission_model`); in ``POST /jobs``, next to ``kind`` and
``payload``; ``POST /v1/imports``, whose options are query parameters (a file upload has no JSON to put
them in), takes them as query parameters (:class:`SchedulingQuery`).

They are not part of the payload: the registry keeps ``priority`` and ``run_at`` on the job (``delay_s``
becomes a ``run_at``, from the receptionist's clock), where every view of the job shows them, and the
scheduler orders its queue by them (:mod:`scheduler.store.base`). ``run_at`` is wall-clock time: the time
scale, which shortens simulated work and backoffs, never touches it.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from shared.contract import MAX_PRIORITY, MIN_PRIORITY, STRICT, Priority, Timestamp, as_utc, utcnow
from shared.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)

#: The furthest ahead a job may be scheduled: a year (of 365 days), as ``delay_s`` or as ``run_at``.
MAX_DELAY_S = 365 * 24 * 3600
FIELDS = frozenset({"priority", "run_at", "delay_s"})
BOTH_MESSAGE = "give run_at or delay_s, not both"


class Scheduling(BaseModel):
    """The scheduling fields of a submission; each may be left out."""

    model_config = STRICT

    priority: Priority = Field(default=0, description=(
        f"Among the jobs ready to run, higher runs first ({MIN_PRIORITY} to {MAX_PRIORITY}); jobs of one "
        "priority run in the order they became ready. Retries keep it"))
    run_at: Timestamp | None = Field(default=None, description=(
        "Not run before this time: an RFC 3339 date-time with its offset, at most a year ahead; a time past "
        "means now. Not with `delay_s`"))
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S, description=(
        "Not run before this many seconds from now (at most a year). Not with `run_at`"))

    @field_validator("run_at")
    @classmethod
    def _an_instant_within_a_year(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must carry its offset from UTC (Z or +hh:mm), like 2030-01-01T12:00:00Z")
        if value > utcnow() + timedelta(seconds=MAX_DELAY_S):
            raise ValueError(f"must be at most a year ({MAX_DELAY_S} s) ahead")
        return as_utc(value)  # year 1 at +05:00 is before the calendar's first moment in UTC: a ValueError

    @model_validator(mode="after")
    def _a_time_or_a_delay(self) -> Scheduling:
        # Raised as it is through pydantic (not a ValueError), so that the 400 names both fields.
        if self.run_at is not None and self.delay_s is not None:
            raise ValidationFailed("invalid request", [{"field": "run_at", "message": BOTH_MESSAGE},
                                                       {"field": "delay_s", "message": BOTH_MESSAGE}])
        return self

    def job_fields(self, now: datetime) -> dict[str, Any]:
        """``priority`` and ``run_at`` of the job to register (``delay_s`` from ``now``)."""
        run_at = self.run_at if self.delay_s is None else now + timedelta(seconds=self.delay_s)
        return {"priority": self.priority, "run_at": run_at}


class SchedulingQuery(Scheduling):
    """The same fields as query parameters (their text checked by :func:`shared.web.parse_query`)."""

    model_config = ConfigDict(extra="ignore", strict=False)


@functools.cache
def submission_model(payload: type[M]) -> type[M]:
    """``payload`` with the scheduling fields beside its own: the body of a kind's own route, named after
    the payload (``ExportPayload``: ``ExportSubmission``), so that the document holds both schemas.
    :func:`split` takes a validated submission apart again."""
    clash = FIELDS & set(payload.model_fields)
    if clash:
        raise ValueError(f"{payload.__name__} has fields named like the scheduling ones: {sorted(clash)}")
    name = payload.__name__.removesuffix("Payload").removesuffix("Request") + "Submission"
    model: type[M] = create_model(name, __base__=(Scheduling, payload), __module__=payload.__module__,
                                  __doc__=payload.__doc__)
    return model


def scheduling_of(submission: BaseModel) -> Scheduling:
    """The scheduling fields of a submission validated by a :func:`submission_model`."""
    return Scheduling.model_construct(**{name: getattr(submission, name) for name in FIELDS})


def split(submission: BaseModel) -> tuple[dict[str, Any], Scheduling]:
    """A submission validated by a :func:`submission_model`: its payload (JSON-ready) and its scheduling."""
    return submission.model_dump(mode="json", exclude=set(FIELDS)), scheduling_of(submission)
