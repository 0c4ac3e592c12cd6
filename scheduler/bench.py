"""Throughput of a real scheduler process: ``python -m scheduler.bench [--store URL] [--jobs N] ...``.

Starts ``python -m scheduler`` on a free port, then producers enqueue one job a request (as receptionists
do) while consumers long-poll batches and ack each job on its own (as handlers do). Prints one JSON line:
jobs a second from the first enqueue to the last ack, and the request latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import aiohttp
import orjson


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_healthy(session: aiohttp.ClientSession, url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with session.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler at {url} did not become healthy")
        await asyncio.sleep(0.1)


async def _drive(url: str, jobs: int, producers: int, consumers: int, batch: int) -> dict[str, Any]:
    queue = "bench"
    todo = [{"id": str(uuid.uuid4()), "kind": "task", "type": "bench", "owner": "bench", "payload": {"i": i}}
            for i in range(jobs)]
    enqueue_ms: list[float] = []
    ack_ms: list[float] = []
    acked = 0
    done = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=producers + consumers * batch + 4)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_healthy(session, url)

        async def produce(share: list[dict[str, Any]]) -> None:
            for job in share:
                started = time.perf_counter()
                async with session.post(f"{url}/queues/{queue}/jobs", data=orjson.dumps({"jobs": [job]}),
                                        headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                enqueue_ms.append((time.perf_counter() - started) * 1000)

        async def ack(delivery: dict[str, Any]) -> None:
            nonlocal acked
            started = time.perf_counter()
            body = orjson.dumps({"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]})
            async with session.post(f"{url}/leases/ack", data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            ack_ms.append((time.perf_counter() - started) * 1000)
            acked += 1
            if acked == jobs:
                done.set()

        async def consume() -> None:
            body = orjson.dumps({"queues": [queue], "max": batch, "wait_s": 1})
            while not done.is_set():
                async with session.post(f"{url}/dequeue", data=body, headers=headers) as resp:
                    deliveries = orjson.loads(await resp.read())["deliveries"]
                await asyncio.gather(*(ack(d) for d in deliveries))

        started = time.perf_counter()
        workers = [asyncio.create_task(consume()) for _ in range(consumers)]
        await asyncio.gather(*(produce(todo[n::producers]) for n in range(producers)))
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed_s = time.perf_counter() - started
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def pct(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 2)

    return {"jobs": jobs, "seconds": round(elapsed_s, 2), "jobs_per_s": round(jobs / elapsed_s, 1),
            "enqueue_ms_p50": pct(enqueue_ms, 50), "enqueue_ms_p99": pct(enqueue_ms, 99),
            "ack_ms_p50": pct(ack_ms, 50), "ack_ms_p99": pct(ack_ms, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="", help="store URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20, help="max jobs a dequeue")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"sqlite:///{tmp}/bench.db"
        port = _free_port()
        env = {**os.environ, "SCHEDULER_PORT": str(port), "SCHEDULER_STORE_URL": store,
               "SCHEDULER_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "scheduler"], env=env)
        try:
            result = asyncio.run(_drive(f"http://127.0.0.1:{port}", args.jobs, args.producers, args.consumers,
                                        args.batch))
        finally:
            server.terminate()
            server.wait(timeout=15)
    print(orjson.dumps({**vars(args), "store": store.split("?", 1)[0], **result}).decode())


if __name__ == "__main__":
    main()
