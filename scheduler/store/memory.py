"""The in-process queue store, for tests and ``memory://``: fast, and lost with the process.

Each queue has two heaps: entries due, by ``(-priority, ready_at, seq)``, and entries waiting for their
``ready_at`` (delayed), by ``(ready_at, seq)``. A dequeue first moves the delayed entries that fell due to
the due heap, then pops the first due ones. An entry that leaves its heap other than by being popped (it was
removed) leaves its heap item behind; such an item is skipped when it surfaces, because the entry it names
no longer matches it. Each queue's length (entries not dead) is a counter kept by every move in or out of
it.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.store.base import (
    CancelOutcome,
    DeadKey,
    DeadLetter,
    EntryState,
    ExpiredLease,
    ExtendResult,
    LeaseLost,
    NackOutcome,
    QueueFull,
    QueueStats,
    QueueStore,
    backoff_delay_s,
    is_last_attempt,
    ready_at_of,
)
from shared.contract import Delivery, QueuedJob

READY, LEASED, DEAD = "ready", "leased", "dead"
#: Which heap holds a ready entry.
DUE, LATER = "due", "later"

_DueItem = tuple[int, datetime, int, uuid.UUID]
_LaterItem = tuple[datetime, int, uuid.UUID]


@dataclass(slots=True)
class _Entry:
    job: QueuedJob
    queue: str
    seq: int
    ready_at: datetime
    state: str = READY
    attempt: int = 0
    lease_id: str | None = None
    lease_expires_at: datetime | None = None
    error: str | None = None
    died_at: datetime | None = None
    cancel_requested: bool = False
    heap: str | None = None  # DUE or LATER while ready

    @property
    def due_item(self) -> _DueItem:
        return -self.job.priority, self.ready_at, self.seq, self.job.id


class MemoryQueueStore(QueueStore):
    """Every queue in this process's memory; see :mod:`scheduler.store.base` for the semantics."""

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._due: dict[str, list[_DueItem]] = {}
        self._later: dict[str, list[_LaterItem]] = {}
        self._leased: dict[uuid.UUID, _Entry] = {}
        self._dead: dict[uuid.UUID, _Entry] = {}
        self._counters: dict[str, Counter[str]] = {}
        #: Entries not dead, per queue.
        self._lengths: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._paused: set[str] = set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def enqueue(self, queue: str, jobs: list[QueuedJob], now: datetime, max_length: int = 0) -> list[bool]:
        if max_length > 0:
            new = len({job.id for job in jobs if job.id not in self._entries})
            if new and self._lengths[queue] + new > max_length:
                raise QueueFull(queue, self._lengths[queue], max_length)
        added: list[bool] = []
        for job in jobs:
            if job.id in self._entries:
                added.append(False)
                continue
            entry = _Entry(job=job, queue=queue, seq=next(self._seq), ready_at=ready_at_of(job, now),
                           attempt=job.attempts_made)
            self._entries[job.id] = entry
            self._make_ready(entry, entry.ready_at, now)
            added.append(True)
        if any(added):
            self._counters.setdefault(queue, Counter())["enqueued"] += sum(added)
            self._lengths[queue] += sum(added)
        return added

    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        names = [q for q in dict.fromkeys(queues) if q in self._due and q not in self._paused]
        for queue in names:
            self._promote(queue, now)
        heaps = [self._due[q] for q in names]
        expires_at = now + timedelta(seconds=lease_s)
        deliveries: list[Delivery] = []
        while len(deliveries) < max_jobs:
            best: list[_DueItem] | None = None
            for heap in heaps:
                top = self._top_due(heap, now)
                if top is not None and (best is None or top < best[0]):
                    best = heap
            if best is None:
                break
            entry = self._entries[heapq.heappop(best)[-1]]
            entry.state = LEASED
            entry.heap = None
            entry.attempt += 1
            entry.lease_id = secrets.token_hex(16)
            entry.lease_expires_at = expires_at
            self._leased[entry.job.id] = entry
            self._counters[entry.queue]["dequeued"] += 1
            deliveries.append(Delivery(job=entry.job, queue=entry.queue, attempt=entry.attempt,
                                       lease_id=entry.lease_id, lease_expires_at=expires_at))
        return deliveries

    async def ack(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        entry = self._take_lease(job_id, lease_id)
        self._forget(entry)
        self._counters[entry.queue]["acked"] += 1

    async def nack(self, job_id: uuid.UUID, lease_id: str, now: datetime, error: str | None,
                   delay_s: float | None = None, retry: bool = True) -> NackOutcome:
        entry = self._take_lease(job_id, lease_id)
        self._counters[entry.queue]["nacked"] += 1
        if entry.cancel_requested:
            self._forget(entry)
            return NackOutcome(dead=False, attempt=entry.attempt, cancelled=True)
        policy = entry.job.retry
        if not retry or is_last_attempt(entry.job, entry.attempt):
            self._bury(entry, now, error)
            return NackOutcome(dead=True, attempt=entry.attempt)
        delay = backoff_delay_s(policy, entry.attempt) if delay_s is None else delay_s
        entry.error = error
        self._make_ready(entry, now + timedelta(seconds=delay), now)
        return NackOutcome(dead=False, attempt=entry.attempt, ready_at=entry.ready_at)

    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        entry = self._take_lease(job_id, lease_id)
        entry.attempt -= 1
        self._make_ready(entry, entry.ready_at, now)

    async def extend(self, job_id: uuid.UUID, lease_id: str, lease_s: float, now: datetime) -> ExtendResult:
        entry = self._leased.get(job_id)
        if entry is None or entry.lease_id != lease_id:
            raise LeaseLost(str(job_id))
        entry.lease_expires_at = now + timedelta(seconds=lease_s)
        return ExtendResult(lease_expires_at=entry.lease_expires_at, cancel_requested=entry.cancel_requested)

    async def expire_leases(self, now: datetime) -> list[ExpiredLease]:
        expired = [e for e in self._leased.values() if e.lease_expires_at is not None and e.lease_expires_at <= now]
        moved: list[ExpiredLease] = []
        for entry in expired:
            del self._leased[entry.job.id]
            entry.lease_id = entry.lease_expires_at = None
            cancelled = entry.cancel_requested
            dead = not cancelled and is_last_attempt(entry.job, entry.attempt)
            if cancelled:
                self._forget(entry)
            elif dead:
                self._bury(entry, now, "lease expired")
            else:
                self._make_ready(entry, now, now)
            self._counters[entry.queue]["expired"] += 1
            moved.append(ExpiredLease(job_id=entry.job.id, queue=entry.queue, attempt=entry.attempt, dead=dead,
                                      cancelled=cancelled))
        return moved

    async def remove(self, job_id: uuid.UUID) -> bool:
        entry = self._entries.get(job_id)
        if entry is None or entry.state == LEASED:
            return False
        self._forget(entry)
        return True

    async def cancel(self, job_id: uuid.UUID) -> CancelOutcome:
        entry = self._entries.get(job_id)
        if entry is None:
            return "absent"
        if entry.state == LEASED:
            entry.cancel_requested = True
            return "flagged"
        self._forget(entry)
        return "removed"

    async def contains(self, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        return {job_id for job_id in job_ids if job_id in self._entries}

    async def states(self, job_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, EntryState]:
        out: dict[uuid.UUID, EntryState] = {}
        for job_id in job_ids:
            entry = self._entries.get(job_id)
            if entry is None:
                continue
            if entry.state == LEASED:
                out[job_id] = "leased"
            elif entry.state == DEAD:
                out[job_id] = "dead"
            else:
                out[job_id] = "delayed" if entry.ready_at > now else "ready"
        return out

    async def lengths(self) -> dict[str, int]:
        return {queue: self._lengths[queue] for queue in self._counters}

    async def next_ready_at(self, queues: list[str]) -> datetime | None:
        due: list[datetime] = []
        for queue in dict.fromkeys(queues):
            if queue not in self._due or queue in self._paused:
                continue
            if (later := self._top_later(self._later[queue])) is not None:
                due.append(later[0])
            # Due entries are in the order of handing out, not of time: the earliest is found by looking at
            # each (there are none after a dequeue that found nothing, which is when a long poll asks).
            due += [item[1] for item in self._due[queue] if self._due_item_holds(item)]
        return min(due) if due else None

    async def stats(self, now: datetime) -> dict[str, QueueStats]:
        out = {
            queue: QueueStats(enqueued=c["enqueued"], dequeued=c["dequeued"], acked=c["acked"], nacked=c["nacked"],
                              extra={"expired": c["expired"]})
            for queue, c in self._counters.items()
        }
        oldest: dict[str, datetime] = {}
        for entry in self._entries.values():
            stats = out[entry.queue]
            if entry.state == LEASED:
                stats.leased += 1
            elif entry.state == DEAD:
                stats.dead += 1
            elif entry.ready_at > now:
                stats.delayed += 1
            else:
                stats.ready += 1
                if entry.queue not in oldest or entry.ready_at < oldest[entry.queue]:
                    oldest[entry.queue] = entry.ready_at
        for queue, ready_at in oldest.items():
            out[queue].oldest_ready_age_s = (now - ready_at).total_seconds()
        return out

    async def dead_letters(self, queue: str | None, limit: int = 100,
                           after: DeadKey | None = None) -> list[DeadLetter]:
        dead = self._dead_in_order(queue)
        if after is not None:
            start = (after[0], str(after[1]))
            dead = [e for e in dead if (e.died_at, str(e.job.id)) > start]
        return [DeadLetter(job=e.job, queue=e.queue, attempt=e.attempt, error=e.error, died_at=e.died_at)
                for e in dead[:limit] if e.died_at is not None]

    async def discard(self, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[uuid.UUID]:
        entries = self._dead_chosen(job_ids, queue)
        for entry in entries:
            self._forget(entry)
        return [entry.job.id for entry in entries]

    async def set_paused(self, queue: str, paused: bool) -> bool:
        if (queue in self._paused) == paused:
            return False
        if paused:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)
        return True

    async def paused_queues(self) -> set[str]:
        return set(self._paused)

    async def redrive(self, job_ids: list[uuid.UUID] | None, queue: str | None, now: datetime) -> int:
        entries = self._dead_chosen(job_ids, queue)
        for entry in entries:
            del self._dead[entry.job.id]
            self._lengths[entry.queue] += 1
            # Attempts go on (fencing needs them to grow); the budget starts again from here.
            entry.job = entry.job.model_copy(update={"attempts_made": entry.attempt})
            entry.error = entry.died_at = None
            entry.seq = next(self._seq)
            self._make_ready(entry, now, now)
        return len(entries)

    def _due_item_holds(self, item: _DueItem) -> bool:
        entry = self._entries.get(item[-1])
        return entry is not None and entry.state == READY and entry.heap == DUE and entry.due_item == item

    def _top_due(self, heap: list[_DueItem], now: datetime) -> _DueItem | None:
        """The due heap's first item that still names a due entry; stale items above it are dropped, and
        an entry not due at ``now`` after all (an earlier ``now`` than the one that found it due) goes back
        to wait."""
        while heap:
            if self._due_item_holds(heap[0]):
                entry = self._entries[heap[0][-1]]
                if entry.ready_at <= now:
                    return heap[0]
                heapq.heappop(heap)
                self._make_ready(entry, entry.ready_at, now)
                continue
            heapq.heappop(heap)
        return None

    def _top_later(self, heap: list[_LaterItem]) -> _LaterItem | None:
        """The delayed heap's first item that still names a delayed entry; stale items above it are dropped."""
        while heap:
            ready_at, seq, job_id = heap[0]
            entry = self._entries.get(job_id)
            if (entry is not None and entry.state == READY and entry.heap == LATER and entry.seq == seq
                    and entry.ready_at == ready_at):
                return heap[0]
            heapq.heappop(heap)
        return None

    def _promote(self, queue: str, now: datetime) -> None:
        """Move the delayed entries of ``queue`` due at ``now`` to its due heap."""
        later = self._later[queue]
        while (top := self._top_later(later)) is not None and top[0] <= now:
            heapq.heappop(later)
            self._make_ready(self._entries[top[2]], top[0], now)

    def _take_lease(self, job_id: uuid.UUID, lease_id: str) -> _Entry:
        entry = self._leased.get(job_id)
        if entry is None or entry.lease_id != lease_id:
            raise LeaseLost(str(job_id))
        del self._leased[job_id]
        entry.lease_id = entry.lease_expires_at = None
        return entry

    def _make_ready(self, entry: _Entry, ready_at: datetime, now: datetime) -> None:
        """The entry is ready at ``ready_at``: due when that is not after ``now``, delayed otherwise."""
        entry.state = READY
        entry.ready_at = ready_at
        if ready_at <= now:
            entry.heap = DUE
            heapq.heappush(self._due.setdefault(entry.queue, []), entry.due_item)
        else:
            entry.heap = LATER
            heapq.heappush(self._later.setdefault(entry.queue, []), (ready_at, entry.seq, entry.job.id))
        self._due.setdefault(entry.queue, [])
        self._later.setdefault(entry.queue, [])

    def _forget(self, entry: _Entry) -> None:
        """Drop an entry that is not leased (or whose lease was just taken) from the store."""
        del self._entries[entry.job.id]
        if self._dead.pop(entry.job.id, None) is None:
            self._lengths[entry.queue] -= 1

    def _bury(self, entry: _Entry, now: datetime, error: str | None) -> None:
        self._lengths[entry.queue] -= 1
        entry.state = DEAD
        entry.error = error
        entry.died_at = now
        self._dead[entry.job.id] = entry

    def _dead_chosen(self, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[_Entry]:
        """The dead entries named (or all, of ``queue`` when given, when ``job_ids`` is None), oldest death first."""
        if job_ids is None:
            return self._dead_in_order(queue)
        named = {self._dead[i].job.id: self._dead[i] for i in job_ids if i in self._dead}
        return sorted(named.values(), key=lambda e: (e.died_at, str(e.job.id)))

    def _dead_in_order(self, queue: str | None) -> list[_Entry]:
        dead = [e for e in self._dead.values() if queue is None or e.queue == queue]
        dead.sort(key=lambda e: (e.died_at, str(e.job.id)))
        return dead
