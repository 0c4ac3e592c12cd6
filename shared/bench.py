"""``conveyor bench``: a real stack at time scale 0, N jobs pushed through the gateway by concurrent
clients, and the figures that matter: submitted and completed jobs/s, and p50/p99 of the submit latency
and of the submit-to-finished latency. Printed, and written as JSON."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from shared.launcher import Launcher, Options

BODIES = [
    ("/exports", {"type": "epub"}),
    ("/exports", {"type": "pdf"}),
    ("/imports", {"type": "word", "url": "https://example.com/book.docx"}),
]


@dataclass
class BenchOptions:
    jobs: int = 5000
    clients: int = 32
    handlers: int = 2
    receptionists: int = 2
    port_base: int = 18080
    output: Path = Path("bench-results.json")
    timeout_s: float = 600.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def _submit_all(session: aiohttp.ClientSession, gateway: str, opts: BenchOptions
                      ) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    failures: list[int] = []
    counter = itertools.count()

    async def client() -> None:
        while (n := next(counter)) < opts.jobs:
            route, body = BODIES[n % len(BODIES)]
            started = time.perf_counter()
            async with session.post(gateway + route, json={"bookId": f"bench-{n}", **body}) as resp:
                await resp.read()
                if resp.status == 201:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures.append(resp.status)

    await asyncio.gather(*(client() for _ in range(opts.clients)))
    return latencies, failures


async def _all_jobs(session: aiohttp.ClientSession, registry: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with session.get(registry + "/jobs", params=params, headers=headers) as resp:
            page = await resp.json()
        jobs.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


async def bench(opts: BenchOptions) -> int:
    Path("var").mkdir(exist_ok=True)
    # Under ./var rather than /tmp: the stack's files live where `make run` keeps them.
    with tempfile.TemporaryDirectory(prefix="bench-", dir="var") as tmp:
        launcher = Launcher(Options(receptionists=opts.receptionists, handlers=opts.handlers, time_scale=0.0,
                                    data_dir=Path(tmp), port_base=opts.port_base, rate_limit_per_s=0.0))
        try:
            print(f"starting a stack: {opts.receptionists} receptionists, {opts.handlers} handlers, time scale 0")
            await launcher.start()
            token = (Path(tmp) / "service_token").read_text().strip()
            headers = {"X-Service-Token": token}
            gateway = f"http://127.0.0.1:{opts.port_base}"
            registry = next(s.url for s in launcher.services if s.name == "registry")
            connector = aiohttp.TCPConnector(limit=opts.clients * 2)
            async with aiohttp.ClientSession(connector=connector) as session:
                print(f"submitting {opts.jobs} jobs from {opts.clients} concurrent clients")
                pids = {svc.name: svc.process.pid for svc in launcher.services if svc.process is not None}
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                started = time.perf_counter()
                latencies, failures = await _submit_all(session, gateway, opts)
                submit_s = time.perf_counter() - started
                deadline = time.monotonic() + opts.timeout_s
                counts: dict[str, int] = {}
                while time.monotonic() < deadline:
                    async with session.get(registry + "/counts", headers=headers) as resp:
                        counts = await resp.json()
                    if counts.get("finished", 0) + counts.get("failed", 0) >= len(latencies):
                        break
                    await asyncio.sleep(0.1)
                cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
                jobs = await _all_jobs(session, registry, headers)
        finally:
            await launcher.stop()

    created = [datetime.fromisoformat(j["created_at"]) for j in jobs]
    finished = [datetime.fromisoformat(j["finished_at"]) for j in jobs if j["state"] == "finished"]
    to_finish = [(datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"])).total_seconds()
                 for j in jobs if j["state"] == "finished"]
    span_s = (max(finished) - min(created)).total_seconds() if finished else float("nan")
    result = {
        "jobs": opts.jobs,
        "clients": opts.clients,
        "handlers": opts.handlers,
        "receptionists": opts.receptionists,
        "accepted": len(latencies),
        "refused": len(failures),
        "finished": len(finished),
        "states": counts,
        "submit_s": round(submit_s, 3),
        "submitted_per_s": round(len(latencies) / submit_s, 1),
        "end_to_end_s": round(span_s, 3),
        "completed_per_s": round(len(finished) / span_s, 1) if finished else 0.0,
        "submit_latency_ms": {"p50": round(percentile(latencies, 0.5) * 1000, 2),
                              "p99": round(percentile(latencies, 0.99) * 1000, 2)},
        "submit_to_finished_ms": {"p50": round(percentile(to_finish, 0.5) * 1000, 2),
                                  "p99": round(percentile(to_finish, 0.99) * 1000, 2)},
        "cpu_s_by_service": cpu,
    }
    opts.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {opts.output}")
    ok = len(finished) == opts.jobs and not failures
    if not ok:
        print("NOT every job finished: see the states above")
    return 0 if ok else 1
