"""The embedded registry's writes of jobs: the registrations of ``POST /jobs/batch`` and the reports of
``POST /jobs/updates``, each batch in its caller's one transaction, as a few statements for the batch
rather than two or three for each of its jobs. A single registration, report, cancel or redrive is a
batch of one: the store has one way to register a job and one to change it.

- Registrations: one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` a chunk of jobs, then
  their ``created`` events in one ``executemany``. A job whose id or ``(owner, idempotency_key)`` is
  taken (by an earlier batch, or earlier in this one) is the job that holds it, read as before.
- Reports: the batch's jobs read with one ``SELECT ... WHERE id IN (...)`` a chunk, each report applied
  in order to its job as the batch left it (two reports of one job in one batch see each other, as two
  transactions in turn would), then one ``UPDATE`` a changed job, with its state after the batch, and
  every change's event, in order, each in one ``executemany``.

What each job's outcome is, which events there are and their order are those of one write per job; the
statements are what changed (``conveyor bench-registry --writes`` measures it).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from registry.store.paging import utc_iso
from shared.contract import Job, JobCreate, TransitionRefused

INSERT_EVENT = (
    "INSERT INTO events (job_id, owner, kind, type, state, previous_state, attempt, at, job)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_JOB_COLUMNS = "id, kind, state, owner, attempt, created_at, updated_at, idempotency_key, doc"
#: Rows of one ``INSERT`` (nine parameters each) and ids of one ``IN (...)``: well under SQLite's limit of
#: parameters a statement (32,766 since 3.32; 999 before).
CHUNK = 100

Outcome = tuple[Job, bool] | KeyError | TransitionRefused
#: A change of one job: the job as it is, and the moment, to the job after it and whether it changed
#: (:func:`~shared.contract.apply_update`, :func:`~registry.store.rules.apply_cancel` ...).
Apply = Callable[[Job, datetime], tuple[Job, bool]]


def create_batch(db: sqlite3.Connection, specs: list[JobCreate], now: datetime) -> list[tuple[Job, bool]]:
    """Register ``specs`` in order: each one's job, and whether this call made it."""
    created = utc_iso(now)
    jobs = [spec.to_job(now) for spec in specs]
    docs = [job.model_dump_json() for job in jobs]
    rows = [(str(job.id), job.kind, job.state.value, job.owner, job.attempt, created, created,
             job.idempotency_key, doc) for job, doc in zip(jobs, docs, strict=True)]
    # A row inserted is known by its id and its document: one spec's id may be another's that was refused
    # (its key was taken), and only a spec repeated whole has both the same.
    inserted: set[tuple[str, str]] = set()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        cursor = db.execute(
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING RETURNING id, doc",
            [value for row in chunk for value in row])
        inserted.update(cursor.fetchall())
    outcomes: list[tuple[Job, bool]] = []
    events: list[tuple[Any, ...]] = []
    made_by: dict[str, int] = {}  # an id this batch inserted: which spec did
    for i, (job, row) in enumerate(zip(jobs, rows, strict=True)):
        if (row[0], row[8]) in inserted:
            inserted.discard((row[0], row[8]))  # the same spec again later in the batch finds this job
            made_by[row[0]] = i
            events.append((row[0], job.owner, job.kind, "created", job.state.value, None, job.attempt, created,
                           row[8]))
    for i, (spec, job, row) in enumerate(zip(specs, jobs, rows, strict=True)):
        job_id = row[0]
        if made_by.get(job_id) == i:
            outcomes.append((job, True))
            continue
        # The id or (owner, idempotency_key) was taken when this spec's turn came: the job that held it is
        # the answer. Rows are inserted in order, so an id a later spec of the batch took was free then.
        held = None
        if made_by.get(job_id, -1) < i:
            held = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if held is None:
            held = db.execute("SELECT doc FROM jobs WHERE owner = ? AND idempotency_key = ?",
                              (spec.owner, spec.idempotency_key)).fetchone()
        outcomes.append((Job.model_validate_json(held[0]), False))
    if events:
        db.executemany(INSERT_EVENT, events)
    return outcomes


def change_batch(db: sqlite3.Connection, changes: list[tuple[uuid.UUID, Apply]], now: datetime) -> list[Outcome]:
    """Apply ``changes`` in order: each one's job after it and whether it changed, or the
    :class:`KeyError` of an unknown job, or the :class:`TransitionRefused` of a refused change (which
    writes nothing)."""
    keys = list(dict.fromkeys(str(job_id) for job_id, _ in changes))
    docs: dict[str, str] = {}
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start:start + CHUNK]
        marks = ", ".join("?" * len(chunk))
        docs.update(db.execute(f"SELECT id, doc FROM jobs WHERE id IN ({marks})", chunk).fetchall())
    current: dict[str, Job] = {}
    rows: dict[str, tuple[Any, ...]] = {}
    events: list[tuple[Any, ...]] = []
    outcomes: list[Outcome] = []
    for job_id, apply in changes:
        key = str(job_id)
        job = current.get(key)
        if job is None:
            if key not in docs:
                outcomes.append(KeyError(job_id))
                continue
            job = current[key] = Job.model_validate_json(docs[key])
        try:
            new, changed = apply(job, now)
        except TransitionRefused as exc:
            outcomes.append(exc)
            continue
        if changed:
            doc, at = new.model_dump_json(), utc_iso(new.updated_at)
            rows[key] = (new.state.value, new.attempt, at, doc, key)  # the last change of the job wins
            events.append((key, new.owner, new.kind, "updated", new.state.value, job.state.value, new.attempt, at,
                           doc))
            current[key] = new
        outcomes.append((new, changed))
    if rows:
        db.executemany("UPDATE jobs SET state = ?, attempt = ?, updated_at = ?, doc = ? WHERE id = ?", rows.values())
        db.executemany(INSERT_EVENT, events)
    return outcomes
