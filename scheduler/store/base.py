"""The scheduler's queue store interface. One module a backend (``memory``, ``sqlite``, ``redis``),
chosen by URL in :func:`scheduler.store.store_from_url`; every backend passes
``tests/scheduler/test_queue_store_contract.py``.

An entry is one job in one named queue, in one of these states::

    ready ──dequeue──▶ leased ──ack──▶ (gone; counted as acked)
      ▲                  │ nack with attempts left, or lease expired with attempts left: ready again
      │                  │     (after the backoff delay; ``ready_at`` in the future means "delayed")
      └──────────────────┤ nack or expiry on the last attempt, or a nack without retry: dead (the
                         │     dead-letter queue)
                         └ release (graceful stop): ready at once, the attempt not counted

Pause (:meth:`QueueStore.set_paused`): a paused queue takes enqueues as ever but hands nothing out (its
delayed entries fall due and wait, ready); leases already out go on as ever (ack, nack, extend, expiry; a
retried or expired entry waits, ready, in the paused queue). The pause is the store's, so it outlives a
scheduler and every scheduler of a shared store sees it. :meth:`QueueStore.next_ready_at` leaves paused
queues out, so that a long poll sleeps instead of looking again and again.

Discard (:meth:`QueueStore.discard`): dead entries are forgotten for good (an operator gave up on them).

Cancel (:meth:`QueueStore.cancel`): a ready, delayed or dead entry is forgotten at once; a leased one gets a
cancel flag and stays leased, so that its handler, told by :meth:`QueueStore.extend`, can stop and report.
A flagged entry is forgotten when its lease expires or it is nacked (its job was cancelled: nobody should run
it again); ack forgets it as ever, and release hands it back with the flag kept, so whoever takes it next
is told at the first extend.

Length: a queue's entries that are not dead (ready, delayed and leased). With ``max_length`` an enqueue
that would take a queue past it is refused whole (:class:`QueueFull`); ids the store already holds are not
new and do not count.

Order: an entry is enqueued with ``ready_at = max(now, job.run_at)`` and is not handed out before it
(until then it is "delayed"). Among the entries of the asked queues whose ``ready_at <= now``, the one with
the highest ``job.priority`` goes first, and within one priority the smallest ``(ready_at, seq)``, where
``seq`` grows with each enqueue (and redrive): FIFO within a priority, by the time an entry became ready.
So a delayed job (its ``run_at``, or a retry's backoff) joins its priority when it falls due, and a
high-priority job due later does not jump ahead before it is due; an expired lease is ready again at its
expiry, a released entry at its old ``ready_at``; the priority stays the job's through all of them. With
one priority this is the order the stores had before priorities (entries stored then have priority 0).
``attempt`` counts deliveries: the first dequeue hands out attempt 1. A lease is identified by a fresh
``lease_id`` on each delivery; ack, nack, extend and release name it, and an old lease_id is refused
(:class:`LeaseLost`) once the entry was handed out again or is gone.
"""

from __future__ import annotations

import random
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.contract import Delivery, QueuedJob, RetryPolicy


class LeaseLost(Exception):
    """The lease named is not the entry's current one (it expired and was handed out again, or the entry
    was acked, removed or dead-lettered)."""


class QueueFull(Exception):
    """An enqueue would take ``queue`` past ``max_length`` entries that are not dead; nothing was enqueued."""

    def __init__(self, queue: str, length: int, max_length: int) -> None:
        super().__init__(f"queue {queue!r} holds {length} jobs; at most {max_length} are allowed")
        self.queue = queue
        self.length = length
        self.max_length = max_length


class StoreUnavailable(Exception):
    """The backend cannot be reached or used right now (connection lost, database locked); the app
    answers 503 so that callers back off and retry."""


#: What :meth:`QueueStore.cancel` did: forgot the entry, flagged its lease, or found nothing.
CancelOutcome = Literal["removed", "flagged", "absent"]
#: An entry's state as :meth:`QueueStore.states` names it.
EntryState = Literal["ready", "delayed", "leased", "dead"]


@dataclass(frozen=True)
class NackOutcome:
    dead: bool  # True: moved to the dead-letter queue; False: ready again at ``ready_at``, or forgotten
    attempt: int
    ready_at: datetime | None = None
    cancelled: bool = False  # True: the entry was flagged for cancel, so it was forgotten, not retried


@dataclass(frozen=True)
class ExtendResult:
    lease_expires_at: datetime
    cancel_requested: bool  # the job was cancelled while leased: its handler should stop and report it


@dataclass(frozen=True)
class ExpiredLease:
    job_id: uuid.UUID
    queue: str
    attempt: int
    dead: bool
    cancelled: bool = False  # the entry was flagged for cancel, so it was forgotten, not made ready


@dataclass
class QueueStats:
    ready: int = 0  # ready now
    delayed: int = 0  # ready later (retry backoff, or a job's run_at)
    leased: int = 0
    dead: int = 0
    enqueued: int = 0  # totals since the store was created
    dequeued: int = 0
    acked: int = 0
    nacked: int = 0
    oldest_ready_age_s: float | None = None
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    job: QueuedJob
    queue: str
    attempt: int
    error: str | None
    died_at: datetime


#: Where a dead letter sorts: its time of death, then its job id as text.
DeadKey = tuple[datetime, uuid.UUID]


def dead_key(letter: DeadLetter) -> tuple[datetime, str]:
    """The order dead letters are listed in, on every store: time of death, then job id as text (so that
    deaths at the same instant, a sweep's expired leases, keep one order)."""
    return letter.died_at, str(letter.job.id)


def ready_at_of(job: QueuedJob, now: datetime) -> datetime:
    """When an enqueued job becomes ready: its ``run_at``, or ``now`` when it has none or it is past."""
    return job.run_at if job.run_at is not None and job.run_at > now else now


def is_last_attempt(job: QueuedJob | dict[str, Any], attempt: int) -> bool:
    """Whether ``attempt`` used up the job's budget: ``retry.max_attempts`` attempts counted from the
    floor ``attempts_made`` (the attempts made before it was queued, or redriven, the last time). Attempt
    numbers only grow, so the registry's fencing never refuses a later delivery."""
    if isinstance(job, dict):
        return attempt >= job.get("attempts_made", 0) + job["retry"]["max_attempts"]
    return attempt >= job.attempts_made + job.retry.max_attempts


def backoff_delay_s(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before retrying after ``attempt`` failed: full jitter over ``base * 2**(attempt-1)``, capped.

    Full jitter (a uniform draw in ``[0, ceiling]``) spreads retries of jobs that failed together.
    """
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, ceiling)


class QueueStore(ABC):
    """Named FIFO queues with leases. Datetimes are timezone-aware UTC; ``now`` is always passed in."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing. Called once before any other method."""

    @abstractmethod
    async def close(self) -> None:
        """Release what :meth:`open` acquired. Safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """A real round trip to the backend; raises if it is not usable."""

    @abstractmethod
    async def enqueue(self, queue: str, jobs: list[QueuedJob], now: datetime, max_length: int = 0) -> list[bool]:
        """Add jobs at the tail of ``queue``, ready at ``max(now, job.run_at)`` with the job's priority
        (see the module docstring for the order); one bool per job, False when the store already held
        that job id (in any queue and state: ready, delayed, leased or dead), which changes nothing.

        With ``max_length`` > 0, raises :class:`QueueFull` and enqueues nothing when the queue's length
        plus the new ids would pass it."""

    @abstractmethod
    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        """Lease up to ``max_jobs`` ready entries of ``queues`` (see the module docstring for the order),
        without waiting: an empty list when none is ready. Paused queues are passed over. Each delivery
        raises the entry's attempt."""

    @abstractmethod
    async def ack(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        """The job is done: forget the entry. Raises :class:`LeaseLost`."""

    async def ack_many(self, leases: list[tuple[uuid.UUID, str]], now: datetime) -> list[bool]:
        """Ack several leases, each on its own: one bool per lease, False where it was lost. SQLite does it
        in one commit and Redis in one script (one round trip); this default, the memory store's, acks them
        one by one."""
        acked = []
        for job_id, lease_id in leases:
            try:
                await self.ack(job_id, lease_id, now)
            except LeaseLost:
                acked.append(False)
            else:
                acked.append(True)
        return acked

    @abstractmethod
    async def nack(self, job_id: uuid.UUID, lease_id: str, now: datetime, error: str | None,
                   delay_s: float | None = None, retry: bool = True) -> NackOutcome:
        """The attempt failed. With attempts left (``attempt < job.retry.max_attempts``) the entry is ready
        again after ``delay_s`` (default :func:`backoff_delay_s`); otherwise, or at once when ``retry`` is
        False (a failure no retry can mend), it goes to the dead-letter queue with ``error``. An entry
        flagged for cancel is forgotten instead (``cancelled``, not dead, no ``ready_at``), ``retry`` or
        not. Raises :class:`LeaseLost`."""

    @abstractmethod
    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        """Hand the job back untouched (a handler stopping): ready at once, at the head of its priority by
        its original ``ready_at``, and this delivery's attempt not counted. Raises :class:`LeaseLost`."""

    @abstractmethod
    async def extend(self, job_id: uuid.UUID, lease_id: str, lease_s: float, now: datetime) -> ExtendResult:
        """Push the lease's expiry to ``now + lease_s``; returns it, and whether the entry is flagged for
        cancel (the lease is extended either way, so the handler has time to stop and report). Raises
        :class:`LeaseLost`."""

    @abstractmethod
    async def expire_leases(self, now: datetime) -> list[ExpiredLease]:
        """Every leased entry whose lease expired becomes ready again at once, or dead when that was
        its last attempt (error "lease expired"), or is forgotten when it was flagged for cancel
        (``cancelled``); returns what moved."""

    @abstractmethod
    async def remove(self, job_id: uuid.UUID) -> bool:
        """Forget a ready, delayed or dead entry (a cancelled job); False when absent or leased."""

    @abstractmethod
    async def cancel(self, job_id: uuid.UUID) -> CancelOutcome:
        """Cancel a job: a ready, delayed or dead entry is forgotten, as :meth:`remove` does ("removed");
        a leased one is flagged for cancel and stays leased ("flagged", again when asked twice);
        "absent" when the store does not hold it."""

    @abstractmethod
    async def contains(self, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``job_ids`` the store holds, in any state."""

    @abstractmethod
    async def states(self, job_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, EntryState]:
        """The state of each of ``job_ids`` the store holds (ids it does not hold are left out): "leased",
        "dead", "delayed" (ready later than ``now``) or "ready"."""

    @abstractmethod
    async def lengths(self) -> dict[str, int]:
        """Per queue, every queue that ever held an entry: how many of its entries are not dead. Cheap
        (a counter or an indexed count): receptionists ask it to refuse work before a queue is full."""

    @abstractmethod
    async def next_ready_at(self, queues: list[str]) -> datetime | None:
        """When the earliest ready or delayed entry of ``queues`` is due (possibly in the past); None if
        there is none. Paused queues are left out. Long polls use it to sleep no longer than needed."""

    @abstractmethod
    async def stats(self, now: datetime) -> dict[str, QueueStats]:
        """Per queue name, every queue that ever held an entry."""

    @abstractmethod
    async def dead_letters(self, queue: str | None, limit: int = 100,
                           after: DeadKey | None = None) -> list[DeadLetter]:
        """Dead entries of one queue or all, in :func:`dead_key` order (oldest death first, ties by job id),
        ``limit`` at most, from just after ``after`` (a keyset: entries redriven or discarded between two
        pages leave neither repeats nor gaps among the rest)."""

    @abstractmethod
    async def discard(self, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[uuid.UUID]:
        """Forget dead entries: the named ids (ids that are not dead are left alone), or every dead entry
        (of ``queue`` when given) when ``job_ids`` is None. Returns the ids forgotten, oldest death first."""

    @abstractmethod
    async def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause or resume ``queue`` (any name, whether or not it held an entry yet); True when that changed
        it, False when it was so already."""

    @abstractmethod
    async def paused_queues(self) -> set[str]:
        """The queues paused now."""

    @abstractmethod
    async def redrive(self, job_ids: list[uuid.UUID] | None, queue: str | None, now: datetime) -> int:
        """Move dead entries back to ready (attempt reset to 0) at the tail of their queue: the named
        ids, or every dead entry (of ``queue`` when given) when ``job_ids`` is None. Returns how many."""

    # -- locks: one holder at a time, for upkeep that several processes run ---------------------------------

    async def acquire_lock(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take the lock ``name`` for ``holder`` until ``ttl_s`` from now, or extend it when ``holder`` has
        it already; False when another holder has it and its time has not run out. A holder that died
        loses the lock when its time runs out.

        This default keeps the locks in the process, which is right for the stores one scheduler process
        owns (memory, SQLite: several schedulers are refused on them); a store that several schedulers
        share (Redis) keeps them in the store."""
        locks: dict[str, tuple[str, datetime]] = self.__dict__.setdefault("_upkeep_locks", {})
        current = locks.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        locks[name] = (holder, now + timedelta(seconds=ttl_s))
        return True

    async def release_lock(self, name: str, holder: str) -> bool:
        """Give the lock up, if ``holder`` has it (False otherwise: it ran out, and is another's or no one's)."""
        locks: dict[str, tuple[str, datetime]] = self.__dict__.setdefault("_upkeep_locks", {})
        current = locks.get(name)
        if current is None or current[0] != holder:
            return False
        del locks[name]
        return True
