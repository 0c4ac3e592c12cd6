"""``conveyor bench-registry``: how long the dashboard's registry queries take on a large SQLite registry.

It fills a SQLite registry file (``--jobs``, default 1,000,000) straight in the store's own schema, in bulk
(the store opens the file first, so the schema and indexes are the store's), with many owners, kinds and
states, then times every query the dashboard's pages make, through the store's own methods: the jobs table
with each filter and their combinations, ``created_before`` (a cursor where the walk starts), the next
page, a search by id, and a job's history. Each query runs ``--repeat`` times; the median and the worst
are printed in milliseconds (``tests/registry/test_sqlite_plans.py`` checks each query's plan). A file that already holds the jobs is reused
(``--fresh`` to fill it again).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from registry.store.paging import encode_cursor, utc_iso
from registry.store.sqlite import SqliteJobStore
from shared.contract import Job, JobState

KINDS = ["export", "import", "task", "ecg", "data_import", "data_export", "acme.resize", "acme.thumbnail"]
#: Most jobs end: finished dominate, as in a registry that has run for a while.
STATES = ([JobState.FINISHED] * 85 + [JobState.FAILED] * 6 + [JobState.CANCELLED] * 3 + [JobState.PENDING] * 4
          + [JobState.PROCESSING] * 2)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _job_rows(n: int, owners: list[str], rng: random.Random, start: int) -> tuple[list[tuple], list[tuple]]:
    jobs, events = [], []
    for i in range(start, start + n):
        job_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        created = T0 + timedelta(seconds=i * 3, microseconds=rng.randrange(1_000_000))
        state = rng.choice(STATES)
        kind = KINDS[min(int(rng.expovariate(0.6)), len(KINDS) - 1)]  # a few kinds hold most jobs
        owner = owners[min(int(rng.paretovariate(1.2)) - 1, len(owners) - 1)]  # a few owners hold most
        updated = created + timedelta(seconds=rng.randrange(1, 120))
        job = Job(id=job_id, kind=kind, type=kind, payload={"n": i}, owner=owner, state=state,
                  attempt=1, created_at=created, updated_at=updated)
        doc = job.model_dump_json()
        jobs.append((str(job_id), kind, state.value, owner, 1, utc_iso(created), utc_iso(updated), None, doc))
        events.append((str(job_id), owner, kind, "created", "pending", None, 0, utc_iso(created), doc))
        events.append((str(job_id), owner, kind, "updated", state.value, "pending", 1, utc_iso(updated), doc))
    return jobs, events


def fill(path: Path, jobs: int, owners: int, *, seed: int = 7, batch: int = 20_000) -> None:
    """``jobs`` jobs (and two events each: created, then their state) in the store's tables."""
    rng = random.Random(seed)
    names = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(owners)]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    for start in range(0, jobs, batch):
        rows, events = _job_rows(min(batch, jobs - start), names, rng, start)
        db.executemany("INSERT INTO jobs (id, kind, state, owner, attempt, created_at, updated_at, idempotency_key,"
                       " doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO events (job_id, owner, kind, type, state, previous_state, attempt, at, job)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        print(f"\r  {start + len(rows):,} jobs", end="", file=sys.stderr, flush=True)
    db.execute("COMMIT")
    db.close()
    print(file=sys.stderr)


Query = Callable[[], Awaitable[Any]]


async def time_query(query: Query, repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` runs of ``query`` (the logs bench times its pages the same way)."""
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        await query()
        took.append((time.perf_counter() - started) * 1000)
    return took


def _samples(db: sqlite3.Connection) -> dict[str, Any]:
    """Real values to ask for: the busiest and a small owner, an id, a job with history."""
    busy = db.execute("SELECT owner, count(*) c FROM jobs GROUP BY owner ORDER BY c DESC LIMIT 1").fetchone()
    small = db.execute("SELECT owner, count(*) c FROM jobs GROUP BY owner ORDER BY c ASC LIMIT 1").fetchone()
    (some_id,) = db.execute("SELECT id FROM jobs ORDER BY created_at LIMIT 1 OFFSET 500000").fetchone() or \
        db.execute("SELECT id FROM jobs LIMIT 1").fetchone()
    (middle,) = db.execute("SELECT created_at FROM jobs ORDER BY created_at LIMIT 1 OFFSET"
                           " (SELECT count(*) / 2 FROM jobs)").fetchone()
    return {"busy_owner": busy[0], "busy_jobs": busy[1], "small_owner": small[0], "small_jobs": small[1],
            "job_id": uuid.UUID(some_id), "middle": datetime.fromisoformat(middle)}


def queries(store: SqliteJobStore, s: dict[str, Any]) -> dict[str, Query]:
    """Each query of the dashboard's pages (a page of 50, the registry's cursor) by a name."""
    before = encode_cursor(s["middle"], uuid.UUID(int=2**128 - 1))  # created_before: where the walk starts

    def page(**kw: Any) -> Query:
        return lambda: store.list(limit=50, **kw)

    async def second_page() -> Any:
        first = await store.list(limit=50)
        return await store.list(limit=50, cursor=first.next_cursor)

    busy, small = s["busy_owner"], s["small_owner"]
    return {
        "all": page(),
        "next page": second_page,
        "state=failed": page(state=JobState.FAILED),
        "state=processing": page(state=JobState.PROCESSING),
        "kind=export": page(kind="export"),
        "kind=acme.thumbnail (rare)": page(kind="acme.thumbnail"),
        "kind=none (no jobs)": page(kind="none"),
        "kind+state (export, failed)": page(kind="export", state=JobState.FAILED),
        "kind+state (rare kind, processing)": page(kind="acme.thumbnail", state=JobState.PROCESSING),
        f"owner (busiest, {s['busy_jobs']:,} jobs)": page(owner=busy),
        f"owner (smallest, {s['small_jobs']:,} jobs)": page(owner=small),
        "owner+state (busiest, failed)": page(owner=busy, state=JobState.FAILED),
        "owner+state (busiest, processing)": page(owner=busy, state=JobState.PROCESSING),
        "owner+kind (busiest, acme.thumbnail)": page(owner=busy, kind="acme.thumbnail"),
        "owner+kind+state (busiest, task, failed)": page(owner=busy, kind="task", state=JobState.FAILED),
        # The worst case of a walk: a filter that matches none of the busiest owner's jobs.
        "owner+kind (busiest, a kind with no jobs)": page(owner=busy, kind="none"),
        "owner+kind+state (busiest, rare kind, processing)": page(owner=busy, kind="acme.thumbnail",
                                                                   state=JobState.PROCESSING),
        "owner+state (smallest, cancelled)": page(owner=small, state=JobState.CANCELLED),
        "created_before (middle)": page(cursor=before),
        "created_before+state (middle, failed)": page(cursor=before, state=JobState.FAILED),
        "created_before+owner+state (busiest)": page(cursor=before, owner=busy, state=JobState.FAILED),
        "search by id": lambda: store.get(s["job_id"]),
        "a job's history": lambda: store.events(job_id=s["job_id"]),
    }


async def run(path: Path, jobs: int, owners: int, repeat: int, fresh: bool) -> list[dict[str, Any]]:
    if fresh and path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SqliteJobStore(str(path))
    await store.open()  # the store's schema and indexes
    try:
        db = store._db
        have = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        if have < jobs:
            print(f"filling {path} with {jobs - have:,} jobs ({owners} owners)", file=sys.stderr)
            fill(path, jobs - have, owners)
        samples = _samples(db)
        results = []
        for name, query in queries(store, samples).items():
            took = await time_query(query, repeat)
            results.append({"query": name, "median_ms": round(statistics.median(took), 2),
                            "max_ms": round(max(took), 2)})
        return results
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor bench-registry", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=Path("var/bench-registry.db"), help="the SQLite file")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--fresh", action="store_true", help="fill the file again from nothing")
    parser.add_argument("--json", dest="as_json", action="store_true")
    parser.add_argument("--writes", type=int, default=0, metavar="N",
                        help="instead: the store's CPU per job to carry N jobs from registered to finished, "
                             "with random and with time-ordered ids (shared/bench_registry_writes.py)")


def command(args: argparse.Namespace) -> int:
    if args.writes:
        from shared.bench_registry_writes import command as writes

        return writes(args.writes, args.as_json)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args.db, args.jobs, args.owners, args.repeat, args.fresh))
    if args.as_json:
        print(orjson.dumps(results).decode())
    else:
        width = max(len(r["query"]) for r in results)
        print(f"{'query':<{width}}  median ms  max ms")
        for r in results:
            print(f"{r['query']:<{width}}  {r['median_ms']:>9.2f}  {r['max_ms']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
