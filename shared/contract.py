"""The wire contract: every model that crosses a service boundary, and the job state machine.

Services validate at their HTTP boundary with these models and pass them around inside. Field names on
the wire are snake_case; the receptionist's public book routes render their own camelCase views.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from shared.ids import uuid7

#: The config of every model that is read from JSON: unknown fields refused, and strict types, so a value
#: of the wrong JSON type is an error rather than converted (``true`` is not 1.0, ``5`` is not ``"5"``,
#: ``"5"`` is not 5, ``2.0`` is not 2). An int is still a float. The types JSON has no literal for are
#: read from their text: annotate them :data:`FromText` (enums, UUIDs) or :data:`Timestamp` (times).
STRICT = ConfigDict(extra="forbid", strict=True)
#: On a field of a :data:`STRICT` model: an enum or a UUID taken from its string (or, in code, itself).
FromText = Strict(False)


#: Some character that is not white space, as the OpenAPI document says it too: Unicode's White_Space,
#: spelled out because ``\\s`` means a little more or less than that in each regex dialect.
NOT_BLANK_PATTERN = "[^\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


def _not_blank(value: str) -> str:
    if not _NOT_BLANK.search(value):
        raise ValueError("must not be blank")
    return value


#: On a string field: it must hold something besides white space. The value is kept as sent, never
#: stripped: a client's input is refused or taken, not changed.
NotBlank = AfterValidator(_not_blank)
#: No NUL character (U+0000), as the OpenAPI document says it: PostgreSQL's text and jsonb cannot hold one
#: (not even escaped, ``\\u0000``), so text that a PostgreSQL store keeps or looks up refuses it, on every
#: backend alike.
NO_NUL_PATTERN = "^[^\\x00]*$"
#: :data:`NOT_BLANK_PATTERN` and :data:`NO_NUL_PATTERN` at once, as one pattern of the whole text.
TEXT_PATTERN = "^[^\\x00]*" + NOT_BLANK_PATTERN.replace("[^", "[^\\x00", 1) + "[^\\x00]*$"
NUL_MESSAGE = "must not contain a NUL character (U+0000)"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


#: On a string field: no NUL character (:data:`NO_NUL_PATTERN`).
NoNul = AfterValidator(_no_nul)
#: An RFC 3339 date-time as text, or a date alone (midnight); the offset may be left out, which means UTC
#: where it matters. To the microsecond at most, as Python keeps a time: pydantic would cut a finer fraction
#: without a word.
DATE_TIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                            r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?)?")
DATE_TIME_MESSAGE = "must be an RFC 3339 date-time string, like 2030-01-01T12:00:00Z, to the microsecond at most"


def _date_time_text(value: Any) -> Any:
    # pydantic would also take a number (seconds since 1970) or its text: neither is a time on this wire.
    if isinstance(value, datetime) or (isinstance(value, str) and DATE_TIME_TEXT.fullmatch(value.strip())):
        return value
    raise PydanticCustomError("datetime_type", DATE_TIME_MESSAGE)


#: A date-time field of a :data:`STRICT` model: an RFC 3339 string (or, in code, a datetime).
Timestamp = Annotated[datetime, FromText, BeforeValidator(_date_time_text)]


OUT_OF_RANGE_MESSAGE = "out of the calendar's range once in UTC"


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC (one without an offset is taken as UTC): a :class:`ValueError` when that falls outside
    the calendar, as the first hours of year 1 at a positive offset do (Python raises ``OverflowError``)."""
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(OUT_OF_RANGE_MESSAGE) from None


#: A :data:`Timestamp` kept in UTC (one without an offset is taken as UTC), so it compares with ``utcnow()``.
UtcTimestamp = Annotated[Timestamp, AfterValidator(as_utc)]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


#: The range of a job's ``priority``: higher runs first; jobs of one priority run in the order queued.
MIN_PRIORITY, MAX_PRIORITY = -100, 100
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]


class JobState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES: frozenset[JobState] = frozenset(JobState) - TERMINAL_STATES

#: Allowed moves of the state machine. ``processing -> processing`` is a progress report of the same
#: attempt or a newer attempt taking over after a lease expired; ``processing -> pending`` is a retry.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.CANCELLED, JobState.FAILED}),
    JobState.PROCESSING: frozenset(
        {JobState.PROCESSING, JobState.PENDING, JobState.FINISHED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class JobKind(StrEnum):
    """The names of the built-in kinds. Kinds are no closed set: a job's ``kind`` is any :data:`KindName`,
    and which kinds a process runs is :mod:`shared.kinds`' registry (built-ins, ``CONVEYOR_KINDS``, the
    ``conveyor.kinds`` entry points). These names are reserved for the kinds Conveyor ships."""

    EXPORT = "export"
    IMPORT = "import"
    DATA_IMPORT = "data_import"
    DATA_EXPORT = "data_export"
    ECG = "ecg"
    TASK = "task"


#: A kind's name: lower-case letters, digits, ``_``, ``-`` and ``.``, starting with a letter (``acme.resize``).
#: It names the kind's queue by default too, so it stays within what queue names allow.
KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
#: A job's kind on the wire: any well-formed name. The registry and the scheduler take any; receptionists
#: and handlers check that it is a kind they have (:func:`shared.kinds.kind_spec`).
KindName = Annotated[str, Field(min_length=1, max_length=64, pattern=KIND_PATTERN)]


class _Model(BaseModel):
    model_config = STRICT


class AttemptError(_Model):
    """The error one attempt ended with, kept in the job's history."""

    attempt: int
    error: str
    at: Timestamp


class Job(_Model):
    """The system of record's view of one job (owned by the registry)."""

    id: Annotated[uuid.UUID, FromText]
    kind: KindName
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    owner: str
    state: Annotated[JobState, FromText] = JobState.PENDING
    attempt: int = 0
    max_attempts: int = 1
    progress: float = 0.0
    result: dict[str, Any] | None = None
    result_url: str | None = None
    error: str | None = None
    errors: list[AttemptError] = Field(default_factory=list)
    cancel_requested: bool = False
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    request_id: str | None = None
    idempotency_key: str | None = None
    #: Higher first among the jobs ready to run; a record made before priorities has 0.
    priority: Priority = 0
    #: Not run before this time (wall clock, UTC); None: as soon as possible.
    run_at: UtcTimestamp | None = None
    #: The periodic schedule that fired it (:mod:`shared.schedules`); None for a job submitted directly.
    schedule_id: Annotated[uuid.UUID, FromText] | None = None


class JobCreate(_Model):
    """What a receptionist asks the registry to register."""

    #: Time-ordered (:func:`shared.ids.uuid7`): new jobs land together in the registry's indexes.
    id: Annotated[uuid.UUID, FromText] = Field(default_factory=uuid7)
    kind: KindName
    type: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    owner: str = Field(min_length=1, max_length=200)
    max_attempts: int = Field(default=1, ge=1, le=100)
    request_id: str | None = Field(default=None, max_length=200)
    idempotency_key: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    run_at: UtcTimestamp | None = None
    schedule_id: Annotated[uuid.UUID, FromText] | None = None

    def to_job(self, now: datetime) -> Job:
        return Job(
            id=self.id,
            kind=self.kind,
            type=self.type,
            payload=self.payload,
            owner=self.owner,
            max_attempts=self.max_attempts,
            created_at=now,
            updated_at=now,
            request_id=self.request_id,
            idempotency_key=self.idempotency_key,
            priority=self.priority,
            run_at=self.run_at,
            schedule_id=self.schedule_id,
        )


#: An attempt's error as a report and a nack carry it, at most; a handler cuts a longer one (a kind's
#: exception may say anything) so that the report is taken.
MAX_ERROR_CHARS = 10_000


class JobUpdate(_Model):
    """A state report for one job. ``attempt`` fences it: the registry refuses an older attempt."""

    attempt: int = Field(ge=0)
    state: Annotated[JobState, FromText] | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    result: dict[str, Any] | None = None
    result_url: str | None = None
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)


class JobUpdateItem(JobUpdate):
    """One update of a batch (``POST /jobs/updates``): the job it is for, and the update."""

    id: Annotated[uuid.UUID, FromText]


class JobCreateBatch(_Model):
    """Several registrations in one request (``POST /jobs/batch``)."""

    jobs: list[JobCreate] = Field(min_length=1, max_length=1000)


class JobUpdateBatch(_Model):
    updates: list[JobUpdateItem] = Field(min_length=1, max_length=1000)
    #: What an accepted update's result holds: the whole ``job`` (as its single ``PATCH`` answers), or
    #: ``brief``, its ``state`` and ``attempt`` only, for a caller that needs no more (a handler: encoding
    #: every job back was a tenth of the registry's work under load).
    answer: Literal["job", "brief"] = "job"


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class TransitionRefused(Exception):
    """Raised by :func:`apply_update` when an update may not be applied; the registry answers 409."""

    def __init__(self, message: str, *, current: Job) -> None:
        super().__init__(message)
        self.current = current


def apply_update(job: Job, update: JobUpdate, now: datetime) -> tuple[Job, bool]:
    """Apply ``update`` to ``job`` under the state machine; returns the new job and whether it changed.

    Every store calls this inside its own transaction so the rules live in one place:

    - an update naming an attempt older than the job's is refused (fencing);
    - repeating the report that put the job where it is (same state, same attempt, nothing new) is a
      replay: accepted, nothing changes. A reporter may retry a request whose answer it lost, and a
      job is still finished once;
    - any other move that :data:`TRANSITIONS` does not allow is refused.
    """
    if update.attempt < job.attempt:
        raise TransitionRefused(
            f"stale attempt {update.attempt}: job is on attempt {job.attempt}", current=job
        )
    target = update.state or job.state
    same_report = update.state == job.state and update.attempt == job.attempt
    if same_report and (job.state in TERMINAL_STATES or (update.progress is None and update.error is None)):
        return job, False
    if target not in TRANSITIONS[job.state]:
        raise TransitionRefused(f"cannot move a {job.state} job to {target}", current=job)
    changes: dict[str, Any] = {"state": target, "attempt": update.attempt, "updated_at": now}
    if target == JobState.PROCESSING and (job.state != JobState.PROCESSING or update.attempt > job.attempt):
        changes["started_at"] = now
        changes["progress"] = 0.0
    if update.progress is not None:
        changes["progress"] = update.progress
    if update.result is not None:
        changes["result"] = update.result
    if update.result_url is not None:
        changes["result_url"] = update.result_url
    if update.error is not None:
        changes["error"] = update.error
        changes["errors"] = [*job.errors, AttemptError(attempt=update.attempt, error=update.error, at=now)]
    if target in TERMINAL_STATES:
        changes["finished_at"] = now
        if target == JobState.FINISHED:
            changes["progress"] = 1.0
    return job.model_copy(update=changes), True


class RetryPolicy(_Model):
    """How the scheduler retries a nacked job: exponential backoff with full jitter, capped."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base_s: float = Field(default=1.0, ge=0.0)
    backoff_cap_s: float = Field(default=60.0, ge=0.0)


class QueuedJob(_Model):
    """What the scheduler holds for a job: enough for a handler to run it without asking the registry."""

    id: Annotated[uuid.UUID, FromText]
    kind: KindName
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    owner: str
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float | None = Field(default=None, gt=0)
    request_id: str | None = None
    #: Attempts already made (a job queued again after some): deliveries go on from here, so their
    #: attempt numbers stay above the registry's and are not fenced off.
    attempts_made: int = Field(default=0, ge=0)
    #: Among the entries ready to run, higher first (FIFO within one priority); its retries keep it.
    priority: Priority = 0
    #: The entry is not handed out before this wall-clock time (never scaled); None or past: at once.
    run_at: UtcTimestamp | None = None


class Delivery(_Model):
    """One job handed to a handler under a lease. ``attempt`` counts deliveries, starting at 1."""

    job: QueuedJob
    queue: str
    attempt: int
    lease_id: str
    lease_expires_at: Timestamp


class LogRecord(_Model):
    """One structured log line as shipped to the logging service."""

    model_config = ConfigDict(extra="ignore")

    timestamp: Timestamp
    service: str = Field(min_length=1, max_length=100)
    level: str = Field(min_length=1, max_length=20)
    message: str = Field(max_length=100_000)
    meta: dict[str, Any] = Field(default_factory=dict)


class ErrorDetail(_Model):
    field: str
    message: str


class ErrorBody(_Model):
    """Every error answer of every service: ``{"error": ..., "details": [{"field", "message"}]}``."""

    error: str
    details: list[ErrorDetail] = Field(default_factory=list)
