"""The writes of :mod:`registry.store.postgres`: every job change is one transaction of a fixed number of
statements, one job or a thousand (multi-row statements over ``unnest`` of arrays), and its events are
numbered by the event sequencer.

**Why a sequencer.** A reader follows the events by ``seq`` (``GET /events?after=``, an SSE stream's
``Last-Event-ID``), so a seq must never become visible after a higher one: a reader that has moved past
105 would never see a 104 that commits later. A PostgreSQL sequence hands out numbers in call order, but
transactions commit in any order, and that is how streams lost events. Here a transaction takes its seqs
as its last statement, by bumping the one row of ``event_seq``, and holds that row's lock until it
commits; the next writer's bump waits for that commit, and PostgreSQL makes a commit visible before it
releases the transaction's locks. So transactions with events commit in seq order, whatever the number of
registries: a read sees every seq up to the highest it sees, and seqs are dense (a rollback gives its
numbers back). The cost is one row update per transaction, not per job, and writers of events take turns
for the time of their last statement and their commit; a batch of jobs takes one turn.

The alternatives: transaction-id visibility (hand out only events of transactions older than the oldest
running one, ``pg_snapshot_xmin``) is right only if the cursor follows transaction ids rather than
``seq``, so the routes' one-integer cursor would have to change; and any long transaction on the server,
even in another database, would hold every stream back. A commit-ordered outbox (a publisher numbering
committed events after the fact) writes each event twice and adds the publisher's delay to every event.

**Row locks.** A batch locks its jobs with one ``SELECT ... ORDER BY id FOR UPDATE``: in id order, so
that two batches touching the same jobs cannot deadlock; the sequencer row is always locked last, and its
holder waits for nothing more than its commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.contract import Job, JobCreate, JobState, TransitionRefused

if TYPE_CHECKING:
    import asyncpg

#: A change of one job, applied in Python under the row lock: ``(job, now) -> (new job, changed)``.
Apply = Callable[[Job, datetime], tuple[Job, bool]]
#: One outcome of a change: the job and whether it changed, or the error it met.
Outcome = tuple[Job, bool] | KeyError | TransitionRefused

# Parameters $1..$9: the events, one array a column, in the order they happened.
_APPEND_EVENTS = """
counter AS (UPDATE event_seq SET last = last + cardinality($1::uuid[]) RETURNING last)
INSERT INTO events (seq, job_id, owner, kind, type, state, previous_state, attempt, at, job)
SELECT counter.last - cardinality($1::uuid[]) + e.n, e.job_id, e.owner, e.kind, e.type, e.state,
       e.previous_state, e.attempt, e.at, e.job::jsonb
FROM counter, unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                     $8::timestamptz[], $9::text[])
     WITH ORDINALITY AS e(job_id, owner, kind, type, state, previous_state, attempt, at, job, n)
"""
APPEND_EVENTS = "WITH " + _APPEND_EVENTS
# The jobs' new rows ($10..$14) and their events, in one statement: the rows are locked already.
WRITE_CHANGES = """
WITH written AS (
    UPDATE jobs SET state = w.state, attempt = w.attempt, updated_at = w.updated_at, doc = w.doc::jsonb
    FROM unnest($10::uuid[], $11::text[], $12::int[], $13::timestamptz[], $14::text[])
         AS w(id, state, attempt, updated_at, doc)
    WHERE jobs.id = w.id
),""" + _APPEND_EVENTS
# In the batch's order, so that of two rows with one id or one (owner, key) the first is kept, as one
# INSERT at a time would; DO NOTHING skips a row that conflicts with one inserted just before it.
INSERT_JOBS = """
INSERT INTO jobs (id, kind, state, owner, attempt, created_at, updated_at, idempotency_key, doc)
SELECT s.id, s.kind, s.state, s.owner, s.attempt, s.created_at, s.created_at, s.idempotency_key, s.doc::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::int[],
            $9::timestamptz[]) AS s(id, kind, state, owner, attempt, idempotency_key, doc, n, created_at)
ORDER BY s.n
ON CONFLICT DO NOTHING
RETURNING id, owner, idempotency_key
"""
FIND_JOBS = """
SELECT doc::text FROM jobs WHERE id = ANY($1::uuid[])
UNION
SELECT doc::text FROM jobs JOIN unnest($2::text[], $3::text[]) AS k(owner, key)
    ON jobs.owner = k.owner AND jobs.idempotency_key = k.key
"""
LOCK_JOBS = "SELECT doc::text FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"


def event_arrays(events: Sequence[tuple[str, JobState | None, Job, str]]) -> list[list[Any]]:
    """The parameters of :data:`APPEND_EVENTS` for ``(type, previous state, job after, its JSON)``."""
    return [
        [job.id for _, _, job, _ in events],
        [job.owner for _, _, job, _ in events],
        [job.kind for _, _, job, _ in events],
        [type_ for type_, _, _, _ in events],
        [job.state.value for _, _, job, _ in events],
        [previous.value if previous else None for _, previous, _, _ in events],
        [job.attempt for _, _, job, _ in events],
        [job.updated_at for _, _, job, _ in events],
        [doc for _, _, _, doc in events],
    ]


@dataclass(frozen=True)
class Create:
    """Register ``spec`` at ``now``, as :meth:`registry.store.base.JobStore.create` does."""

    spec: JobCreate
    now: datetime


@dataclass(frozen=True)
class Change:
    """Apply ``apply`` to job ``job_id`` at ``now``, under its row lock."""

    job_id: uuid.UUID
    apply: Apply
    now: datetime


async def write(conn: asyncpg.Connection, ops: Sequence[Create | Change]) -> list[tuple[Job, bool] | Exception]:
    """Apply ``ops`` in the caller's transaction: the registrations first, in their order, then the changes
    in theirs; one outcome per op, in the order of ``ops``."""
    outcomes: list[tuple[Job, bool] | Exception | None] = [None] * len(ops)
    creates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Create)]
    changes = [(i, op) for i, op in enumerate(ops) if isinstance(op, Change)]
    if creates:
        for (i, _), made in zip(creates, await create_jobs(conn, [op for _, op in creates]), strict=True):
            outcomes[i] = made
    if changes:
        for (i, _), changed in zip(changes, await change_jobs(conn, [op for _, op in changes]), strict=True):
            outcomes[i] = changed
    return [outcome for outcome in outcomes if outcome is not None]


async def create_jobs(conn: asyncpg.Connection, creates: Sequence[Create]) -> list[tuple[Job, bool]]:
    """Register jobs in the caller's transaction, each as one ``create`` would (idempotent on its id and on
    its owner's idempotency key, the first of a batch winning), with one ``created`` event each."""
    jobs = [op.spec.to_job(op.now) for op in creates]
    docs = [job.model_dump_json() for job in jobs]
    inserted = await conn.fetch(
        INSERT_JOBS, [job.id for job in jobs], [job.kind for job in jobs], [job.state.value for job in jobs],
        [job.owner for job in jobs], [job.attempt for job in jobs], [job.idempotency_key for job in jobs], docs,
        list(range(len(jobs))), [job.created_at for job in jobs])
    # Which position made each new row: the first one with its id, owner and key (a later position with
    # all three equal would have met the same conflict).
    made = {(uuid.UUID(bytes=row["id"].bytes), row["owner"], row["idempotency_key"]) for row in inserted}
    made_at: dict[uuid.UUID, int] = {}
    for i, job in enumerate(jobs):
        if (job.id, job.owner, job.idempotency_key) in made and job.id not in made_at:
            made_at[job.id] = i
    outcomes: list[tuple[Job, bool] | None] = [(job, True) if made_at.get(job.id) == i else None
                                              for i, job in enumerate(jobs)]
    if None in outcomes:
        found = [Job.model_validate_json(row[0]) for row in await conn.fetch(
            FIND_JOBS, [job.id for job in jobs],
            [job.owner for job in jobs if job.idempotency_key], [job.idempotency_key for job in jobs
                                                                 if job.idempotency_key])]
        by_id = {job.id: job for job in found}
        by_key = {(job.owner, job.idempotency_key): job for job in found if job.idempotency_key}
        for i, job in enumerate(jobs):
            if outcomes[i] is None:
                outcomes[i] = (_existing(job, i, by_id, by_key, made_at), False)
    new = [(job, doc) for i, (job, doc) in enumerate(zip(jobs, docs, strict=True)) if made_at.get(job.id) == i]
    if new:
        await conn.execute(APPEND_EVENTS, *event_arrays([("created", None, job, doc) for job, doc in new]))
    return [outcome for outcome in outcomes if outcome is not None]


def _existing(job: Job, position: int, by_id: dict[uuid.UUID, Job], by_key: dict[tuple[str, str | None], Job],
              made_at: dict[uuid.UUID, int]) -> Job:
    """The job that a registration at ``position`` met: the one with its id, else the one with its owner's
    key, as long as it was there before (not made by a later position of the batch)."""
    for candidate in (by_id.get(job.id), by_key.get((job.owner, job.idempotency_key)) if job.idempotency_key
                      else None):
        if candidate is not None and made_at.get(candidate.id, -1) < position:
            return candidate
    # The statement waited for a conflicting transaction to commit, so its row is visible now.
    raise RuntimeError(f"job {job.id} conflicted on insert but no conflicting job is visible")


async def change_jobs(conn: asyncpg.Connection, changes: Sequence[Change]) -> list[Outcome]:
    """Apply ``changes`` in the caller's transaction, in order, each judged on its own against the state
    the previous ones left: lock every job once, apply in Python, write the changed rows and the events
    with one statement. An exception other than the outcomes' (a bug, a bad argument) writes nothing."""
    rows = await conn.fetch(LOCK_JOBS, list({op.job_id for op in changes}))
    current = {job.id: job for job in (Job.model_validate_json(row[0]) for row in rows)}
    outcomes: list[Outcome] = []
    events: list[tuple[str, JobState | None, Job, str]] = []
    written: dict[uuid.UUID, tuple[Job, str]] = {}
    for op in changes:
        job_id = op.job_id
        job = current.get(job_id)
        if job is None:
            outcomes.append(KeyError(job_id))
            continue
        try:
            new, changed = op.apply(job, op.now)
        except TransitionRefused as exc:
            outcomes.append(exc)
            continue
        if changed:
            doc = new.model_dump_json()
            current[job_id] = new
            written[job_id] = (new, doc)
            events.append(("updated", job.state, new, doc))
        outcomes.append((new, changed))
    if events:
        rows_now = list(written.values())
        await conn.execute(WRITE_CHANGES, *event_arrays(events),
                           [job.id for job, _ in rows_now], [job.state.value for job, _ in rows_now],
                           [job.attempt for job, _ in rows_now], [job.updated_at for job, _ in rows_now],
                           [doc for _, doc in rows_now])
    return outcomes
