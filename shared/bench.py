"""``conveyor bench``: a real stack at time scale 0, N jobs pushed through the gateway by concurrent
clients, and the figures that matter: submitted and completed jobs/s, and p50/p99 of the submit latency
and of the submit-to-finished latency. Printed, and written as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from shared.bench_backends import (
    SERVERS,
    DistributedRun,
    Servers,
    TransactionCounter,
    distributed,
    environment,
    side_by_side,
)
from shared.bench_client import Submitter
from shared.bench_data import bench_data_store, data_import_phase, export_phase
from shared.bench_machine import machine_phase
from shared.bench_paced import gateway_overhead_phase, paced_phase, requests_per_job, requests_served
from shared.bench_profile import ProfilerMissing, find_py_spy, recording, render_top
from shared.bench_stats import (
    REPEATED,
    ServiceMeter,
    compare,
    cpu_figures,
    cpu_wait_figures,
    medians,
    medians_of,
    percentile,
    summary,
)
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
    #: Where each stack's data dir is made (and deleted after): ./var, where `make run` keeps a stack's
    #: files, unless told otherwise.
    scratch_dir: Path = Path("var")
    output: Path = Path("bench-results.json")
    timeout_s: float = 600.0
    failing_jobs: int = 1000
    fail_probability: float = 0.3
    #: Users in the CSV of the bulk data import phase (0: skip it).
    at_once_tasks: int = 1000
    import_records: int = 1_000_000
    #: Only the ECG memory phase: the receptionist's peak RSS for maximum-size ECGs (see :func:`ecg_memory`).
    ecg_memory: bool = False
    #: The stack's bulk data store (None: a SQLite file in the bench's data dir).
    data_store_url: str | None = None
    #: Distributed backends (``postgres``, ``redis``, ``s3``) for a second run of the same phases after
    #: the embedded one; none: the embedded run alone.
    backends: tuple[str, ...] = ()
    servers: Servers = field(default_factory=Servers)
    #: Wait before each reading of PostgreSQL's transaction count (see :class:`TransactionCounter`).
    stats_settle_s: float = 11.0
    #: Stacks in turn running the throughput, paced and gateway phases (the others run on the first only);
    #: the figures of each and their medians are printed and written.
    runs: int = 1
    #: The paced latency phase: jobs a second and seconds (0 seconds: skip it, and the half-peak one).
    paced_rate: float = 200.0
    paced_s: float = 10.0
    #: Submissions of the gateway overhead phase, each way (0: skip it).
    gateway_requests: int = 2000
    #: Requests of the machine phase that begins each run (0: skip it; :mod:`shared.bench_machine`).
    machine_requests: int = 5000
    #: Every bench's JSON is also kept here, named by its time, for ``--compare``.
    history_dir: Path = Path("var/bench")
    #: An earlier bench's JSON: its medians are printed beside this one's.
    compare: Path | None = None
    #: Where py-spy's samples of each service during the first throughput phase go (None: not recorded;
    #: :mod:`shared.bench_profile`).
    profile_dir: Path | None = None


async def _submit_all(submitter: Submitter, gateway: str, opts: BenchOptions) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    failures: list[int] = []
    counter = itertools.count()

    async def client() -> None:
        while (n := next(counter)) < opts.jobs:
            route, body = BODIES[n % len(BODIES)]
            started = time.perf_counter()
            status, _ = await submitter.post(gateway, route, {"bookId": f"bench-{n}", **body})
            if status == 201:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(status)

    await asyncio.gather(*(client() for _ in range(opts.clients)))
    return latencies, failures


async def _all_jobs(session: aiohttp.ClientSession, registry: str, headers: dict[str, str],
                    kind: str | None = None) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"kind": kind} if kind else {}), **({"cursor": cursor} if cursor else {})}
        async with session.get(registry + "/jobs", params=params, headers=headers) as resp:
            page = await resp.json()
        jobs.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


async def _settled(session: aiohttp.ClientSession, registry: str, headers: dict[str, str], kind: str | None,
                   expected: int, timeout_s: float, polls: list[int] | None = None) -> dict[str, int]:
    """Wait until ``expected`` jobs (of ``kind``) are in a final state; returns the counts by state, and
    appends to ``polls`` one item per time it asked."""
    deadline = time.monotonic() + timeout_s
    params = {"kind": kind} if kind else {}
    while True:
        if polls is not None:
            polls.append(1)
        async with session.get(registry + "/counts", params=params, headers=headers) as resp:
            counts = await resp.json()
        if counts["finished"] + counts["failed"] + counts["cancelled"] >= expected or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


@dataclass
class Target:
    """The running stack the bench talks to."""

    session: aiohttp.ClientSession
    #: The submissions' client (the bench's reads go through ``session``).
    submitter: Submitter
    gateway: str
    registry: str
    scheduler: str
    receptionist: str
    headers: dict[str, str]  # an internal caller's
    #: The handlers' base URLs, for what they say of their batches.
    handlers: tuple[str, ...] = ()
    #: Every internal service's base URL by its name (the gateway's ``/metrics`` is an operator's).
    internal: dict[str, str] = field(default_factory=dict)

    async def sign_in(self, username: str, permissions: tuple[str, ...] = ()) -> dict[str, str]:
        """A user made for the bench (through the registry, as an admin's ``conveyor users add`` makes one)
        signed in at the gateway: the ``Authorization`` header of its token, as a client sends it."""
        password = secrets.token_urlsafe(16)
        async with self.session.post(self.registry + "/users", headers=self.headers, json={
                "username": username, "password": password, "roles": ["user"],
                "permissions": list(permissions)}) as resp:
            assert resp.status == 201, await resp.text()
        async with self.session.post(self.gateway + "/auth/token",
                                     json={"username": username, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            return {"Authorization": "Bearer " + (await resp.json())["access_token"]}


async def throughput_phase(target: Target, opts: BenchOptions, pids: dict[str, int | tuple[int, ...]],
                           counter: TransactionCounter | None = None) -> dict[str, Any]:
    """Book jobs through the gateway: submit and end-to-end throughput and latencies; with a
    ``counter``, PostgreSQL's committed transactions from the first submission until every job ended."""
    xact_before = await counter.read() if counter else 0
    print(f"submitting {opts.jobs} book jobs from {opts.clients} concurrent clients")
    served_before = await requests_served(target)
    meter = ServiceMeter(pids)
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    latencies, failures = await _submit_all(target.submitter, target.gateway, opts)
    client_cpu_s = time.process_time() - client_cpu_before
    submit_s = time.perf_counter() - started
    polls: list[int] = []
    counts = await _settled(target.session, target.registry, target.headers, None, len(latencies), opts.timeout_s,
                            polls)
    cpu_s, wait = meter.since()
    cpu = {name: round(v, 2) for name, v in cpu_s.items()}
    # The bench's own reads of the counts are not the jobs'.
    served = requests_per_job(served_before, await requests_served(target), len(latencies), {"registry": len(polls)})
    batching = await _handler_batching(target)
    xacts = await counter.read() - xact_before if counter else None
    jobs = await _all_jobs(target.session, target.registry, target.headers)
    created = [datetime.fromisoformat(j["created_at"]) for j in jobs]
    finished = [datetime.fromisoformat(j["finished_at"]) for j in jobs if j["state"] == "finished"]
    to_finish = [(datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"])).total_seconds()
                 for j in jobs if j["state"] == "finished"]
    span_s = (max(finished) - min(created)).total_seconds() if finished else float("nan")
    return {
        "jobs": opts.jobs,
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
        # Per job, over the accepted ones: each service, and the sum of ours; apart, the database and queue
        # servers of this machine the run used (whole processes: another client's work on them would count too).
        **cpu_figures(cpu, len(latencies), SERVERS),
        **cpu_wait_figures(wait, len(latencies), SERVERS),
        # The bench's own, submitting (it shares the machine's cores with the stack: shared/bench_client.py).
        "client_cpu_ms_per_job": round(1000 * client_cpu_s / max(1, len(latencies)), 3),
        # How the handlers' calls grouped jobs (since they started): dequeues, reports and acks.
        "handler_batching": batching,
        # HTTP requests each internal service answered, per job (the gateway relays one per job): what a
        # job costs in hops, the thing batching divides.
        "requests_per_job_by_service": served,
        **({"server_cpu_ms_per_job": round(1000 * sum(v for k, v in cpu.items() if k in SERVERS)
                                           / max(1, len(latencies)), 3)} if SERVERS & set(cpu) else {}),
        # The bench's own polls of the registry's counts are one read transaction each: not the jobs'.
        **({"pg_transactions": xacts, "pg_transactions_of_the_bench": len(polls),
            "pg_transactions_per_job": round((xacts - len(polls)) / max(1, len(latencies)), 3)}
           if xacts is not None else {}),
        "ok": len(finished) == opts.jobs and not failures,
    }


async def _handler_batching(target: Target) -> dict[str, float]:
    """Jobs per dequeue, per report request and per ack request, over every handler."""
    polls = dequeued = reports = reported = acks = acked = 0
    for url in target.handlers:
        async with target.session.get(url + "/status", headers=target.headers) as resp:
            status = await resp.json()
        polls += status["polls"]
        dequeued += status["dequeued"]
        reports += status["batches"]["reports"]["requests"]
        reported += status["batches"]["reports"]["items"]
        acks += status["batches"]["acks"]["requests"]
        acked += status["batches"]["acks"]["items"]
    return {"dequeues": polls, "jobs_per_dequeue": round(dequeued / max(polls, 1), 2),
            "reports_per_request": round(reported / max(reports, 1), 2),
            "acks_per_request": round(acked / max(acks, 1), 2)}


async def failing_phase(target: Target, opts: BenchOptions) -> dict[str, Any]:
    """Tasks that fail at random: how many retried, died (dead letters) and were redriven, and whether
    every count adds up: each task ends finished or failed, each failed one is a dead letter."""
    n = opts.failing_jobs
    print(f"submitting {n} tasks that fail with probability {opts.fail_probability}")
    body = {"duration_s": 0, "fail_probability": opts.fail_probability}

    async def submit(i: int) -> bool:
        async with target.session.post(target.gateway + "/tasks", json={"description": f"bench {i}", **body}) as r:
            return r.status == 201

    accepted = sum(await asyncio.gather(*(submit(i) for i in range(n))))
    counts = await _settled(target.session, target.registry, target.headers, "task", accepted, opts.timeout_s)
    tasks = await _all_jobs(target.session, target.registry, target.headers, "task")
    retried = sum(1 for t in tasks if t["attempt"] > 1)
    failed_attempts = sum(len(t["errors"]) for t in tasks)
    async with target.session.get(target.scheduler + "/status", headers=target.headers) as resp:
        dead_letters = (await resp.json())["queues"].get("task", {}).get("dead", 0)
    died = counts["failed"]
    print(f"{died} died; redriving every dead letter")
    async with target.session.post(target.receptionist + "/dead/requeue", json={"all": True, "queue": "task"},
                                   headers={**target.headers, "X-Conveyor-Roles": "operator"}) as resp:
        redriven = len((await resp.json())["requeued"])
    after = await _settled(target.session, target.registry, target.headers, "task", accepted, opts.timeout_s)
    async with target.session.get(target.scheduler + "/status", headers=target.headers) as resp:
        dead_after = (await resp.json())["queues"].get("task", {}).get("dead", 0)
    adds_up = (counts["finished"] + counts["failed"] == accepted == after["finished"] + after["failed"]
               and dead_letters == died and redriven == died and dead_after == after["failed"])
    return {
        "tasks": n,
        "fail_probability": opts.fail_probability,
        "accepted": accepted,
        "retried": retried,
        "failed_attempts": failed_attempts,
        "died": died,
        "dead_letters": dead_letters,
        "redriven": redriven,
        "after_redrive": {"finished": after["finished"], "failed": after["failed"], "dead_letters": dead_after},
        "totals_add_up": adds_up,
        "ok": adds_up,
    }


async def at_once_phase(opts: BenchOptions) -> dict[str, Any]:
    """A thousand one-second tasks at once, on a stack of its own at time scale 1: they should take about
    a second per ``concurrency`` tasks per handler, not one after the other. Reports the time from the
    first registration to the last finish, against that ideal."""
    n, duration_s = opts.at_once_tasks, 1.0
    concurrency = int(os.environ.get("HANDLER_CONCURRENCY", "16"))
    slots = opts.handlers * concurrency
    print(f"submitting {n} tasks of {duration_s:g}s at once ({opts.handlers} handlers x {concurrency} slots)")
    with tempfile.TemporaryDirectory(prefix="bench-", dir=opts.scratch_dir) as tmp:
        launcher = Launcher(Options(receptionists=opts.receptionists, handlers=opts.handlers, time_scale=1.0,
                                    data_dir=Path(tmp), port_base=opts.port_base + 100, rate_limit_per_s=0.0))
        try:
            await launcher.start()
            token = (Path(tmp) / "service_token").read_text().strip()
            registry = next(svc.url for svc in launcher.services if svc.name == "registry")
            gateway = f"http://127.0.0.1:{opts.port_base + 100}"
            headers = {"X-Service-Token": token}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
                body = {"duration_s": duration_s, "fail_probability": 0}

                async def submit(i: int) -> bool:
                    async with session.post(gateway + "/tasks", json={"description": f"at once {i}", **body}) as r:
                        return r.status == 201

                accepted = sum(await asyncio.gather(*(submit(i) for i in range(n))))
                counts = await _settled(session, registry, headers, "task", accepted, opts.timeout_s)
                tasks = await _all_jobs(session, registry, headers, "task")
        finally:
            await launcher.stop()
    done = [t for t in tasks if t["state"] == "finished"]
    span_s = ((max(datetime.fromisoformat(t["finished_at"]) for t in done)
               - min(datetime.fromisoformat(t["created_at"]) for t in tasks)).total_seconds() if done else 0.0)
    ideal_s = -(-n // slots) * duration_s
    return {"tasks": n, "task_s": duration_s, "slots": slots, "accepted": accepted, "finished": counts["finished"],
            "elapsed_s": round(span_s, 2), "ideal_s": ideal_s, "vs_ideal": round(span_s / ideal_s, 2),
            "one_after_the_other_s": n * duration_s, "ok": counts["finished"] == n}


async def paced_phases(target: Target, opts: BenchOptions, pids: dict[str, int | tuple[int, ...]],
                       throughput: dict[str, Any] | None) -> dict[str, Any]:
    """The paced latency phase at ``paced_rate``, again at half of the throughput phase's completed jobs/s,
    and the gateway overhead phase: those asked for."""
    result: dict[str, Any] = {}
    if opts.paced_s > 0:
        result["paced"] = await paced_phase(target, pids, opts.paced_rate, opts.paced_s, opts.timeout_s, "paced")
        peak = (throughput or {}).get("completed_per_s") or 0.0
        if peak > 0:
            result["paced_half_peak"] = await paced_phase(target, pids, peak / 2, opts.paced_s, opts.timeout_s,
                                                          "paced-half-peak")
    if opts.gateway_requests > 0:
        result["gateway_overhead"] = await gateway_overhead_phase(target, pids, opts.gateway_requests, opts.clients)
    return result


async def stack_phases(opts: BenchOptions, port_base: int, run: DistributedRun | None = None,
                       first: bool = True, scratch: contextlib.ExitStack | None = None) -> dict[str, Any]:
    """A stack on the embedded default, or on the backends of ``run``, and the phases asked for on it:
    throughput, paced latency and gateway overhead; on the ``first`` run also failures, bulk import and
    export. The stack's directory is deleted when ``scratch`` closes (else at once, after the stack)."""
    # The machine's speed first, with nothing of the stack running beside it.
    machine = (await machine_phase(requests=opts.machine_requests, clients=opts.clients)
               if opts.machine_requests > 0 and run is None else None)
    # Under ./var (opts.scratch_dir) by default: the stack's files live where `make run` keeps them.
    async with contextlib.AsyncExitStack() as stack:
        data_store_url = await stack.enter_async_context(bench_data_store(opts.data_store_url))
        tmp = (scratch or stack).enter_context(tempfile.TemporaryDirectory(prefix="bench-", dir=opts.scratch_dir))
        launcher = Launcher(Options(receptionists=opts.receptionists, handlers=opts.handlers, time_scale=0.0,
                                    data_dir=Path(tmp), port_base=port_base, rate_limit_per_s=0.0,
                                    data_store_url=data_store_url))
        try:
            where = ", ".join(run.describe["backends"]) if run else "the embedded default"
            print(f"starting a stack on {where}: {opts.receptionists} receptionists, {opts.handlers} handlers, "
                  "time scale 0")
            with environment(run.env if run else {}):
                await launcher.start()
            token = (Path(tmp) / "service_token").read_text().strip()
            urls = {svc.name: svc.url for svc in launcher.services}
            pids: dict[str, int | tuple[int, ...]] = {
                svc.name: svc.process.pid for svc in launcher.services if svc.process is not None}
            pids.update(run.server_pids() if run else {})
            connector = aiohttp.TCPConnector(limit=opts.clients * 2)
            submitter = Submitter(opts.clients * 2)
            stack.push_async_callback(submitter.close)
            async with aiohttp.ClientSession(connector=connector) as session:
                registry = next(svc.url for svc in launcher.services if svc.module == "registry")
                scheduler = next(svc.url for svc in launcher.services if svc.module == "scheduler")
                target = Target(session, submitter, f"http://127.0.0.1:{port_base}", registry, scheduler,
                                urls["receptionist-1"], {"X-Service-Token": token},
                                tuple(svc.url for svc in launcher.services if svc.module == "handler"),
                                {name: url for name, url in urls.items() if name != "gateway"})
                result: dict[str, Any] = {"handlers": opts.handlers, "receptionists": opts.receptionists,
                                          "clients": opts.clients,
                                          "data_store": (data_store_url or "sqlite").split("://", 1)[0]}
                if machine is not None:
                    result["machine"] = machine
                if run:
                    result.update(run.describe)
                if opts.jobs:
                    profile_dir = opts.profile_dir if first and run is None else None
                    services = {name: pid for name, pid in pids.items() if isinstance(pid, int)}
                    async with (recording(profile_dir, services) if profile_dir is not None
                                else contextlib.nullcontext()) as profile:
                        result["throughput"] = await throughput_phase(target, opts, pids,
                                                                      run.counter if run else None)
                    if profile is not None:
                        result["profile"] = profile
                result.update(await paced_phases(target, opts, pids, result.get("throughput")))
                if not first:
                    return result
                if opts.failing_jobs:
                    result["failing"] = await failing_phase(target, opts)
                if opts.import_records:
                    result["data_import"] = await data_import_phase(target, opts, pids, data_store_url)
                    result["data_export"] = await export_phase(target, result["data_import"]["imported"])
        finally:
            await launcher.stop()
    return result


PHASES = (*REPEATED, "failing", "data_import", "data_export", "at_once")


async def bench(opts: BenchOptions) -> int:
    if opts.profile_dir is not None:
        try:
            find_py_spy()
        except ProfilerMissing as exc:
            print(exc, file=sys.stderr)
            return 2
    Path("var").mkdir(exist_ok=True)
    opts.scratch_dir.mkdir(parents=True, exist_ok=True)
    if opts.ecg_memory:
        from shared.bench_ecg import ecg_memory_phase

        result = {"ecg_memory": await ecg_memory_phase(opts)}
        print(json.dumps(result, indent=2))
        return 0 if result["ecg_memory"]["ok"] else 1
    # Every run's files are deleted after the last run: on a file system without a journal (ext4 without
    # one, as on some VMs), creating a file right after many were deleted scans past the fresh free inodes,
    # so a run would pay for the deletion of the previous run's artifacts in its handlers' CPU.
    with contextlib.ExitStack() as scratch:
        result = await stack_phases(opts, opts.port_base, scratch=scratch)
        runs = [result]
        for i in range(1, opts.runs):
            print(f"run {i + 1} of {opts.runs}")
            runs.append(await stack_phases(opts, opts.port_base, first=False, scratch=scratch))
    each = [{phase: run[phase] for phase in REPEATED if phase in run} for run in runs]
    result["runs"] = each
    result["median"] = medians(each)
    if opts.backends and opts.jobs:
        async with distributed(opts.backends, opts.servers, opts.stats_settle_s) as run:
            other = result["distributed"] = await stack_phases(opts, opts.port_base + 300, run)
        runs.append(other)
        embedded_per_s = result["throughput"]["completed_per_s"]
        result["comparison"] = {
            "embedded_completed_per_s": embedded_per_s,
            "distributed_completed_per_s": other["throughput"]["completed_per_s"],
            "ratio": round(other["throughput"]["completed_per_s"] / embedded_per_s, 3) if embedded_per_s else 0.0,
            **({"pg_transactions_per_job": other["throughput"]["pg_transactions_per_job"]}
               if "pg_transactions_per_job" in other["throughput"] else {}),
        }

    if opts.at_once_tasks:
        result["at_once"] = await at_once_phase(opts)
    text = json.dumps(result, indent=2) + "\n"
    opts.output.write_text(text)
    opts.history_dir.mkdir(parents=True, exist_ok=True)
    kept = opts.history_dir / f"{datetime.now().strftime('%Y%m%dT%H%M%S')}.json"
    kept.write_text(text)
    print(text, end="")
    if "distributed" in result:
        print(side_by_side(result["throughput"], result["distributed"]["throughput"]))
    print(f"\nthe embedded stack, {len(each)} run(s):\n{summary(each, result['median'])}")
    if opts.profile_dir is not None and "profile" in result:
        print(f"\nwhere each service's samples were during the first throughput phase (py-spy; every function, "
              f"and under what, in {opts.profile_dir / 'summary.txt'}):\n{render_top(result['profile'], 5)}")
    if opts.compare is not None:
        print(f"\nagainst {opts.compare}:\n{compare(medians_of(json.loads(opts.compare.read_text())), result['median'])}")
    print(f"written to {opts.output} and {kept}")
    ok = all(run.get(phase, {"ok": True})["ok"] for run in runs for phase in PHASES)
    if not ok:
        print("NOT every figure is as it should be: see above")
    return 0 if ok else 1
