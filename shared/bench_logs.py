"""``conveyor bench-logs``: how long the logs page's queries take on a large SQLite log store.

It fills a SQLite log file (``--lines``, default 1,000,000) straight in the store's own schema, in bulk
(the store opens the file first, so the tables, indexes and triggers are the store's: the trigram index
fills as the lines go in), with a dozen services, most lines at ``info``, a job id on most, and messages
from a few templates: some words in nearly every line, some in 1 %, one in 1 in 100,000, one in none.
Then it times every query the logs page makes (a page of 201 lines, as the receptionist asks for 200),
through the store's own :meth:`query`: each filter, and the text filter ``q`` with a rare, a middling, a
common and an absent word, alone and with another filter, each once with the trigram index ("indexed")
and once as ``LIKE`` ("LIKE": as before the index). Each query runs ``--repeat`` times; the median and the
worst are printed in milliseconds (``tests/logging_service/test_log_text_search.py`` checks the plans).
A file that already holds the lines is reused (``--fresh`` to fill it again).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from logging_service.store import LogFilter, from_us
from logging_service.store.sqlite import SqliteLogStore
from shared.bench_registry import time_query

SERVICES = ["gateway", "receptionist-1", "receptionist-2", "registry", "scheduler", "logging_service",
            *[f"handler-{n}" for n in range(1, 7)]]
LEVELS = ["debug"] * 20 + ["info"] * 70 + ["warning"] * 7 + ["error"] * 3
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
PAGE = 201
RARE, MIDDLING, COMMON, ABSENT, SHORT = "quota exceeded", "timed out", "finished", "no such words", "ms"


def _message(rng: random.Random, i: int, job: str) -> str:
    if i % 100_000 == 50_000:
        return f"disk quota exceeded on volume vol-{rng.randrange(100)}"
    roll = rng.random()
    if roll < 0.01:
        return f"upload of job {job} timed out after {rng.randrange(10, 60)} s; retrying"
    if roll < 0.45:
        return f"job {job} finished in {rng.randrange(1, 5000)} ms"
    if roll < 0.75:
        return f"GET /jobs/{job} 200 in {rng.randrange(1, 90)} ms"
    return f"lease renewed for job {job} (attempt {rng.randrange(1, 4)})"


def fill(path: Path, lines: int, *, seed: int = 11, batch: int = 20_000, start: int = 0) -> None:
    """``lines`` more lines, one every 10 ms or so (a little out of order, as shipped batches are)."""
    rng = random.Random(seed + start)
    jobs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(max(lines // 20, 1))]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    (first,) = db.execute("SELECT last FROM log_seq").fetchone()
    # The store adds a line's text to its index itself (no trigger does): so does this fill.
    text_indexed = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'logs_text'").fetchone() is not None
    for offset in range(0, lines, batch):
        rows = []
        for i in range(start + offset, start + min(offset + batch, lines)):
            job = rng.choice(jobs)
            meta = {"job_id": job} if rng.random() < 0.8 else {}
            ts = T0_US + i * 10_000 - rng.randrange(0, 2_000_000)  # shipped up to 2 s late
            rows.append((first + i - start + 1, ts, rng.choice(SERVICES), rng.choice(LEVELS), _message(rng, i, job),
                         orjson.dumps(meta).decode(), meta.get("job_id"), None))
        db.executemany("INSERT INTO logs (id, ts_us, service, level, message, meta, job_id, request_id)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if text_indexed:
            db.executemany("INSERT INTO logs_text (rowid, message) VALUES (?, ?)", [(r[0], r[4]) for r in rows])
        print(f"\r  {offset + len(rows):,} lines", end="", file=sys.stderr, flush=True)
    db.execute("UPDATE log_seq SET last = last + ?", (lines,))
    db.execute("COMMIT")
    db.close()
    print(file=sys.stderr)


def queries(store: SqliteLogStore, db: sqlite3.Connection) -> dict[str, tuple[LogFilter, bool]]:
    """Each query of the logs page by a name: its filter, and whether it has a ``q`` (timed both ways)."""
    (job,) = db.execute("SELECT job_id FROM logs WHERE job_id IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
    (middle,) = db.execute("SELECT ts_us FROM logs ORDER BY ts_us LIMIT 1 OFFSET (SELECT count(*) / 2 FROM logs)"
                           ).fetchone()

    def page(**kw: Any) -> LogFilter:
        return LogFilter(limit=PAGE, **kw)

    return {
        "all": (page(), False),
        "service": (page(service="handler-3"), False),
        "min_level=error": (page(levels=frozenset({"error", "critical"})), False),
        "job_id": (page(job_id=job), False),
        "until (middle)": (page(until=from_us(middle)), False),
        f"q rare ({RARE!r}, 10 lines)": (page(text=RARE), True),
        f"q middling ({MIDDLING!r}, 1 %)": (page(text=MIDDLING), True),
        f"q common ({COMMON!r}, 44 %)": (page(text=COMMON), True),
        f"q absent ({ABSENT!r})": (page(text=ABSENT), True),
        f"q short ({SHORT!r}: LIKE either way)": (page(text=SHORT), True),
        "q rare + service": (page(text=RARE, service="handler-3"), True),
        "q middling + min_level=error": (page(text=MIDDLING, levels=frozenset({"error", "critical"})), True),
        "q common + job_id": (page(text=COMMON, job_id=job), True),
        "q middling + until (middle)": (page(text=MIDDLING, until=from_us(middle)), True),
    }


async def run(path: Path, lines: int, repeat: int, fresh: bool) -> list[dict[str, Any]]:
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SqliteLogStore(str(path))
    await store.open()  # the store's schema, indexes and triggers
    try:
        db = store._db
        assert db is not None
        have = db.execute("SELECT count(*) FROM logs").fetchone()[0]
        if have < lines:
            print(f"filling {path} with {lines - have:,} lines", file=sys.stderr)
            fill(path, lines - have, start=have)
        results = []
        indexed = store.text_indexed
        for name, (where, has_text) in queries(store, db).items():
            for way in ((True, False) if has_text and indexed else (indexed,)):
                store.text_indexed = way
                took = await time_query(lambda where=where: store.query(where), repeat)
                label = name if not has_text else f"{name}, {'indexed' if way else 'LIKE'}"
                results.append({"query": label, "median_ms": round(statistics.median(took), 2),
                                "max_ms": round(max(took), 2)})
            store.text_indexed = indexed
        return results
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor bench-logs", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=Path("var/bench-logs.db"), help="the SQLite file")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="fill the file again from nothing")
    parser.add_argument("--json", dest="as_json", action="store_true")


def command(args: argparse.Namespace) -> int:
    args.db.parent.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args.db, args.lines, args.repeat, args.fresh))
    if args.as_json:
        print(orjson.dumps(results).decode())
    else:
        width = max(len(r["query"]) for r in results)
        print(f"{'query':<{width}}  median ms  max ms")
        for r in results:
            print(f"{r['query']:<{width}}  {r['median_ms']:>9.2f}  {r['max_ms']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
