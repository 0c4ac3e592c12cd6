"""The in-process registry store (``memory://``): dicts of jobs and users, for tests and throwaway runs.

Every method runs without awaiting in between its reads and writes, so on one event loop each one is
atomic without a lock.
"""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from registry.store.base import JobEvent, JobStore, StoredUser
from registry.store.memory_schedules import MemorySchedules
from registry.store.paging import decode_cursor, encode_cursor
from registry.store.rules import apply_cancel, apply_redrive
from shared.api import Role
from shared.contract import Job, JobCreate, JobPage, JobState, JobUpdate, apply_update
from shared.instances import Instance, InstanceKind
from shared.schedules import Schedule


@dataclass(frozen=True, slots=True)
class _Change:
    # Jobs are replaced, never mutated (apply_update copies), so keeping the Job is keeping a snapshot;
    # it is dumped to JSON only when someone reads the event.
    seq: int
    type: Literal["created", "updated"]
    previous_state: JobState | None
    job: Job

    def event(self) -> JobEvent:
        job = self.job
        return JobEvent(seq=self.seq, job_id=job.id, owner=job.owner, kind=job.kind, type=self.type,
                        state=job.state, previous_state=self.previous_state, attempt=job.attempt,
                        at=job.updated_at, job=job.model_dump(mode="json"))


class MemoryJobStore(MemorySchedules, JobStore):
    """Jobs, users, instances and schedules in dicts; lost when the process ends."""

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}
        self._by_key: dict[tuple[str, str], uuid.UUID] = {}
        self._changes: list[_Change] = []  # index i holds seq i + 1
        self._changes_of: dict[uuid.UUID, list[_Change]] = {}
        self._changes_by_owner: dict[str, list[_Change]] = {}
        self._counts: Counter[tuple[str, JobState]] = Counter()
        self._users: dict[str, StoredUser] = {}
        self._names: dict[uuid.UUID, str] = {}  # user id -> username
        self._instances: dict[uuid.UUID, Instance] = {}
        self._schedules: dict[uuid.UUID, Schedule] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def _record(self, type_: Literal["created", "updated"], previous: Job | None, job: Job) -> None:
        change = _Change(len(self._changes) + 1, type_, previous.state if previous else None, job)
        self._changes.append(change)
        self._changes_of.setdefault(job.id, []).append(change)
        self._changes_by_owner.setdefault(job.owner, []).append(change)
        if previous is not None:
            self._counts[(previous.kind, previous.state)] -= 1
        self._counts[(job.kind, job.state)] += 1
        self._jobs[job.id] = job

    async def create(self, spec: JobCreate, now: datetime) -> tuple[Job, bool]:
        existing = self._jobs.get(spec.id)
        if existing is None and spec.idempotency_key is not None:
            known_id = self._by_key.get((spec.owner, spec.idempotency_key))
            existing = self._jobs.get(known_id) if known_id is not None else None
        if existing is not None:
            return existing, False
        job = spec.to_job(now)
        if spec.idempotency_key is not None:
            self._by_key[(spec.owner, spec.idempotency_key)] = job.id
        self._record("created", None, job)
        return job, True

    async def get(self, job_id: uuid.UUID) -> Job | None:
        return self._jobs.get(job_id)

    async def update(self, job_id: uuid.UUID, update: JobUpdate, now: datetime) -> tuple[Job, bool]:
        job = self._jobs[job_id]
        new, changed = apply_update(job, update, now)
        if changed:
            self._record("updated", job, new)
        return new, changed

    async def request_cancel(self, job_id: uuid.UUID, now: datetime) -> tuple[Job, bool]:
        job = self._jobs[job_id]
        new, changed = apply_cancel(job, now)
        if changed:
            self._record("updated", job, new)
        return new, changed

    async def redrive(self, job_id: uuid.UUID, extra_attempts: int, now: datetime) -> tuple[Job, bool]:
        job = self._jobs[job_id]
        new, changed = apply_redrive(job, extra_attempts, now)
        if changed:
            self._record("updated", job, new)
        return new, changed

    async def list(self, *, kind: str | None = None, state: JobState | None = None, owner: str | None = None,
                   updated_before: datetime | None = None, cancel_requested: bool | None = None,
                   limit: int = 100, cursor: str | None = None, created_after: datetime | None = None) -> JobPage:
        after = decode_cursor(cursor) if cursor else None
        matching = [
            job for job in self._jobs.values()
            if (kind is None or job.kind == kind) and (state is None or job.state == state)
            and (owner is None or job.owner == owner)
            and (updated_before is None or job.updated_at < updated_before)
            and (created_after is None or job.created_at >= created_after)
            and (cancel_requested is None or job.cancel_requested == cancel_requested)
            and (after is None or (job.created_at, job.id) < after)
        ]
        matching.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        items = matching[:limit]
        more = len(matching) > limit
        return JobPage(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def count_by_state(self, *, kind: str | None = None) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for (job_kind, state), n in self._counts.items():
            if kind is None or job_kind == kind:
                counts[state] += n
        return counts

    async def events(self, *, job_id: uuid.UUID | None = None, after_seq: int = 0, limit: int = 1000,
                     owner: str | None = None, kind: str | None = None) -> list[JobEvent]:
        if job_id is not None:
            changes = self._changes_of.get(job_id, [])
        elif owner is not None:
            changes = self._changes_by_owner.get(owner, [])
        else:
            changes = self._changes
        # Every list is in seq order: start right after ``after_seq`` instead of scanning from the start.
        start = bisect.bisect_right(changes, after_seq, key=lambda change: change.seq)
        picked = (c for c in itertools.islice(changes, start, None)
                  if (owner is None or c.job.owner == owner) and (kind is None or c.job.kind == kind))
        return [change.event() for change in itertools.islice(picked, limit)]

    async def last_seq(self) -> int:
        return len(self._changes)

    async def create_user(self, user: StoredUser) -> bool:
        if user.username in self._users or user.id in self._names:
            return False
        self._users[user.username] = user.model_copy(deep=True)
        self._names[user.id] = user.username
        return True

    async def get_user(self, username: str) -> StoredUser | None:
        user = self._users.get(username)
        # A copy: a caller changing what it got must not change the store, as with the other backends.
        return user.model_copy(deep=True) if user is not None else None

    async def get_user_by_id(self, user_id: uuid.UUID) -> StoredUser | None:
        username = self._names.get(user_id)
        return await self.get_user(username) if username is not None else None

    async def list_users(self) -> list[StoredUser]:
        return [self._users[name].model_copy(deep=True) for name in sorted(self._users)]

    async def count_users(self) -> int:
        return len(self._users)

    async def delete_user(self, username: str) -> bool:
        user = self._users.pop(username, None)
        if user is None:
            return False
        del self._names[user.id]
        return True

    async def set_password(self, username: str, password_hash: str, now: datetime) -> bool:
        user = self._users.get(username)
        if user is None:
            return False
        self._users[username] = user.model_copy(update={"password_hash": password_hash, "updated_at": now,
                                                        "epoch": user.epoch + 1})
        return True

    async def set_roles(self, username: str, roles: list[Role], now: datetime) -> StoredUser | None:
        user = self._users.get(username)
        if user is None:
            return None
        self._users[username] = user.model_copy(update={"roles": list(roles), "updated_at": now,
                                                        "epoch": user.epoch + 1})
        return self._users[username].model_copy(deep=True)

    async def put_instance(self, instance: Instance) -> None:
        self._instances[instance.id] = instance.model_copy(deep=True)

    async def delete_instance(self, instance_id: uuid.UUID) -> bool:
        return self._instances.pop(instance_id, None) is not None

    async def list_instances(self, *, kind: InstanceKind | None = None) -> list[Instance]:
        picked = [i for i in self._instances.values() if kind is None or i.kind == kind]
        picked.sort(key=lambda i: (i.kind.value, i.name, str(i.id)))
        return [instance.model_copy(deep=True) for instance in picked]

    async def drop_instances(self, seen_before: datetime) -> int:
        gone = [i.id for i in self._instances.values() if i.last_seen < seen_before]
        for instance_id in gone:
            del self._instances[instance_id]
        return len(gone)
