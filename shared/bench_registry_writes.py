"""``conveyor bench-registry --writes N``: the CPU the embedded registry store spends to carry N jobs from
registered to finished, the way the registry's batch routes do it (``POST /jobs/batch`` of ``--create-batch``
registrations, then ``POST /jobs/updates`` of ``--update-batch`` reports to processing and to finished), each
way of making job ids on its own fresh SQLite file in the same run:

- ``uuid4``: random ids, as Conveyor made them before issue #13;
- ``uuid7``: time-ordered ids (:func:`shared.ids.uuid7`), as it makes them now.

It prints the store's CPU per job and the share of it in ``COMMIT``: with random ids every job dirties its own
page of each id-keyed index, and a commit writes them all back. It also prints how long a commit took (p50,
p99, the longest): the wait of the request behind it, where a checkpoint run by the commit itself would
show. No HTTP and no other service: the store alone.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.store.sqlite import SqliteJobStore
from shared.bench_stats import percentile
from shared.contract import JobCreate, JobState, JobUpdate, utcnow
from shared.ids import uuid7

ID_MAKERS: dict[str, Callable[[], uuid.UUID]] = {"uuid4": uuid.uuid4, "uuid7": uuid7}


class _Timed:
    """The store's connection, with the CPU time of each kind of statement counted, and how long each
    ``COMMIT`` took (the time a request waits for its commit)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.cpu_s: collections.Counter[str] = collections.Counter()
        self.commit_s: list[float] = []

    def execute(self, sql: str, *args: Any) -> Any:
        started, wall = time.process_time(), time.perf_counter()
        verb = sql.split(None, 1)[0].upper()
        try:
            return self._conn.execute(sql, *args)
        finally:
            self.cpu_s[verb] += time.process_time() - started
            if verb == "COMMIT":
                self.commit_s.append(time.perf_counter() - wall)

    def executemany(self, sql: str, *args: Any) -> Any:
        started = time.process_time()
        try:
            return self._conn.executemany(sql, *args)
        finally:
            self.cpu_s[sql.split(None, 1)[0].upper()] += time.process_time() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def _one(path: Path, jobs: int, make_id: Callable[[], uuid.UUID], create_batch: int,
               update_batch: int) -> dict[str, Any]:
    store = SqliteJobStore(str(path))
    await store.open()
    try:
        timed = _Timed(store._conn)
        store._conn = timed  # type: ignore[assignment]
        owner, now = str(uuid.uuid4()), utcnow()
        specs = [JobCreate(id=make_id(), kind="export", type="export", payload={"bookId": f"b{i}", "type": "epub"},
                           owner=owner, max_attempts=3, idempotency_key=f"gateway:{make_id().hex}")
                 for i in range(jobs)]
        started = time.process_time()
        for i in range(0, jobs, create_batch):
            await store.create_many(specs[i:i + create_batch], now)
        for state, extra in ((JobState.PROCESSING, {}), (JobState.FINISHED, {"result_url": "file:///r"})):
            updates = [(spec.id, JobUpdate(attempt=1, state=state, **extra)) for spec in specs]
            for i in range(0, jobs, update_batch):
                await store.update_many(updates[i:i + update_batch], now)
        cpu_s = time.process_time() - started
        store._conn = timed._conn
        finished = store._conn.execute("SELECT count(*) FROM jobs WHERE state = 'finished'").fetchone()[0]
        if finished != jobs:
            raise RuntimeError(f"{finished} of {jobs} jobs finished")
    finally:
        await store.close()
    commits = sorted(timed.commit_s)
    return {"cpu_ms_per_job": round(1000 * cpu_s / jobs, 3),
            "commit_ms_per_job": round(1000 * timed.cpu_s["COMMIT"] / jobs, 3),
            "sql_ms_per_job": round(1000 * sum(timed.cpu_s.values()) / jobs, 3),
            # Wall time of one commit: what a request waits for (a checkpoint in it shows here).
            "commit_wait_ms": {"p50": round(1000 * percentile(commits, 0.5), 3),
                               "p99": round(1000 * percentile(commits, 0.99), 3),
                               "max": round(1000 * commits[-1], 3)}}


async def run(jobs: int, create_batch: int = 8, update_batch: int = 13) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-writes-", dir="var") as tmp:
        for name, make_id in ID_MAKERS.items():
            figures = await _one(Path(tmp) / f"{name}.db", jobs, make_id, create_batch, update_batch)
            results.append({"ids": name, "jobs": jobs, **figures})
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'ids':<6}  {'jobs':>7}  {'CPU ms/job':>10}  {'SQL ms/job':>10}  {'COMMIT ms/job':>13}"
          f"  {'a commit waits, ms: p50 / p99 / max':>36}")
    for r in results:
        wait = r["commit_wait_ms"]
        print(f"{r['ids']:<6}  {r['jobs']:>7,}  {r['cpu_ms_per_job']:>10.3f}  {r['sql_ms_per_job']:>10.3f}"
              f"  {r['commit_ms_per_job']:>13.3f}  {wait['p50']:>12.3f} / {wait['p99']:>7.3f} / {wait['max']:>8.2f}")


def command(jobs: int, as_json: bool) -> int:
    import orjson

    Path("var").mkdir(exist_ok=True)
    results = asyncio.run(run(jobs))
    if as_json:
        print(orjson.dumps(results).decode())
    else:
        print_table(results)
    return 0
