"""The CPU the embedded queue store spends to carry jobs through a queue, on its own:
``python -m scheduler.bench_store [--jobs N] [--enqueue-batch 8] [--lease-batch 16] [--json]``.

A fresh SQLite file takes N jobs in enqueues of ``--enqueue-batch`` (as a receptionist's batches arrive),
then hands them out in dequeues of ``--lease-batch`` and acks each dequeue's jobs in one ``ack_many`` (as a
handler does), until every job is acked. It prints the store's CPU a job, every thread of this process
(the checkpoint thread's too), and the part each of the three calls took. No HTTP and no other service:
the store alone, what a change to its statements or indexes moves (``conveyor bench-registry --writes`` is
the registry's). Compare two builds in rounds that alternate which runs first (see the README's
benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from scheduler.store.sqlite import SqliteQueueStore
from shared.contract import QueuedJob
from shared.ids import uuid7

QUEUE = "export"


async def run(jobs: int, enqueue_batch: int = 8, lease_batch: int = 16) -> dict[str, Any]:
    """Carry ``jobs`` jobs through one queue of a fresh file: CPU ms a job, in all and by call."""
    specs = [QueuedJob(id=uuid7(), kind="export", type="epub", payload={"bookId": f"b{i}", "type": "epub"},
                       owner="bench") for i in range(jobs)]
    now = datetime.now(timezone.utc)
    cpu_s = {"enqueue": 0.0, "dequeue": 0.0, "ack": 0.0}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-queue-") as tmp:
        store = SqliteQueueStore(str(Path(tmp) / "scheduler.db"))
        await store.open()
        try:
            started = time.process_time()
            for i in range(0, jobs, enqueue_batch):
                await store.enqueue(QUEUE, specs[i:i + enqueue_batch], now)
            cpu_s["enqueue"] = time.process_time() - started
            acked = 0
            while acked < jobs:
                mark = time.process_time()
                deliveries = await store.dequeue([QUEUE], lease_batch, 60.0, now)
                between = time.process_time()
                if not deliveries:
                    raise RuntimeError(f"the queue ran dry after {acked} of {jobs} jobs")
                taken = await store.ack_many([(d.job.id, d.lease_id) for d in deliveries], now)
                cpu_s["dequeue"] += between - mark
                cpu_s["ack"] += time.process_time() - between
                acked += sum(taken)
            total_s = time.process_time() - started
            if await store.lengths() != {QUEUE: 0}:
                raise RuntimeError("jobs were left in the queue")
        finally:
            await store.close()
    return {"jobs": jobs, "enqueue_batch": enqueue_batch, "lease_batch": lease_batch,
            "cpu_ms_per_job": round(1000 * total_s / jobs, 4),
            "by_call_ms_per_job": {name: round(1000 * s / jobs, 4) for name, s in cpu_s.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scheduler.bench_store",
                                     description="The CPU the embedded queue store spends a job, on its own.")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--enqueue-batch", type=int, default=8, help="jobs an enqueue")
    parser.add_argument("--lease-batch", type=int, default=16, help="jobs a dequeue, acked together")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.enqueue_batch, args.lease_batch) < 1:
        parser.error("--jobs, --enqueue-batch and --lease-batch must be at least 1")
    result = asyncio.run(run(args.jobs, args.enqueue_batch, args.lease_batch))
    if args.json:
        print(orjson.dumps(result).decode())
        return
    calls = result["by_call_ms_per_job"]
    print(f"{result['jobs']:,} jobs, enqueues of {result['enqueue_batch']}, dequeues and acks of "
          f"{result['lease_batch']}: {result['cpu_ms_per_job']:.4f} ms of CPU a job (enqueue {calls['enqueue']:.4f}, "
          f"dequeue {calls['dequeue']:.4f}, ack {calls['ack']:.4f})")


if __name__ == "__main__":
    main()
