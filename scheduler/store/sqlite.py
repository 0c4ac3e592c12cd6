"""The queue store in one SQLite file: ``sqlite:///var/scheduler.db`` (relative) or ``sqlite:////abs/path.db``.

The stdlib driver is used directly on the event-loop thread: every method runs a few short indexed
statements with no ``await`` in between, so a thread hop would cost more than the work, and no other
coroutine can interleave with a transaction. Writes that touch more than one row run in one
``BEGIN IMMEDIATE`` transaction.

Durability: WAL with ``synchronous=NORMAL``. A committed transaction is in the WAL before ``COMMIT``
returns, so killing the process (even with SIGKILL) loses nothing; only a power cut or an OS crash may
lose the last transactions before a checkpoint. Checkpoints run in a thread of their own
(:class:`~shared.sqlite_wal.Checkpointer`), not in a request's commit.

Times are stored as REAL epoch seconds (the microseconds of a datetime survive the round trip).

Paused queues are rows of the ``paused`` table (a file written before it gets it, empty, when opened).

Queue lengths (entries not dead) are kept in the ``lengths`` table by triggers on ``entries``, so no
statement can forget them; they are counted afresh when the store opens (which also fills them in for a
file written before they existed).

Waiting entries are in state ``ready`` (due when written) or ``delayed`` (``ready_at`` after the ``now`` of
the write). A dequeue first turns the delayed entries that fell due into ready ones, then reads ready ones
through the ``entries_priority`` index, ``(queue, state, priority DESC, ready_at, seq)``, in the order it hands them
out, so it never walks past entries that are not due. Whether an entry is due is always decided by its
``ready_at`` against the ``now`` asked about; the two states only keep the index walk short. A file
written before priorities gets the column (every entry priority 0), and its waiting entries, all
``ready``, are handed out no earlier than their ``ready_at`` all the same.
"""

from __future__ import annotations

import secrets
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

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
    StoreUnavailable,
    backoff_delay_s,
    is_last_attempt,
    ready_at_of,
)
from scheduler.store.sqlite_schema import create_or_migrate
from shared.contract import Delivery, QueuedJob, RetryPolicy
from shared.sqlite_wal import Checkpointer, use_wal

_BUMP = ("INSERT INTO counters (queue, name, value) VALUES (?, ?, ?) "
         "ON CONFLICT (queue, name) DO UPDATE SET value = value + excluded.value")
_LEASED = "job_id = ? AND state = 'leased' AND lease_id = ?"
_COUNTERS = ("enqueued", "dequeued", "acked", "nacked")
# Bound variables a statement may carry stay well under SQLite's limit.
_CHUNK = 500
# A dequeue's two statements a queue: delayed entries that fell due become ready, then the ready ones due,
# in their order (-priority, ready_at, seq), read off the entries_priority index (``+ready_at``: no range on
# entries_dequeue, which would need sorting).
_PROMOTE = "UPDATE entries SET state = 'ready' WHERE queue = ? AND state = 'delayed' AND ready_at <= ?"
_DUE = ("SELECT -priority, ready_at, seq, job_id, queue, attempt, job FROM entries "
        "WHERE queue = ? AND state = 'ready' AND +ready_at <= ? ORDER BY priority DESC, ready_at, seq LIMIT ?")
# The dead letters in their order, named: with no statistics, the planner would rather take an index with
# an equality on ``queue`` or ``state`` and sort what it finds.
_DEAD_LETTERS = "INDEXED BY entries_dead_letters"
# The state of a waiting entry whose ready_at is ?1 written at ?2.
_WAITING = "CASE WHEN ?1 > ?2 THEN 'delayed' ELSE 'ready' END"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _paused(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT queue FROM paused")}


def _dead_ids(db: sqlite3.Connection, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[str]:
    """The dead entries named (or all, of ``queue`` when given, when ``job_ids`` is None), oldest death first."""
    if job_ids is None:
        where, params = ("AND queue = ?", [queue]) if queue is not None else ("", [])
        return [r[0] for r in db.execute(f"SELECT job_id FROM entries {_DEAD_LETTERS} WHERE state = 'dead' {where} "
                                         "ORDER BY died_at, job_id", params)]
    wanted = [str(i) for i in dict.fromkeys(job_ids)]
    found: list[tuple[float, str]] = []
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found += db.execute(f"SELECT died_at, job_id FROM entries WHERE state = 'dead' "
                            f"AND job_id IN ({marks})", chunk).fetchall()
    return [job_id for _, job_id in sorted(found)]


class SqliteQueueStore(QueueStore):
    """Queues in one SQLite file; see :mod:`scheduler.store.base` for the semantics."""

    def __init__(self, path: str, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        self.checkpoints = Checkpointer(path, busy_timeout_s=busy_timeout_ms / 1000)

    @classmethod
    def from_url(cls, url: str) -> SqliteQueueStore:
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "sqlite" or not sep or not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"not a SQLite URL: {url!r} (use sqlite:///relative/path.db or sqlite:////abs/path.db)")
        return cls(rest[1:].split("?", 1)[0])

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            use_wal(db, self.busy_timeout_ms / 1000)
            create_or_migrate(db)
        except sqlite3.Error as exc:
            db.close()  # rolls back what the failed transaction did
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._db = db
        self.checkpoints.start(db)

    async def close(self) -> None:
        self.checkpoints.stop()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        with self._statement() as db:
            db.execute("SELECT 1").fetchall()

    async def enqueue(self, queue: str, jobs: list[QueuedJob], now: datetime, max_length: int = 0) -> list[bool]:
        ts = now.timestamp()
        added: list[bool] = []
        with self._tx() as db:
            (seq,) = db.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
            for job in jobs:
                seq += 1
                ready_ts = ready_at_of(job, now).timestamp()
                cur = db.execute(
                    "INSERT INTO entries (job_id, queue, state, ready_at, seq, attempt, job, priority) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                    (str(job.id), queue, "delayed" if ready_ts > ts else "ready", ready_ts, seq, job.attempts_made,
                     job.model_dump_json(), job.priority),
                )
                added.append(cur.rowcount == 1)
            db.execute("UPDATE sequence SET value = ? WHERE name = 'seq'", (seq,))
            if any(added):
                if max_length > 0:
                    # The triggers counted the new rows in: past the limit, the rollback takes them out.
                    (length,) = db.execute("SELECT value FROM lengths WHERE queue = ?", (queue,)).fetchone()
                    if length > max_length:
                        raise QueueFull(queue, length - sum(added), max_length)
                db.execute(_BUMP, (queue, "enqueued", sum(added)))
        return added

    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        ts = now.timestamp()
        expires_ts = ts + lease_s
        expires_at = _dt(expires_ts)
        with self._tx() as db:
            rows: list[tuple[int, float, int, str, str, int, str]] = []
            # One indexed range scan a queue, merged here: a single query over ``queue IN (...)`` would
            # sort every ready row of those queues to find the first few.
            paused = _paused(db)
            for queue in dict.fromkeys(queues):
                if queue in paused:
                    continue
                db.execute(_PROMOTE, (queue, ts))
                rows += db.execute(_DUE, (queue, ts, max_jobs)).fetchall()
            if not rows:
                return []
            rows.sort()
            del rows[max_jobs:]
            deliveries: list[Delivery] = []
            updates: list[tuple[str, float, str]] = []
            for _, _, _, job_id, queue, attempt, job in rows:
                lease_id = secrets.token_hex(16)
                updates.append((lease_id, expires_ts, job_id))
                deliveries.append(Delivery(job=QueuedJob.model_validate_json(job), queue=queue, attempt=attempt + 1,
                                           lease_id=lease_id, lease_expires_at=expires_at))
            db.executemany("UPDATE entries SET state = 'leased', attempt = attempt + 1, lease_id = ?, "
                           "lease_expires_at = ? WHERE job_id = ?", updates)
            db.executemany(_BUMP, [(q, "dequeued", n) for q, n in Counter(d.queue for d in deliveries).items()])
        return deliveries

    async def ack(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        with self._tx() as db:
            rows = db.execute(f"DELETE FROM entries WHERE {_LEASED} RETURNING queue",
                              (str(job_id), lease_id)).fetchall()
            if not rows:
                raise LeaseLost(str(job_id))
            db.execute(_BUMP, (rows[0][0], "acked", 1))

    async def ack_many(self, leases: list[tuple[uuid.UUID, str]], now: datetime) -> list[bool]:
        acked = []
        with self._tx() as db:  # one commit for the batch
            for job_id, lease_id in leases:
                rows = db.execute(f"DELETE FROM entries WHERE {_LEASED} RETURNING queue",
                                  (str(job_id), lease_id)).fetchall()
                if rows:
                    db.execute(_BUMP, (rows[0][0], "acked", 1))
                acked.append(bool(rows))
        return acked

    async def nack(self, job_id: uuid.UUID, lease_id: str, now: datetime, error: str | None,
                   delay_s: float | None = None, retry: bool = True) -> NackOutcome:
        ts = now.timestamp()
        with self._tx() as db:
            row = db.execute(f"SELECT queue, attempt, job, cancel_requested FROM entries WHERE {_LEASED}",
                             (str(job_id), lease_id)).fetchone()
            if row is None:
                raise LeaseLost(str(job_id))
            queue, attempt, job, cancel_requested = row
            db.execute(_BUMP, (queue, "nacked", 1))
            if cancel_requested:
                db.execute("DELETE FROM entries WHERE job_id = ?", (str(job_id),))
                return NackOutcome(dead=False, attempt=attempt, cancelled=True)
            spec = orjson.loads(job)
            policy = RetryPolicy.model_validate(spec["retry"])
            if not retry or is_last_attempt(spec, attempt):
                db.execute("UPDATE entries SET state = 'dead', lease_id = NULL, lease_expires_at = NULL, error = ?, "
                           "died_at = ? WHERE job_id = ?", (error, ts, str(job_id)))
                return NackOutcome(dead=True, attempt=attempt)
            delay = backoff_delay_s(policy, attempt) if delay_s is None else delay_s
            ready_at = now + timedelta(seconds=delay)
            db.execute(f"UPDATE entries SET state = {_WAITING}, ready_at = ?1, lease_id = NULL, lease_expires_at = NULL, "
                       "error = ?3 WHERE job_id = ?4", (ready_at.timestamp(), ts, error, str(job_id)))
        return NackOutcome(dead=False, attempt=attempt, ready_at=ready_at)

    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        with self._statement() as db:
            cur = db.execute("UPDATE entries SET state = CASE WHEN ready_at > ? THEN 'delayed' ELSE 'ready' END, "
                             f"attempt = attempt - 1, lease_id = NULL, lease_expires_at = NULL WHERE {_LEASED}",
                             (now.timestamp(), str(job_id), lease_id))
        if cur.rowcount != 1:
            raise LeaseLost(str(job_id))

    async def extend(self, job_id: uuid.UUID, lease_id: str, lease_s: float, now: datetime) -> ExtendResult:
        expires_ts = now.timestamp() + lease_s
        with self._statement() as db:
            rows = db.execute(f"UPDATE entries SET lease_expires_at = ? WHERE {_LEASED} RETURNING cancel_requested",
                              (expires_ts, str(job_id), lease_id)).fetchall()
        if not rows:
            raise LeaseLost(str(job_id))
        return ExtendResult(lease_expires_at=_dt(expires_ts), cancel_requested=bool(rows[0][0]))

    async def expire_leases(self, now: datetime) -> list[ExpiredLease]:
        ts = now.timestamp()
        due = "FROM entries WHERE state = 'leased' AND lease_expires_at <= ?"
        # The reaper asks often and almost always finds nothing: look before taking the write lock.
        with self._statement() as db:
            if db.execute(f"SELECT 1 {due} LIMIT 1", (ts,)).fetchone() is None:
                return []
        moved: list[ExpiredLease] = []
        with self._tx() as db:
            rows = db.execute(f"SELECT job_id, queue, attempt, job, cancel_requested {due}", (ts,)).fetchall()
            for job_id, queue, attempt, job, cancel_requested in rows:
                cancelled = bool(cancel_requested)
                dead = not cancelled and is_last_attempt(orjson.loads(job), attempt)
                if cancelled:
                    db.execute("DELETE FROM entries WHERE job_id = ?", (job_id,))
                elif dead:
                    db.execute("UPDATE entries SET state = 'dead', lease_id = NULL, lease_expires_at = NULL, "
                               "error = 'lease expired', died_at = ? WHERE job_id = ?", (ts, job_id))
                else:
                    db.execute("UPDATE entries SET state = 'ready', ready_at = ?, lease_id = NULL, "
                               "lease_expires_at = NULL WHERE job_id = ?", (ts, job_id))
                db.execute(_BUMP, (queue, "expired", 1))
                moved.append(ExpiredLease(job_id=uuid.UUID(job_id), queue=queue, attempt=attempt, dead=dead,
                                          cancelled=cancelled))
        return moved

    async def remove(self, job_id: uuid.UUID) -> bool:
        with self._statement() as db:
            cur = db.execute("DELETE FROM entries WHERE job_id = ? AND state != 'leased'", (str(job_id),))
        return cur.rowcount == 1

    async def cancel(self, job_id: uuid.UUID) -> CancelOutcome:
        with self._tx() as db:
            if db.execute("UPDATE entries SET cancel_requested = 1 WHERE job_id = ? AND state = 'leased'",
                          (str(job_id),)).rowcount == 1:
                return "flagged"
            if db.execute("DELETE FROM entries WHERE job_id = ?", (str(job_id),)).rowcount == 1:
                return "removed"
        return "absent"

    async def contains(self, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        held: set[uuid.UUID] = set()
        ids = [str(i) for i in dict.fromkeys(job_ids)]
        with self._statement() as db:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                held.update(uuid.UUID(r[0]) for r in
                            db.execute(f"SELECT job_id FROM entries WHERE job_id IN ({marks})", chunk))
        return held

    async def states(self, job_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, EntryState]:
        ts = now.timestamp()
        out: dict[uuid.UUID, EntryState] = {}
        ids = [str(i) for i in dict.fromkeys(job_ids)]
        with self._statement() as db:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for job_id, state, ready_at in db.execute(
                        f"SELECT job_id, state, ready_at FROM entries WHERE job_id IN ({marks})", chunk):
                    if state in ("ready", "delayed"):
                        state = "delayed" if ready_at > ts else "ready"
                    out[uuid.UUID(job_id)] = state
        return out

    async def lengths(self) -> dict[str, int]:
        with self._statement() as db:
            return dict(db.execute("SELECT queue, value FROM lengths").fetchall())

    async def next_ready_at(self, queues: list[str]) -> datetime | None:
        due: list[float] = []
        with self._statement() as db:
            paused = _paused(db)
            for queue in dict.fromkeys(queues):
                if queue in paused:
                    continue
                for state in ("ready", "delayed"):  # each a lookup in entries_dequeue
                    (ts,) = db.execute("SELECT MIN(ready_at) FROM entries WHERE queue = ? AND state = ?",
                                       (queue, state)).fetchone()
                    if ts is not None:
                        due.append(ts)
        return _dt(min(due)) if due else None

    async def stats(self, now: datetime) -> dict[str, QueueStats]:
        ts = now.timestamp()
        out: dict[str, QueueStats] = {}
        with self._statement() as db:
            for queue, name, value in db.execute("SELECT queue, name, value FROM counters"):
                stats = out.setdefault(queue, QueueStats(extra={"expired": 0}))
                if name in _COUNTERS:
                    setattr(stats, name, value)
                else:
                    stats.extra[name] = value
            groups = db.execute("SELECT queue, state, ready_at <= ?, COUNT(*), MIN(ready_at) FROM entries "
                                "GROUP BY queue, state, ready_at <= ?", (ts, ts)).fetchall()
        oldest: dict[str, float] = {}
        for queue, state, due, count, first in groups:
            stats = out.setdefault(queue, QueueStats(extra={"expired": 0}))
            if state == "leased":
                stats.leased += count
            elif state == "dead":
                stats.dead += count
            elif not due:
                stats.delayed += count
            else:  # ready, or delayed and due by now
                stats.ready += count
                oldest[queue] = min(oldest.get(queue, first), first)
        for queue, first in oldest.items():
            out[queue].oldest_ready_age_s = ts - first
        return out

    async def dead_letters(self, queue: str | None, limit: int = 100,
                           after: DeadKey | None = None) -> list[DeadLetter]:
        where, params = ("AND queue = ?", [queue]) if queue is not None else ("", [])
        if after is not None:  # a keyset on the entries_dead_letters index
            where += " AND (died_at, job_id) > (?, ?)"
            params += [after[0].timestamp(), str(after[1])]
        with self._statement() as db:
            rows = db.execute(f"SELECT job, queue, attempt, error, died_at FROM entries {_DEAD_LETTERS} "
                              f"WHERE state = 'dead' {where} "
                              "ORDER BY died_at, job_id LIMIT ?", [*params, limit]).fetchall()
        return [DeadLetter(job=QueuedJob.model_validate_json(job), queue=q, attempt=attempt, error=error,
                           died_at=_dt(died_at)) for job, q, attempt, error, died_at in rows]

    async def redrive(self, job_ids: list[uuid.UUID] | None, queue: str | None, now: datetime) -> int:
        ts = now.timestamp()
        with self._tx() as db:
            ids = _dead_ids(db, job_ids, queue)
            if not ids:
                return 0
            (seq,) = db.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
            # Attempts go on (fencing needs them to grow); the budget starts again from here.
            db.executemany("UPDATE entries SET state = 'ready', ready_at = ?, seq = ?, error = NULL, died_at = NULL, "
                           "job = json_set(job, '$.attempts_made', attempt) WHERE job_id = ?",
                           [(ts, seq + n, i) for n, i in enumerate(ids, 1)])
            db.execute("UPDATE sequence SET value = ? WHERE name = 'seq'", (seq + len(ids),))
        return len(ids)

    async def discard(self, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[uuid.UUID]:
        with self._tx() as db:
            ids = _dead_ids(db, job_ids, queue)
            db.executemany("DELETE FROM entries WHERE job_id = ? AND state = 'dead'", [(i,) for i in ids])
        return [uuid.UUID(i) for i in ids]

    async def set_paused(self, queue: str, paused: bool) -> bool:
        with self._statement() as db:
            if paused:
                cur = db.execute("INSERT INTO paused (queue) VALUES (?) ON CONFLICT (queue) DO NOTHING", (queue,))
            else:
                cur = db.execute("DELETE FROM paused WHERE queue = ?", (queue,))
        return cur.rowcount == 1

    async def paused_queues(self) -> set[str]:
        with self._statement() as db:
            return _paused(db)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("the SQLite queue store is not open")
        return self._db

    @contextmanager
    def _statement(self) -> Iterator[sqlite3.Connection]:
        """The connection for one autocommit statement (or a few reads); driver errors become
        :class:`StoreUnavailable`."""
        try:
            yield self._conn()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, rolled back when the block raises (including :class:`LeaseLost`)."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        try:
            yield db
        except BaseException as exc:
            db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"SQLite: {exc}") from exc
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            db.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        self.checkpoints.committed()
