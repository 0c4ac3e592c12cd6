"""Request and answer bodies of the scheduler's HTTP API (jobs and deliveries are
:class:`shared.contract.QueuedJob` and :class:`shared.contract.Delivery`)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from scheduler.store import CancelOutcome, DeadKey, EntryState
from shared.contract import MAX_ERROR_CHARS, Delivery, QueuedJob

#: A queue's name: it appears in URLs and in Redis keys, so it stays plain.
QueueName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueuePath(_Body):
    queue: QueueName


class JobPath(_Body):
    job_id: uuid.UUID


class EnqueueBody(_Body):
    jobs: list[QueuedJob] = Field(min_length=1, max_length=1000)


class EnqueueBatchBody(_Body):
    """Jobs for several queues in one request (``POST /queues/batch``): each queue's as its own enqueue."""

    queues: dict[QueueName, list[QueuedJob]] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _some_jobs(self) -> EnqueueBatchBody:
        sizes = [len(jobs) for jobs in self.queues.values()]
        if min(sizes) < 1 or sum(sizes) > 1000:
            raise ValueError("each queue names 1 job or more, 1,000 in all at most")
        return self


class QueueDequeueBody(_Body):
    """A dequeue from one queue (the queue is in the path); every field may be left out."""

    max: int = Field(default=1, ge=1, le=100)
    wait_s: float = Field(default=0.0, ge=0.0, le=30.0)
    #: The lease of each delivery; the scheduler's ``lease_s`` setting when left out.
    lease_s: float | None = Field(default=None, ge=1.0, le=3600.0)


class DequeueBody(QueueDequeueBody):
    queues: list[QueueName] = Field(min_length=1, max_length=50)


class DequeueAnswer(_Body):
    deliveries: list[Delivery]


class LeaseRef(_Body):
    job_id: uuid.UUID
    lease_id: str = Field(min_length=1, max_length=100)


class AckBatch(_Body):
    items: list[LeaseRef] = Field(min_length=1, max_length=1000)


class AckBatchAnswer(_Body):
    acked: list[uuid.UUID]
    lost: list[uuid.UUID]


class NackBody(LeaseRef):
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)
    #: Retry after this long instead of the job's backoff policy.
    delay_s: float | None = Field(default=None, ge=0.0, le=86_400.0)
    #: False: the failure is permanent (no retry can mend it): dead-letter the job now, whatever attempts
    #: remain. A job cancelled meanwhile is still forgotten.
    retry: StrictBool = True


class NackAnswer(_Body):
    dead: bool
    attempt: int
    ready_at: datetime | None
    #: The job was cancelled while leased: its entry is forgotten, not retried.
    cancelled: bool = False


class ExtendBody(LeaseRef):
    lease_s: float | None = Field(default=None, ge=1.0, le=3600.0)


class ExtendAnswer(_Body):
    lease_expires_at: datetime
    #: The job was cancelled: its handler should stop the work and report it cancelled.
    cancelled: bool


class JobIdsBody(_Body):
    job_ids: list[uuid.UUID] = Field(max_length=10_000)


class StatesBody(_Body):
    job_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class StatesAnswer(_Body):
    """The state of each asked job the scheduler holds: ``ready``, ``delayed``, ``leased`` or ``dead``;
    jobs no queue holds are left out."""

    states: dict[uuid.UUID, EntryState]


class CancelAnswer(_Body):
    """``removed``: the job was waiting (or dead) and is gone; ``flagged``: it is leased, and its handler
    learns of the cancel at its next extend; ``absent``: no queue holds it."""

    outcome: CancelOutcome


class LengthsAnswer(_Body):
    """Entries not dead per queue, and the most a queue may hold (0: no limit)."""

    lengths: dict[str, int]
    max_queue_length: int


def dead_cursor(key: DeadKey) -> str:
    """The opaque cursor of ``GET /dead`` that names a dead letter's place: its time of death and job id."""
    return base64.urlsafe_b64encode(orjson.dumps([key[0].isoformat(), str(key[1])])).decode().rstrip("=")


def dead_key_of(cursor: str) -> DeadKey:
    """The place a :func:`dead_cursor` names; ValueError for any other string."""
    try:
        died_at, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(died_at)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, uuid.UUID(job_id)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError("not a cursor this list handed out") from exc


class DeadQuery(_Body):
    """``GET /dead``: a keyset page of dead letters (oldest death first, ties by job id)."""

    queue: QueueName | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    #: The ``next_cursor`` of the page before.
    cursor: str | None = Field(default=None, max_length=500)

    @field_validator("queue", "cursor", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("cursor")
    @classmethod
    def _a_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            dead_key_of(value)
        return value

    def after(self) -> DeadKey | None:
        return None if self.cursor is None else dead_key_of(self.cursor)


class DeadLetterItem(_Body):
    job: QueuedJob
    queue: str
    attempt: int
    error: str | None
    died_at: datetime


class DeadLetters(_Body):
    items: list[DeadLetterItem]
    #: The cursor of the next page; None on the last.
    next_cursor: str | None = None


class RequeueBody(_Body):
    """Redrive (``/dead/requeue``) or discard (``/dead/discard``) dead jobs: the named ``job_ids``, or ``all``
    of them (of ``queue`` when given)."""

    job_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=10_000)
    all: bool = False
    queue: QueueName | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> RequeueBody:
        if (self.job_ids is None) == (not self.all):
            raise ValueError('give either "job_ids" or "all": true')
        if self.queue is not None and not self.all:
            raise ValueError('"queue" goes with "all": true')
        return self
