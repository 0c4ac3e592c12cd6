"""The scheduler's queue store interface. One module a backend (``memory``, ``sqlite``, ``redis``),
chosen by URL in :func:`scheduler.store.store_from_url`; every backend passes
``tests/scheduler/test_queue_store_contract.py``.

An entry is one job in one named queue, in one of these states::

    ready ──dequeue──▶ leased ──ack──▶ (gone; counted as acked)
      ▲                  │ nack with attempts left, or lease expired with attempts left: ready again
      │                  │     (after the backoff delay; ``ready_at`` in the future means "delayed")
      └──────────────────┤ nack or expiry on the last attempt: dead (the dead-letter queue)
                         └ release (graceful stop): ready at once, the attempt not counted

Order: among ready entries of the asked queues whose ``ready_at <= now``, the one with the smallest
``(ready_at, seq)`` goes first, where ``seq`` grows with each enqueue; so FIFO holds within a queue.
``attempt`` counts deliveries: the first dequeue hands out attempt 1. A lease is identified by a fresh
``lease_id`` on each delivery; ack, nack, extend and release name it, and an old lease_id is refused
(:class:`LeaseLost`) once the entry was handed out again or is gone.
"""

from __future__ import annotations

import random
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime

from shared.contract import Delivery, QueuedJob, RetryPolicy


class LeaseLost(Exception):
    """The lease named is not the entry's current one (it expired and was handed out again, or the entry
    was acked, removed or dead-lettered)."""


class StoreUnavailable(Exception):
    """The backend cannot be reached or used right now (connection lost, database locked); the app
    answers 503 so that callers back off and retry."""


@dataclass(frozen=True)
class NackOutcome:
    dead: bool  # True: moved to the dead-letter queue; False: ready again at ``ready_at``
    attempt: int
    ready_at: datetime | None = None


@dataclass(frozen=True)
class ExpiredLease:
    job_id: uuid.UUID
    queue: str
    attempt: int
    dead: bool


@dataclass
class QueueStats:
    ready: int = 0  # ready now
    delayed: int = 0  # ready later (retry backoff)
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
    async def enqueue(self, queue: str, jobs: list[QueuedJob], now: datetime) -> list[bool]:
        """Add jobs at the tail of ``queue``, ready now; one bool per job, False when the store already
        held that job id (in any queue and state: ready, delayed, leased or dead), which changes nothing."""

    @abstractmethod
    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        """Lease up to ``max_jobs`` ready entries of ``queues`` (see the module docstring for the order),
        without waiting: an empty list when none is ready. Each delivery raises the entry's attempt."""

    @abstractmethod
    async def ack(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        """The job is done: forget the entry. Raises :class:`LeaseLost`."""

    async def ack_many(self, leases: list[tuple[uuid.UUID, str]], now: datetime) -> list[bool]:
        """Ack several leases, each on its own: one bool per lease, False where it was lost. A backend may
        do it in one transaction; this default acks them one by one."""
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
                   delay_s: float | None = None) -> NackOutcome:
        """The attempt failed. With attempts left (``attempt < job.retry.max_attempts``) the entry is ready
        again after ``delay_s`` (default :func:`backoff_delay_s`); otherwise it goes to the dead-letter
        queue with ``error``. Raises :class:`LeaseLost`."""

    @abstractmethod
    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        """Hand the job back untouched (a handler stopping): ready at once, at the head of its queue order
        by its original ``ready_at``, and this delivery's attempt not counted. Raises :class:`LeaseLost`."""

    @abstractmethod
    async def extend(self, job_id: uuid.UUID, lease_id: str, lease_s: float, now: datetime) -> datetime:
        """Push the lease's expiry to ``now + lease_s``; returns it. Raises :class:`LeaseLost`."""

    @abstractmethod
    async def expire_leases(self, now: datetime) -> list[ExpiredLease]:
        """Every leased entry whose lease expired becomes ready again at once, or dead when that was
        its last attempt (error "lease expired"); returns what moved."""

    @abstractmethod
    async def remove(self, job_id: uuid.UUID) -> bool:
        """Forget a ready, delayed or dead entry (a cancelled job); False when absent or leased."""

    @abstractmethod
    async def contains(self, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``job_ids`` the store holds, in any state."""

    @abstractmethod
    async def next_ready_at(self, queues: list[str]) -> datetime | None:
        """When the earliest ready or delayed entry of ``queues`` is due (possibly in the past); None if
        there is none. Long polls use it to sleep no longer than needed."""

    @abstractmethod
    async def stats(self, now: datetime) -> dict[str, QueueStats]:
        """Per queue name, every queue that ever held an entry."""

    @abstractmethod
    async def dead_letters(self, queue: str | None, limit: int = 100) -> list[DeadLetter]:
        """Dead entries, oldest death first, of one queue or all."""

    @abstractmethod
    async def redrive(self, job_ids: list[uuid.UUID] | None, queue: str | None, now: datetime) -> int:
        """Move dead entries back to ready (attempt reset to 0) at the tail of their queue: the named
        ids, or every dead entry (of ``queue`` when given) when ``job_ids`` is None. Returns how many."""
