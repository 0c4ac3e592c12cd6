"""Every query of the dashboard's pages is an indexed walk on the SQLite registry: SQLite's own plan for the
exact statement :meth:`SqliteJobStore.list` (and ``get``, ``events``) runs scans no table and sorts nothing.
The figures on 1,000,000 jobs are ``conveyor bench-registry``'s (README, "The dashboard")."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from registry.store.paging import encode_cursor
from registry.store.sqlite import SqliteJobStore
from shared.contract import JobState

MOMENT = datetime(2026, 6, 1, tzinfo=timezone.utc)
CURSOR = encode_cursor(MOMENT, uuid.UUID(int=2**128 - 1))
EARLIER = datetime(2026, 5, 1, tzinfo=timezone.utc)
OWNER = str(uuid.uuid4())

#: The jobs table's filters as the dashboard combines them (created_before is a cursor, created_after the
#: range's other end).
FILTERS: list[dict[str, Any]] = [
    {},
    {"state": JobState.FAILED},
    {"kind": "export"},
    {"kind": "export", "state": JobState.FAILED},
    {"owner": OWNER},
    {"owner": OWNER, "state": JobState.FAILED},
    {"owner": OWNER, "kind": "export"},
    {"owner": OWNER, "kind": "export", "state": JobState.FAILED},
    {"cursor": CURSOR},
    {"cursor": CURSOR, "state": JobState.FAILED},
    {"cursor": CURSOR, "owner": OWNER, "state": JobState.FAILED},
    {"cursor": CURSOR, "owner": OWNER, "kind": "export"},
    {"created_after": EARLIER},
    {"created_after": EARLIER, "cursor": CURSOR},
    {"created_after": EARLIER, "cursor": CURSOR, "state": JobState.FAILED},
    {"created_after": EARLIER, "owner": OWNER, "kind": "export", "state": JobState.FAILED},
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(str(tmp_path / "registry.db"))
    await s.open()
    yield s
    await s.close()


async def plan_of(store: SqliteJobStore, call: Any) -> str:
    """SQLite's plan of each statement ``call`` runs on the jobs or events table, one line per step."""
    db = store._db
    statements: list[str] = []
    db.set_trace_callback(statements.append)  # the statements as run, their values filled in
    try:
        await call()
    finally:
        db.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT") and (" jobs" in sql or " events" in sql):
            plans += [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
    assert plans, statements
    return "\n".join(plans)


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "+".join(sorted(f)) or "none")
async def test_each_jobs_page_is_an_indexed_walk(store: SqliteJobStore, filters: dict[str, Any]) -> None:
    plan = await plan_of(store, lambda: store.list(limit=50, **filters))
    assert "TEMP B-TREE" not in plan, plan  # nothing sorted: the index is in the page's order
    scans = [step for step in plan.splitlines() if step.startswith("SCAN jobs")]
    if filters.keys() <= {"cursor", "created_after"}:  # every job, newest first: the creation order's index
        assert scans in ([], ["SCAN jobs USING INDEX jobs_created"]), plan
    else:
        assert not scans, plan
    if "created_after" in filters:  # a bound of the index's range, not a filter on the rows it reads
        assert "created_at>?" in plan, plan
    if "owner" in filters and len(filters.keys() - {"cursor", "created_after"}) > 1:
        # An owner with a state or a kind walks an index of both: not the owner's every job.
        assert "jobs_owner_state" in plan or "jobs_owner_kind" in plan, plan


async def test_a_job_and_its_history_are_looked_up_by_index(store: SqliteJobStore) -> None:
    job_id = uuid.uuid4()
    for call in (lambda: store.get(job_id), lambda: store.events(job_id=job_id)):
        plan = await plan_of(store, call)
        assert "SCAN" not in plan, plan
