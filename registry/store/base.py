"""The registry's store interface. One module a backend (``memory``, ``sqlite``, ``postgres``), chosen by
URL in :func:`registry.store.store_from_url`; every backend passes ``tests/registry/test_store_contract.py``
and ``tests/registry/test_user_store_contract.py``.

A store keeps jobs and, for every change it applies, one :class:`JobEvent` (the job's history: what the
event stream and the "finished exactly once" checks read). The state machine itself lives in
:func:`shared.contract.apply_update`; a store applies it inside its own transaction (read, apply, write,
append the event) so that two concurrent updates of one job cannot both pass against the same old state.

A store also keeps the users (:class:`StoredUser`, by username, and by their stable ``id``): the gateway
checks logins against them, and their ``epoch`` tells it which tokens still count. And it keeps the
service instances (:class:`registry.store.instances.InstanceStore`), and the periodic schedules
(:class:`registry.store.schedules.ScheduleStore`).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.store.instances import InstanceStore
from registry.store.schedules import ScheduleStore
from shared.api import Role, User
from shared.contract import Job, JobCreate, JobPage, JobState, JobUpdate, TransitionRefused


class JobEvent(BaseModel):
    """One applied change: ``seq`` grows across the whole store (not per job), so it can resume a stream."""

    seq: int
    job_id: uuid.UUID
    owner: str
    kind: str
    type: str = "created"  # "created" or "updated"
    state: JobState
    previous_state: JobState | None = None
    attempt: int
    at: datetime
    job: dict[str, Any]  # the job as it was right after this change (JSON mode)


class StoredUser(BaseModel):
    """A user as the registry keeps them. ``password_hash`` (made by :mod:`registry.passwords`) never leaves
    the registry: answers carry :meth:`public`, and the hash stays out of ``repr`` so a log line cannot
    show it either.

    ``id`` is made at creation and never changes (jobs belong to it, not to the name). ``epoch`` starts
    at 1 and grows by one whenever the password or the roles change: a token names the epoch it was
    issued at, and one issued at an older epoch (or for an id that is gone) no longer counts."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    username: str
    password_hash: str = Field(repr=False)
    roles: list[Role]
    permissions: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    epoch: int = Field(default=1, ge=1)

    def public(self) -> User:
        """The user as everyone but the registry sees them."""
        return User(id=self.id, username=self.username, roles=self.roles, permissions=self.permissions,
                    created_at=self.created_at)


class JobStore(InstanceStore, ScheduleStore, ABC):
    """Jobs by id, with their history, users by username, service instances and periodic schedules. All datetimes are
    timezone-aware UTC."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing (tables, indexes). Called once before any other method."""

    @abstractmethod
    async def close(self) -> None:
        """Release what :meth:`open` acquired. Safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """A real round trip to the backend; raises if it is not usable."""

    @abstractmethod
    async def create(self, spec: JobCreate, now: datetime) -> tuple[Job, bool]:
        """Register a job in state ``pending``; returns ``(job, created)``.

        Idempotent: when a job with ``spec.id`` exists, or ``spec.idempotency_key`` is set and a job of the
        same owner has that key, that job is returned with ``created=False`` and nothing is written.
        (Comparing the payloads is the caller's business.) A creation appends a ``created`` event.
        """

    @abstractmethod
    async def get(self, job_id: uuid.UUID) -> Job | None:
        """The job, or None when unknown."""

    @abstractmethod
    async def update(self, job_id: uuid.UUID, update: JobUpdate, now: datetime) -> tuple[Job, bool]:
        """Apply ``update`` with :func:`shared.contract.apply_update` atomically; returns ``(job, changed)``.

        Raises :class:`KeyError` for an unknown id and lets :class:`shared.contract.TransitionRefused`
        through. A change (``changed`` True) appends an ``updated`` event in the same transaction.
        """

    async def create_many(self, specs: list[JobCreate], now: datetime) -> list[tuple[Job, bool]]:
        """Register several jobs, each as :meth:`create` would (idempotent each on its own, a job of the same
        batch counting as one registered before it), in order. SQLite and PostgreSQL do it in one
        transaction (PostgreSQL with multi-row statements); this default creates them one by one."""
        return [await self.create(spec, now) for spec in specs]

    async def update_many(self, updates: list[tuple[uuid.UUID, JobUpdate]], now: datetime
                          ) -> list[tuple[Job, bool] | KeyError | TransitionRefused]:
        """Apply several updates, each judged on its own: one outcome per update, in order, either
        ``(job, changed)`` or the :class:`KeyError` / :class:`TransitionRefused` it met; updates of one job
        apply in their order, each to what the previous left. SQLite and PostgreSQL apply them in one
        transaction (one commit for the batch); this default applies them one by one."""
        outcomes: list[tuple[Job, bool] | KeyError | TransitionRefused] = []
        for job_id, update in updates:
            try:
                outcomes.append(await self.update(job_id, update, now))
            except (KeyError, TransitionRefused) as exc:
                outcomes.append(exc)
        return outcomes

    @abstractmethod
    async def request_cancel(self, job_id: uuid.UUID, now: datetime) -> tuple[Job, bool]:
        """Cancel a job: a ``pending`` one becomes ``cancelled`` (with an event); a ``processing`` one gets
        ``cancel_requested=True`` (its handler finishes the move). Returns ``(job, changed)``; repeating it
        changes nothing. Raises :class:`KeyError` for an unknown id and
        :class:`shared.contract.TransitionRefused` for a job already finished or failed.
        """

    @abstractmethod
    async def redrive(self, job_id: uuid.UUID, extra_attempts: int, now: datetime) -> tuple[Job, bool]:
        """Give a ``failed`` job another chance with :func:`registry.store.rules.apply_redrive`, atomically:
        back to ``pending`` with ``max_attempts`` raised by ``extra_attempts`` (at least 1), ``error`` and
        ``finished_at`` cleared, ``attempt`` and ``errors`` kept; one ``updated`` event. A ``pending`` job
        is returned unchanged (``changed`` False). Raises :class:`KeyError` for an unknown id,
        :class:`shared.contract.TransitionRefused` for a job in any other state.
        """

    @abstractmethod
    async def list(self, *, kind: str | None = None, state: JobState | None = None, owner: str | None = None,
                   updated_before: datetime | None = None, cancel_requested: bool | None = None,
                   limit: int = 100, cursor: str | None = None, created_after: datetime | None = None) -> JobPage:
        """Jobs matching every given filter, newest first (``created_at`` then ``id`` descending), at most
        ``limit``; ``next_cursor`` (opaque) continues after the last item, None when there is no more.

        ``updated_before`` keeps the jobs whose ``updated_at`` is strictly earlier (a sweeper looks for
        jobs pending for a while); ``cancel_requested`` keeps the jobs whose flag has that value;
        ``created_after`` keeps the jobs created at that moment or later (where a newest-first walk
        stops: a range of the same indexes). A cursor continues the listing it came from: pass it with
        the same filters."""

    @abstractmethod
    async def count_by_state(self, *, kind: str | None = None) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""

    @abstractmethod
    async def events(self, *, job_id: uuid.UUID | None = None, after_seq: int = 0, limit: int = 1000,
                     owner: str | None = None, kind: str | None = None) -> list[JobEvent]:
        """Events with ``seq > after_seq`` in ``seq`` order, at most ``limit``: of one job or of all, and of
        the jobs of one ``owner`` or ``kind`` when given (an event stream shows a user their own jobs).

        No gaps: once an event can be read, so can every event of a lower ``seq`` (a store never commits a
        seq after a higher one), so a reader that resumes after the last seq it saw misses nothing."""

    @abstractmethod
    async def last_seq(self) -> int:
        """The highest ``seq`` of any event (0 when there is none): where a stream that starts now begins;
        every lower seq is already readable."""

    @abstractmethod
    async def create_user(self, user: StoredUser) -> bool:
        """Add a user; False (and nothing written) when the username (or the id) is taken. Usernames are
        case-sensitive: ``alice`` and ``Alice`` are two users."""

    @abstractmethod
    async def get_user(self, username: str) -> StoredUser | None:
        """The user, or None when unknown."""

    @abstractmethod
    async def get_user_by_id(self, user_id: uuid.UUID) -> StoredUser | None:
        """The user with this stable id, or None when unknown (never made, or removed)."""

    @abstractmethod
    async def list_users(self) -> list[StoredUser]:
        """Every user, by username in code point order (``B`` before ``a``), whatever the backend's
        collation."""

    @abstractmethod
    async def count_users(self) -> int:
        """How many users there are."""

    @abstractmethod
    async def delete_user(self, username: str) -> bool:
        """Remove a user; False when unknown."""

    @abstractmethod
    async def set_password(self, username: str, password_hash: str, now: datetime) -> bool:
        """Replace a user's password hash, add one to their ``epoch`` and set ``updated_at`` to ``now``, in
        one write; False when unknown."""

    @abstractmethod
    async def set_roles(self, username: str, roles: list[Role], now: datetime) -> StoredUser | None:
        """Replace a user's roles (in the order given), add one to their ``epoch`` and set ``updated_at``
        to ``now``, in one write; the user as changed, None when unknown."""
