"""``conveyor soak`` (``make soak``; not in CI): a long run at a steady rate that checks nothing is lost,
nothing finishes twice and no service's memory grows.

Each run starts a stack (2 receptionists, 2 handlers, time scale 0) and submits book exports through the
gateway at a fixed rate for ``duration_s``, then waits for every accepted job to end. The embedded run
(SQLite everywhere) does only that, so the services' memory can be compared from the end of the warm-up to
the end. The distributed run (registry and logs on PostgreSQL, queues on Redis, with two registries and
two schedulers) also SIGKILLs a random service every ``kill_every_s``; the launcher restarts it.

It prints, per run: jobs accepted, refused (a 503 with ``Retry-After`` or a 429: the client was told),
unanswered (no answer, as while the gateway restarts, or a 502 when the receptionist serving it died: the
client cannot know whether that job was taken, and an Idempotency-Key makes its retry safe), finished, lost (accepted but never in a final
state: must be 0), finished twice (a job with two ``finished`` events in the registry's history: must be
0), run again after a crash (delivered more than once: allowed, the lease moved on), and every service's
RSS after the warm-up and at the end (the embedded run must stay within 20%).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shared.bench import _all_jobs
from shared.bench_backends import Servers, distributed, environment
from shared.bench_data import memory_kb
from shared.launcher import Launcher
from shared.plan import Options
from shared.table import table

BODIES = ({"type": "epub"}, {"type": "pdf"})
FINAL = ("finished", "failed", "cancelled")
#: Memory may grow this much after the warm-up in a run without kills.
RSS_GROWTH = 0.20


@dataclass
class SoakOptions:
    duration_s: float = 600.0
    #: Jobs a second; None: half of the last ``make bench`` throughput (bench-results.json), else 200.
    rate: float | None = None
    kill_every_s: float = 30.0
    warmup_s: float = 60.0
    distributed: bool = True
    embedded: bool = True
    port_base: int = 19080
    servers: Servers = field(default_factory=Servers)
    seed: int | None = None

    def rate_per_s(self) -> float:
        if self.rate is not None:
            return self.rate
        with contextlib.suppress(OSError, KeyError, ValueError, TypeError):
            last = json.loads(Path("bench-results.json").read_text())
            peak = float((last.get("median") or last)["throughput"]["completed_per_s"])  # the runs' median
            if peak > 0:
                return round(peak / 2, 1)
        return 200.0


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    unanswered: int = 0
    #: The statuses of the unanswered ones (0: no answer at all).
    statuses: Counter[int] = field(default_factory=Counter)
    kills: list[str] = field(default_factory=list)


async def _submit(session: aiohttp.ClientSession, gateway: str, rate: float, duration_s: float,
                  tally: Tally) -> None:
    """Book exports at ``rate`` a second for ``duration_s``, each on its own schedule (a slow answer does
    not slow the rate), at most 256 waiting for their answers."""
    room = asyncio.Semaphore(256)
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        try:
            async with session.post(gateway + "/exports", json={"bookId": f"soak-{n}", **BODIES[n % 2]},
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.json(content_type=None)
                if resp.status in (200, 201):  # 200: the registry had it already (a failed-over retry of its registration)
                    tally.accepted.append(str(body["id"]))
                elif resp.status in (429, 503) and "Retry-After" in resp.headers:
                    tally.refused += 1
                else:
                    tally.unanswered += 1
                    tally.statuses[resp.status] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError):
            tally.unanswered += 1
            tally.statuses[0] += 1
        finally:
            room.release()

    n = 0
    while time.monotonic() - started < duration_s:
        due = started + n / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        await room.acquire()
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)


async def _chaos(launcher: Launcher, every_s: float, stop: asyncio.Event, tally: Tally, rng: random.Random) -> None:
    """SIGKILL a random running service every ``every_s`` until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
            return
        running = [svc for svc in launcher.services if svc.process is not None and svc.process.returncode is None
                   and not svc.standby]
        victim = rng.choice(running)
        with contextlib.suppress(ProcessLookupError):
            victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        tally.kills.append(victim.name)
        print(f"  SIGKILL {victim.name}", flush=True)


async def _finished_twice(session: aiohttp.ClientSession, registry: str, headers: dict[str, str]) -> int:
    """Jobs with more than one ``finished`` event in the registry's whole history."""
    finished: Counter[str] = Counter()
    after = 0
    while True:
        async with session.get(registry + "/events", params={"after": str(after), "limit": "1000"},
                               headers=headers) as resp:
            page = await resp.json()
        for event in page["items"]:
            if event["state"] == "finished" and event["previous_state"] != "finished":
                finished[event["job_id"]] += 1
        if not page["items"]:
            return sum(1 for n in finished.values() if n > 1)
        after = page["items"][-1]["seq"]


def _rss(launcher: Launcher) -> dict[str, tuple[int, int | None]]:
    """Each running service's RSS in kB, with its pid (a restarted service has another)."""
    return {svc.name: (memory_kb(svc.process.pid, "VmRSS"), svc.process.pid) for svc in launcher.services
            if svc.process is not None and svc.process.returncode is None}


async def soak_run(opts: SoakOptions, name: str, port_base: int, *, registries: int = 1, schedulers: int = 1,
                   env: dict[str, str] | None = None, kills: bool = False) -> dict[str, Any]:
    rate = opts.rate_per_s()
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory(prefix="conveyor-soak-") as tmp:
        extra = {"registries": registries, "schedulers": schedulers} if registries > 1 or schedulers > 1 else {}
        launcher = Launcher(Options(receptionists=2, handlers=2, time_scale=0.0, data_dir=Path(tmp),
                                    port_base=port_base, rate_limit_per_s=0.0, **extra))
        print(f"{name}: {rate:g} jobs/s for {opts.duration_s:g}s"
              + (f", a random service SIGKILLed every {opts.kill_every_s:g}s" if kills else ""), flush=True)
        try:
            with environment(env or {}):
                await launcher.start()
            token = (Path(tmp) / "service_token").read_text().strip()
            headers = {"X-Service-Token": token}
            registry = next(svc.url for svc in launcher.services if svc.module == "registry")
            gateway = f"http://127.0.0.1:{port_base}"
            tally = Tally()
            stop = asyncio.Event()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
                submitting = asyncio.create_task(_submit(session, gateway, rate, opts.duration_s, tally))
                chaos = asyncio.create_task(_chaos(launcher, opts.kill_every_s, stop, tally, rng)) if kills else None
                await asyncio.sleep(min(opts.warmup_s, opts.duration_s / 2))
                rss_start = _rss(launcher)
                await submitting
                stop.set()
                if chaos is not None:
                    await chaos
                rss_end = _rss(launcher)
                ended = await _wait_ended(session, registry, headers, set(tally.accepted), timeout_s=300)
                jobs = {job["id"]: job for job in await _all_jobs(session, registry, headers)}
                twice = await _finished_twice(session, registry, headers)
        finally:
            await launcher.stop()
    accepted = set(tally.accepted)
    lost = [job_id for job_id in accepted if jobs.get(job_id, {}).get("state") not in FINAL]
    memory = {}
    for service, (kb, pid) in sorted(rss_start.items()):
        end_kb, end_pid = rss_end.get(service, (0, None))
        same = end_pid == pid
        memory[service] = {"start_mb": round(kb / 1024, 1), "end_mb": round(end_kb / 1024, 1),
                           "growth": round(end_kb / kb - 1, 3) if same and kb else None,
                           "restarted": not same}
    flat = all(m["growth"] is None or m["growth"] <= RSS_GROWTH for m in memory.values())
    states = Counter(jobs[job_id]["state"] for job_id in accepted if job_id in jobs)
    result = {
        "rate_per_s": rate, "duration_s": opts.duration_s, "registries": registries, "schedulers": schedulers,
        "accepted": len(accepted), "refused": tally.refused, "unanswered": tally.unanswered,
        "unanswered_by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "finished": states.get("finished", 0), "failed": states.get("failed", 0), "lost": len(lost),
        "finished_twice": twice, "run_again": sum(1 for job_id in accepted if jobs.get(job_id, {}).get("attempt", 0) > 1),
        "ended_in_time": ended, "kills": tally.kills, "memory": memory,
        "ok": not lost and not twice and (kills or flat),
    }
    if lost:
        result["lost_ids"] = lost[:20]
    return result


async def _wait_ended(session: aiohttp.ClientSession, registry: str, headers: dict[str, str], accepted: set[str],
                      timeout_s: float) -> bool:
    """Wait until every accepted job is in a final state: first until the registry counts that many final
    jobs (cheap), then job by job for those still open (a job whose handler was killed waits for its
    lease to expire). False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(registry + "/counts", headers=headers) as resp:
                counts = await resp.json()
            if sum(counts.get(state, 0) for state in FINAL) >= len(accepted):
                break
        await asyncio.sleep(1)
    open_ = {job["id"] for job in await _all_jobs(session, registry, headers)
             if job["id"] in accepted and job["state"] not in FINAL}
    while open_ and time.monotonic() < deadline:
        await asyncio.sleep(1)
        for job_id in list(open_):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{registry}/jobs/{job_id}", headers=headers) as resp:
                    if resp.status == 200 and (await resp.json())["state"] in FINAL:
                        open_.discard(job_id)
    return not open_


def _print(name: str, run: dict[str, Any]) -> None:
    print(f"\n{name}: accepted {run['accepted']}, refused {run['refused']}, unanswered {run['unanswered']}, "
          f"finished {run['finished']}, failed {run['failed']}, LOST {run['lost']}, "
          f"FINISHED TWICE {run['finished_twice']}, run again after a crash {run['run_again']}"
          + (f", kills {len(run['kills'])}" if run["kills"] else ""))
    rows = [("service", "RSS after warm-up MB", "RSS at the end MB", "growth")]
    for service, m in run["memory"].items():
        growth = "restarted" if m["restarted"] else f"{100 * m['growth']:+.0f}%"
        rows.append((service, f"{m['start_mb']:.1f}", f"{m['end_mb']:.1f}", growth))
    print(table(rows), flush=True)


async def soak(opts: SoakOptions, output: Path = Path("soak-results.json")) -> int:
    result: dict[str, Any] = {}
    if opts.embedded:
        result["embedded"] = await soak_run(opts, "embedded", opts.port_base)
        _print("embedded", result["embedded"])
    if opts.distributed:
        async with distributed(("postgres", "redis"), opts.servers, settle_s=0.0) as run:
            result["distributed"] = await soak_run(opts, "distributed (2 registries, 2 schedulers)",
                                                   opts.port_base + 300, registries=2, schedulers=2, env=run.env,
                                                   kills=True)
        _print("distributed", result["distributed"])
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {output}")
    ok = all(run["ok"] for run in result.values())
    if not ok:
        print("NOT every figure is as it should be: see above")
    return 0 if ok else 1
