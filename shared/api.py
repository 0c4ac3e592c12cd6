"""The public API's own models: what clients send and get at the gateway, beyond the kinds' payloads.

The receptionist and the gateway validate with them and render with them; the OpenAPI document is
generated from them (:mod:`gateway.openapi`), so the spec and the code cannot drift apart.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from shared.contract import STRICT, AttemptError, FromText, JobState, KindName, LogRecord
from shared.instances import InstanceView
from shared.scheduling import Scheduling

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: The scheduler's queue names: they appear in its URLs and in Redis keys, so they stay plain.
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: The gateway gives a submission without an ``Idempotency-Key`` a key of its own, starting with this (so a
#: replay after a broken connection registers one job); a client's key may not start with it, and job views
#: show such a key as ``null``, the client having given none.
GATEWAY_KEY_PREFIX = "gateway:"
QueueName = Annotated[str, Field(min_length=1, max_length=100, pattern=QUEUE_PATTERN)]


class Role(StrEnum):
    USER = "user"  # submits jobs; reads and cancels their own
    OPERATOR = "operator"  # sees every job's state, the queues, dead letters and logs; may redrive
    ADMIN = "admin"  # manages users only


class _In(BaseModel):
    # Strict types (see shared.contract.STRICT). No whitespace stripping: a password is exactly what was typed.
    model_config = STRICT


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Names the system uses for itself, never registered (compared without case): ``anonymous`` is the
#: identity of a caller without a token when auth is optional; the others name the stack's own parts.
RESERVED_USERNAMES = frozenset({"anonymous", "system", "conveyor", "service"})


def _username(value: str) -> str:
    if not USERNAME.fullmatch(value):
        raise ValueError("1 to 64 letters, digits or . _ @ -, starting with a letter or digit")
    if value.lower() in RESERVED_USERNAMES:
        raise ValueError(f"{value!r} is reserved for the system: choose another name")
    return value


class TokenRequest(_In):
    """``POST /auth/token``"""

    username: StrictStr = Field(min_length=1, max_length=64)
    password: StrictStr = Field(min_length=1, max_length=200)


class TokenAnswer(_Out):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the token is valid for")


class UserCreate(_In):
    """``POST /users`` (admins)"""

    username: StrictStr = Field(min_length=1, max_length=64)
    password: StrictStr = Field(min_length=8, max_length=200)
    roles: list[Annotated[Role, FromText]] = Field(default_factory=lambda: [Role.USER], min_length=1, max_length=3)
    permissions: list[StrictStr] = Field(default_factory=list, max_length=20)

    _check_username = field_validator("username")(_username)

    @field_validator("permissions")
    @classmethod
    def _permission_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", value):
                raise ValueError("a permission is 1 to 40 lower-case letters, digits, _ or -")
        return sorted(set(values))


class PasswordChange(_In):
    """``PUT /users/{username}/password`` (admins)"""

    password: StrictStr = Field(min_length=8, max_length=200)


class RolesChange(_In):
    """``PUT /users/{username}/roles`` (admins): the user's roles from now on; their older tokens stop
    working."""

    roles: list[Annotated[Role, FromText]] = Field(min_length=1, max_length=3)


class User(_Out):
    """A user as everyone but the registry sees them: never the password or its hash. ``id`` is made at
    creation and never changes: jobs belong to it, so a new user of a removed user's name owns nothing
    of theirs."""

    id: uuid.UUID
    username: str
    roles: list[Role]
    permissions: list[str] = Field(default_factory=list)
    created_at: datetime


class VerifiedUser(User):
    """The registry's answer to a good password (``POST /users/verify``, for the gateway only): the user
    and their token ``epoch``, which grows whenever their password or roles change."""

    epoch: int


class UserEpoch(_Out):
    """``GET /user-epochs/{id}`` (registry, for the gateway): a user's current token epoch. A token made at
    an older epoch is revoked."""

    id: uuid.UUID
    epoch: int


class UserList(_Out):
    """The registry's ``GET /users``: every user, by username."""

    items: list[User]


# How every public list ends: the cursor of its next page (null on the last), also in its ``Link`` header.
def _next_cursor() -> Any:
    return Field(description="Pass it as `cursor` for the next page (the `Link` header names that URL); "
                             "null on the last page")


class InstancePage(_Out):
    """``GET /instances`` (operators): by kind, then name."""

    items: list[InstanceView]
    next_cursor: str | None = _next_cursor()


class UserPage(_Out):
    """``GET /users`` (admins): users by username."""

    items: list[User]
    next_cursor: str | None = _next_cursor()


class BookJob(_Out):
    """A book export or import, in the seed system's words."""

    id: uuid.UUID
    bookId: str | None
    type: str
    url: str | None = None
    state: JobState
    progress: float
    created_at: datetime
    updated_at: datetime
    resultUrl: str | None
    error: str | None
    cancel_requested: bool | None = None


class BookJobsByState(_Out):
    """``GET /exports`` and ``GET /imports``: a page of the caller's jobs (newest first), grouped by state."""

    pending: list[BookJob]
    processing: list[BookJob]
    finished: list[BookJob]
    failed: list[BookJob]
    cancelled: list[BookJob]
    next_cursor: str | None = _next_cursor()


class JobOut(_Out):
    """Any job, as its owner sees it (``GET /jobs/{id}``). Operators see other users' jobs without
    ``payload``, ``result`` and ``result_url`` (those are null for them)."""

    id: uuid.UUID
    kind: KindName
    type: str
    payload: dict[str, Any] | None
    owner: str
    state: JobState
    attempt: int
    max_attempts: int
    progress: float
    result: dict[str, Any] | None
    result_url: str | None
    error: str | None
    errors: list[AttemptError]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request_id: str | None
    idempotency_key: str | None
    priority: int = Field(description="Higher runs first among the jobs ready to run (-100 to 100)")
    run_at: datetime | None = Field(description="Not run before this time (UTC); null: as soon as possible")
    schedule_id: uuid.UUID | None = Field(default=None, description=(
        "The periodic schedule that fired it (`GET /schedules/{id}`); null for a job submitted directly"))


class JobSubmission(Scheduling):
    """``POST /jobs``: a job of a registered kind; ``payload`` is validated with that kind's own model
    (the OpenAPI document has one schema per kind). The scheduling fields sit beside them."""

    kind: KindName = Field(description="A registered kind's name")
    payload: dict[str, Any] = Field(description="What the kind's payload model takes")


class JobList(_Out):
    """``GET /jobs``: the caller's jobs (every job, for operators), newest first."""

    items: list[JobOut]
    next_cursor: str | None = _next_cursor()


class DeadLetter(_Out):
    job_id: uuid.UUID
    queue: str
    kind: KindName
    owner: str
    attempt: int
    error: str | None
    died_at: datetime


class DeadLetterList(_Out):
    """``GET /dead`` (operators): dead letters, oldest death first (ties by job id)."""

    items: list[DeadLetter]
    next_cursor: str | None = _next_cursor()


class RequeueRequest(_In):
    """``POST /dead/requeue`` (operators): name the jobs, or ``all`` (of ``queue``)."""

    job_ids: list[Annotated[uuid.UUID, FromText]] | None = Field(default=None, min_length=1, max_length=1000)
    all: bool = False
    queue: QueueName | None = None

    @field_validator("job_ids")
    @classmethod
    def _each_once(cls, job_ids: list[uuid.UUID] | None) -> list[uuid.UUID] | None:
        # A job named twice was answered and logged twice as redriven, though it was redriven once.
        if job_ids is not None and len(set(job_ids)) != len(job_ids):
            twice = next(job_id for i, job_id in enumerate(job_ids) if job_id in job_ids[:i])
            raise ValueError(f"job {twice} is named twice")
        return job_ids


class RequeueSkip(_Out):
    id: str
    reason: str


class RequeueAnswer(_Out):
    requeued: list[str]
    skipped: list[RequeueSkip]


class DiscardRequest(RequeueRequest):
    """``POST /dead/discard`` (operators): name the jobs, or ``all`` (of ``queue``)."""


class DiscardAnswer(_Out):
    #: The dead letters forgotten (named ids that were not dead letters are left out).
    discarded: list[str]


class QueueStats(_Out):
    """One queue, as the scheduler counts it (totals since its store was created), and whether it is
    ``paused`` (it takes jobs but hands none out)."""

    model_config = ConfigDict(extra="allow")

    queue: str = Field(description="The queue's name (a kind's queue is named after it: `export`, `task`...)")
    ready: int
    delayed: int
    leased: int
    dead: int
    enqueued: int
    dequeued: int
    acked: int
    nacked: int
    oldest_ready_age_s: float | None
    paused: bool = False


class QueueList(_Out):
    """``GET /queues`` (operators): the queues, by name, and what autoscaling launchers last reported
    (``autoscale``, by launcher, when any reports)."""

    items: list[QueueStats]
    next_cursor: str | None = _next_cursor()
    autoscale: dict[str, dict[str, Any]] | None = Field(
        default=None, description="By launcher: its bounds, handlers running, signal and recent decisions; "
                                  "left out when no launcher autoscales")


class LogList(_Out):
    """``GET /logs`` (operators) and ``GET /jobs/{id}/logs``: log lines, newest first."""

    items: list[LogRecord]
    next_cursor: str | None = _next_cursor()


class LeadCrossings(_Out):
    name: str
    zero_crossings: int = Field(description="Sign changes between consecutive non-zero samples (zeros skipped)")


class EcgResult(_Out):
    leads: list[LeadCrossings]


class EcgOut(_Out):
    """``GET /ecgs/{job_id}`` (and ``POST /ecgs``, ``GET /ecgs``): the ECG's state and, once finished, its
    zero crossings per lead. An operator who does not own it sees its state only (``label``, ``date`` and
    ``result`` null)."""

    id: uuid.UUID = Field(description="The job's id, for `GET /ecgs/{job_id}`")
    label: str | None = Field(description="The `id` the client sent, if any")
    date: datetime | None
    state: JobState
    created_at: datetime
    updated_at: datetime
    result: EcgResult | None
    error: str | None


class EcgList(_Out):
    """``GET /ecgs``: the caller's ECGs, newest first."""

    items: list[EcgOut]
    next_cursor: str | None = _next_cursor()


class TaskStatus(StrEnum):
    """A task's status in the task service's words; the job states underneath stay :class:`JobState`."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


#: Each job state as a task's status.
TASK_STATUS: dict[JobState, TaskStatus] = {
    JobState.PENDING: TaskStatus.PENDING,
    JobState.PROCESSING: TaskStatus.RUNNING,
    JobState.FINISHED: TaskStatus.SUCCESS,
    JobState.FAILED: TaskStatus.FAILED,
    JobState.CANCELLED: TaskStatus.CANCELLED,
}


class TaskView(_Out):
    """``GET /tasks/{task_id}`` (and ``POST /tasks``, ``GET /tasks``): a task, as the task service showed it."""

    id: uuid.UUID
    description: str
    status: TaskStatus
    attempt: int = Field(description="Attempts started so far (0 while it waits for its first)")
    created_at: datetime
    updated_at: datetime
    error: str | None


class TaskList(_Out):
    """``GET /tasks``: the caller's tasks, newest first."""

    items: list[TaskView]
    next_cursor: str | None = _next_cursor()


class EventTopic(StrEnum):
    """The topics of the event streams (``GET /events?topic=``)."""

    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    JOB_UPDATED = "job.updated"


class DataImportError(_Out):
    line: int = Field(description="The line of the file the record starts on (a CSV's header is line 1)")
    reason: str


class DataImportCounters(_Out):
    read: int = Field(description="Records read (blank lines are none)")
    imported: int = Field(description="Records upserted")
    rejected: int = Field(description="Records refused, each in the error report")


class DataImportOut(_Out):
    """``GET /v1/imports/{job_id}`` (and ``POST /v1/imports``, ``GET /v1/imports``): an import's state and,
    once finished, what it did. Counters are zero until it finishes."""

    id: uuid.UUID = Field(description="The job's id, for `GET /v1/imports/{job_id}`")
    resource: str = Field(description="users, articles or comments")
    state: JobState
    progress: float
    counters: DataImportCounters
    first_errors: list[DataImportError] = Field(description="The first ten rejections")
    error_report_url: str | None = Field(description="The full error report (NDJSON `{line, reason}`), once finished")
    error: str | None
    created_at: datetime
    updated_at: datetime


class DataExportOut(_Out):
    """``GET /v1/exports/{job_id}`` (and ``POST /v1/exports``, ``GET /v1/exports/jobs``): an export's state
    and, once finished, where to download its file."""

    id: uuid.UUID
    resource: str = Field(description="users, articles or comments")
    format: str = Field(description="ndjson, csv or json")
    state: JobState
    progress: float = Field(description="Rows written over rows matching, 0..1")
    rows: int | None = Field(description="Rows written, once finished")
    download_url: str | None = Field(description="`/jobs/{id}/result`, once finished")
    error: str | None
    created_at: datetime
    updated_at: datetime


class DataImportList(_Out):
    """``GET /v1/imports``: the caller's imports, newest first."""

    items: list[DataImportOut]
    next_cursor: str | None = _next_cursor()


class DataExportList(_Out):
    """``GET /v1/exports/jobs``: the caller's export jobs, newest first."""

    items: list[DataExportOut]
    next_cursor: str | None = _next_cursor()
