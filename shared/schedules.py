"""Periodic schedules: what a client asks for (``POST /schedules``), what the registry keeps, and when a
schedule is due. The receptionist validates a schedule and fires it; the registry keeps it and answers
which are due (with its own clock, one clock for every firer).

A schedule is due at the times of its ``cron`` expression (five fields, or ``@hourly`` and the like, read
in its IANA ``timezone``, so ``0 9 * * *`` is 9 o'clock there, summer or winter), or every ``every_s``
seconds counted from its creation. Times are wall-clock: the stack's time scale,
which shortens simulated work, never touches them.

**Missed firings** (nothing fired the schedule for a while: every receptionist was down, or the registry
was): the schedule fires once, for the most recent due time, and the earlier ones are skipped and counted
(:func:`firing`); the receptionist that fires it logs how many. A paused schedule misses nothing: resuming
it starts afresh from the moment it is resumed.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from shared.api import Role
from shared.contract import STRICT, FromText, KindName, Priority, Timestamp
from shared.errors import ValidationFailed
from shared.ids import uuid7

#: The longest ``every_s``: a year (of 365 days); the shortest: a second.
MIN_EVERY_S, MAX_EVERY_S = 1.0, 365 * 24 * 3600.0
#: Skipped due times are counted up to this many; beyond, the count says "at least".
MAX_COUNTED = 100_000
ONE_OF_MESSAGE = "give cron or every_s, exactly one of them"
_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def check_cron(expression: str) -> str:
    """``expression`` when it is a cron expression we run: five fields (minute hour day month weekday), or
    one of ``@yearly``, ``@monthly``, ``@weekly``, ``@daily``, ``@hourly``; a :class:`ValueError` otherwise."""
    text = expression.strip()
    if text.lower() in _ALIASES:
        return text.lower()
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ValueError("must be a cron expression of five fields (minute hour day-of-month month day-of-week), "
                         "like */5 * * * *, or @hourly, @daily, @weekly, @monthly, @yearly")
    try:  # a day no month has (the 31st of February) is well formed, and never comes
        croniter(text, datetime.now(timezone.utc)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError("never comes: no date matches it (like the 30th of February)") from None
    return " ".join(text.split())


#: Names the zone directory of a host may hold that are not zones of the tz database but that host's own:
#: ``localtime`` (a link to ``/etc/localtime``, each host's setting), ``posixrules`` (the host's default
#: rules), and the ``posix/`` and ``right/`` copies (``right/`` counts leap seconds: its clock is 27 s off).
#: Receptionists on several hosts fire one schedule, each working its next due time out in its zone, so
#: a zone must mean the same everywhere.
HOST_ZONES = re.compile(r"(localtime|posixrules|(posix|right)/.*)", re.IGNORECASE)


def check_timezone(name: str, *, new: bool = True) -> str:
    """``name`` when it is an IANA time zone this machine knows (``Europe/Paris``, ``UTC``), and, for a
    ``new`` schedule, not one of a host's own (:data:`HOST_ZONES`): a schedule kept from before that rule
    still reads."""
    if new and HOST_ZONES.fullmatch(name):
        raise ValueError(f"must be an IANA time zone name, like UTC or Europe/Paris; {name} is each host's own")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError("must be an IANA time zone name, like UTC or Europe/Paris") from exc
    return name


class ScheduleTiming(BaseModel):
    """When a schedule is due: ``cron`` (in ``timezone``) or ``every_s``, exactly one."""

    model_config = STRICT

    cron: StrictStr | None = Field(default=None, min_length=1, max_length=200, description=(
        "A cron expression of five fields (minute hour day-of-month month day-of-week), like `*/5 * * * *`, "
        "or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`; read in `timezone`. Not with `every_s`"))
    every_s: float | None = Field(default=None, ge=MIN_EVERY_S, le=MAX_EVERY_S, description=(
        "Due every this many seconds (wall clock), counted from the schedule's creation. Not with `cron`"))
    timezone: StrictStr = Field(default="UTC", min_length=1, max_length=64, description=(
        "The IANA time zone the cron expression is read in (`Europe/Paris`); default UTC. Not `localtime`, "
        "`posixrules`, `posix/…` or `right/…`: those are each host's own"))

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleTiming:
        # Raised as it is through pydantic, so that the 400 names both fields.
        if (self.cron is None) == (self.every_s is None):
            raise ValidationFailed("invalid request", [{"field": "cron", "message": ONE_OF_MESSAGE},
                                                       {"field": "every_s", "message": ONE_OF_MESSAGE}])
        return self


class ScheduleRequest(ScheduleTiming):
    """``POST /schedules``: a job of ``kind`` with ``payload`` (validated like a ``POST /jobs`` of that kind),
    fired at every due time."""

    kind: KindName = Field(description="A registered kind's name, one that `POST /jobs` takes")
    payload: dict[str, Any] = Field(description="What the kind's payload model takes")
    priority: Priority = Field(default=0, description="The priority of every job it fires")


class ScheduleCreate(ScheduleRequest):
    """What a receptionist asks the registry to keep: a validated request, its owner, and its job's
    ``type`` and ``max_attempts`` (the kind's), so that firing it needs nothing but the record."""

    model_config = ConfigDict(extra="forbid", strict=False)

    id: Annotated[uuid.UUID, FromText] = Field(default_factory=uuid7)
    owner: str = Field(min_length=1, max_length=200)
    job_type: str = Field(min_length=1, max_length=64)
    max_attempts: int = Field(default=1, ge=1, le=100)


class Schedule(ScheduleCreate):
    """A schedule as the registry keeps it and ``GET /schedules/{id}`` shows it (to an operator who does not
    own it, without its payload)."""

    paused: bool = False
    #: The next due time (UTC); firing it moves it on.
    next_run_at: Timestamp
    #: The due time of the last firing, None before the first.
    last_fired_at: Timestamp | None = None
    created_at: Timestamp
    updated_at: Timestamp

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value, new=False)

    def timing(self) -> ScheduleTiming:
        return ScheduleTiming.model_construct(cron=self.cron, every_s=self.every_s, timezone=self.timezone)


class ScheduleList(BaseModel):
    """A page of schedules, newest first; ``next_cursor`` continues it."""

    items: list[Schedule]
    next_cursor: str | None = None


class ScheduleView(Schedule):
    """A schedule as the public API shows it: to an operator who does not own it, without its payload."""

    payload: dict[str, Any] | None = Field(description="What its jobs get; null for an operator who does not own it")


class ScheduleViewList(BaseModel):
    """``GET /schedules``: the caller's schedules (every one, for operators), newest first."""

    items: list[ScheduleView]
    next_cursor: str | None


class FiringOwner(BaseModel):
    """A due schedule's owner as the registry knows them at the due time: the firer fires only for an owner
    who could submit the job now (:meth:`may_submit`). ``exists`` is False for a user removed since."""

    exists: bool
    roles: list[str] = Field(default_factory=list)
    permissions: list[str] = Field(default_factory=list)

    def may_submit(self, permission: str | None) -> bool:
        """Whether this owner could submit a job of a kind that needs ``permission`` (None: only the user
        role), as a submission of theirs is checked (:func:`receptionist.jobs.check_submitter`)."""
        return self.exists and Role.USER in self.roles and (permission is None or permission in self.permissions)


class Firing(BaseModel):
    """A due schedule, as the registry hands it to a firer: fire ``due_at`` (``skipped`` earlier due times
    are let go), then move the schedule from ``schedule.next_run_at`` to ``next_run_at``. ``owner`` is None
    for an owner who is no registered user (the anonymous caller of a gateway without required sign-in)."""

    schedule: Schedule
    due_at: Timestamp
    skipped: int = 0
    next_run_at: Timestamp
    owner: FiringOwner | None = None


class FiringList(BaseModel):
    items: list[Firing]


class Fired(BaseModel):
    """``POST /schedules/{id}/fired`` (internal): the compare-and-set that moves a schedule on. It holds only
    when the schedule still has ``expected`` as its ``next_run_at`` and is not paused."""

    model_config = ConfigDict(extra="forbid")

    expected: datetime
    due_at: datetime
    next_run_at: datetime


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def next_due(timing: ScheduleTiming, anchor: datetime, after: datetime) -> datetime:
    """The first due time strictly after ``after``: of the cron expression in the schedule's time zone, or
    ``anchor`` plus a whole number of ``every_s``."""
    if timing.every_s is not None:
        step = timedelta(seconds=timing.every_s)
        periods = max(0, math.floor((after - anchor) / step) + 1)
        return _utc(anchor + periods * step)
    assert timing.cron is not None
    local = after.astimezone(ZoneInfo(timing.timezone))
    return _utc(croniter(timing.cron, local).get_next(datetime))


def firing(schedule: Schedule, now: datetime) -> Firing | None:
    """What to fire of ``schedule`` at ``now``: None when it is paused or not due; else its most recent due
    time at or before ``now``, how many due times before that one were missed, and its next due time."""
    if schedule.paused or schedule.next_run_at > now:
        return None
    timing = schedule.timing()
    due, skipped = schedule.next_run_at, 0
    if timing.every_s is not None:
        step = timedelta(seconds=timing.every_s)
        skipped = math.floor((now - due) / step)
        due = _utc(due + skipped * step)
    else:
        while skipped < MAX_COUNTED:
            later = next_due(timing, schedule.created_at, due)
            if later > now:
                break
            due, skipped = later, skipped + 1
        else:  # a very long downtime: jump to the last due time without counting further
            local = now.astimezone(ZoneInfo(timing.timezone)) + timedelta(microseconds=1)
            due = _utc(croniter(timing.cron, local).get_prev(datetime))
    return Firing(schedule=schedule, due_at=due, skipped=skipped,
                  next_run_at=next_due(timing, schedule.created_at, due))


#: The start of the keys schedules fire their jobs under: no client's key may start so (a 400), or a client
#: could take a due time's key and keep that due time from firing.
SCHEDULE_KEY_PREFIX = "schedule:"


def idempotency_key(schedule_id: uuid.UUID | str, due_at: datetime) -> str:
    """The key of the job a schedule fires for one due time: one job per (schedule, due time), however many
    firers register it."""
    return f"{SCHEDULE_KEY_PREFIX}{schedule_id}:{_utc(due_at).isoformat(timespec='microseconds')}"
