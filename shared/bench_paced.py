"""The bench's phases at a fixed rate, beside the throughput phase of :mod:`shared.bench`:

- **Paced latency.** Book jobs submitted at a fixed rate for a fixed time, open loop: submission ``i`` leaves
  at ``start + i / rate`` by the clock, whether or not the earlier ones were answered, so a slow answer
  does not hold back the next submissions (no coordinated omission). Latencies count from the time a
  submission was due, not from when it went out.
- **Gateway overhead.** The same submissions straight to a receptionist and then through the gateway: the
  gateway's CPU per proxied request, less what it spends idle over the same time (probes, discovery).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from shared.bench_backends import SERVERS
from shared.bench_stats import ServiceMeter, cpu_figures, cpu_seconds, cpu_wait_figures, percentile

if TYPE_CHECKING:
    from shared.bench import Target

_BODIES = [
    ("/exports", {"type": "epub"}),
    ("/exports", {"type": "pdf"}),
    ("/imports", {"type": "word", "url": "https://example.com/book.docx"}),
]


async def _counts(target: Target) -> dict[str, int]:
    async with target.session.get(target.registry + "/counts", headers=target.headers) as resp:
        return await resp.json()


async def requests_served(target: Target) -> dict[str, int]:
    """The HTTP requests each internal service has answered so far, from its ``/metrics``."""
    served: dict[str, int] = {}
    for name, url in target.internal.items():
        async with target.session.get(url + "/metrics", headers=target.headers) as resp:
            text = await resp.text()
        served[name] = int(sum(sample.value for family in text_string_to_metric_families(text)
                               for sample in family.samples if sample.name == "conveyor_http_requests_total"))
    return served


def requests_per_job(before: dict[str, int], after: dict[str, int], jobs: int,
                     own: dict[str, int] | None = None) -> dict[str, float]:
    """The requests each internal service answered per job between two :func:`requests_served`, less the
    first one's read of its ``/metrics`` and the bench's ``own`` requests to it meanwhile."""
    own = own or {}
    return {name: round(max(n - before.get(name, 0) - 1 - own.get(name, 0), 0) / max(1, jobs), 3)
            for name, n in after.items()}


def _ended(counts: dict[str, int]) -> int:
    return counts["finished"] + counts["failed"] + counts["cancelled"]


async def _jobs_by_id(target: Target, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The registry's view of the jobs ``ids``, newest first until every one is found."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while len(found) < len(ids):
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with target.session.get(target.registry + "/jobs", params=params, headers=target.headers) as resp:
            page = await resp.json()
        found.update((job["id"], job) for job in page["items"] if job["id"] in ids)
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return found


def _at(job: dict[str, Any], field: str) -> float:
    return datetime.fromisoformat(job[field]).timestamp()


def path_segments(ended: list[tuple[float, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Where a finished job's time went, p50 and p99 of each stretch, from the wall-clock time its
    submission was due and the registry's own times of the job (one machine's clock):

    - ``due_to_created``: through the gateway and a receptionist to the registry's commit;
    - ``created_to_started``: queued, dequeued by a handler and reported ``processing``;
    - ``started_to_finished``: run, its artifact written, reported ``finished``."""
    stretches = {"due_to_created": [_at(job, "created_at") - due for due, job in ended],
                 "created_to_started": [_at(job, "started_at") - _at(job, "created_at") for _, job in ended],
                 "started_to_finished": [_at(job, "finished_at") - _at(job, "started_at") for _, job in ended]}
    return {name: {"p50": round(percentile(values, 0.5) * 1000, 2), "p99": round(percentile(values, 0.99) * 1000, 2)}
            for name, values in stretches.items()}


async def paced_phase(target: Target, pids: dict[str, int | tuple[int, ...]], rate: float, duration_s: float,
                      timeout_s: float, label: str) -> dict[str, Any]:
    """Book jobs at ``rate`` a second for ``duration_s`` through the gateway: p50/p99 of the submit latency
    and of submit to finished (the job's ``finished_at`` against the wall-clock time it was due), that time
    in three stretches (:func:`path_segments`), the services' CPU per job at that rate and their wait for a
    core, the requests each internal service answered per job, and how many cores the stack and the bench
    kept busy meanwhile."""
    n = max(1, round(rate * duration_s))
    print(f"{label}: {n} book jobs at {rate:g}/s for {duration_s:g}s, open loop")
    ended_before = _ended(await _counts(target))
    submit: list[float] = []
    due_at: dict[str, float] = {}  # job id: wall-clock time its submission was due
    refused: list[int] = []
    served_before = await requests_served(target)
    meter = ServiceMeter(pids)
    measured_from, client_cpu_before = time.perf_counter(), time.process_time()

    async def one(i: int, due: float, due_wall: float) -> None:
        route, body = _BODIES[i % len(_BODIES)]
        status, answer = await target.submitter.post(target.gateway, route, {"bookId": f"{label}-{i}", **body})
        if status == 201:
            submit.append(time.perf_counter() - due)
            due_at[orjson.loads(answer)["id"]] = due_wall
        else:
            refused.append(status)

    tasks: list[asyncio.Task[None]] = []
    start, start_wall = time.perf_counter() + 0.05, time.time() + 0.05
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, start + i / rate, start_wall + i / rate)))
    await asyncio.gather(*tasks)
    sent_s = time.perf_counter() - start
    deadline = time.monotonic() + timeout_s
    polls = 1
    while _ended(counts := await _counts(target)) < ended_before + len(due_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        polls += 1
    cpu, wait = meter.since()
    served = requests_per_job(served_before, await requests_served(target), len(due_at), {"registry": polls})
    # The cores the stack and this bench kept busy, on average, from the first submission to the last end.
    cores_busy = (sum(cpu.values()) + time.process_time() - client_cpu_before) / (time.perf_counter() - measured_from)
    jobs = await _jobs_by_id(target, set(due_at))
    ended = [(due_at[job_id], job) for job_id, job in jobs.items() if job["state"] == "finished"]
    to_finish = [_at(job, "finished_at") - due for due, job in ended]
    accepted = len(due_at)
    return {
        "rate_per_s": round(rate, 1),
        "duration_s": duration_s,
        "jobs": n,
        "accepted": accepted,
        "refused": len(refused),
        "finished": len(to_finish),
        "sent_per_s": round(n / sent_s, 1) if sent_s > 0 else 0.0,
        "submit_latency_ms": {"p50": round(percentile(submit, 0.5) * 1000, 2),
                              "p99": round(percentile(submit, 0.99) * 1000, 2)},
        "submit_to_finished_ms": {"p50": round(percentile(to_finish, 0.5) * 1000, 2),
                                  "p99": round(percentile(to_finish, 0.99) * 1000, 2)},
        "path_ms": path_segments(ended),
        "cores_busy": round(cores_busy, 2),
        **cpu_figures(cpu, accepted, SERVERS),
        **cpu_wait_figures(wait, accepted, SERVERS),
        # As the throughput phase's: at a lower rate, batches are smaller and a job costs more requests.
        "requests_per_job_by_service": served,
        "states": counts,
        "ok": len(to_finish) == n and not refused,
    }


async def gateway_overhead_phase(target: Target, pids: dict[str, int | tuple[int, ...]], requests: int,
                                 clients: int) -> dict[str, Any]:
    """``requests`` book submissions straight to a receptionist, then as many through the gateway, from
    ``clients`` concurrent clients: the gateway's CPU per proxied request (its CPU over the second half,
    less its idle CPU over the first scaled to the same time), and p50 of both latencies. Then as many
    again through the gateway from a signed-in user, each with its bearer token as a deployed client sends
    it (``signed_in``): the bench's other phases submit anonymously, which the gateway takes without a
    token to check."""
    print(f"gateway overhead: {requests} submissions straight to a receptionist, then through the gateway")
    direct_headers = {**target.headers, "X-Conveyor-User": "anonymous", "X-Conveyor-Roles": "user"}

    async def run(base: str, headers: dict[str, str] | None) -> tuple[float, float, list[float]]:
        counter = itertools.count()
        latencies: list[float] = []
        gateway_cpu = cpu_seconds(pids["gateway"])
        started = time.perf_counter()

        async def client() -> None:
            while (i := next(counter)) < requests:
                route, body = _BODIES[i % len(_BODIES)]
                sent = time.perf_counter()
                status, _ = await target.submitter.post(base, route, {"bookId": f"overhead-{i}", **body}, headers)
                if status in (200, 201):
                    latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started, cpu_seconds(pids["gateway"]) - gateway_cpu, latencies

    def per_request_us(elapsed_s: float, busy_cpu_s: float, answered: int) -> float:
        overhead_s = busy_cpu_s - idle_cpu_s * (elapsed_s / direct_s if direct_s else 0.0)
        return round(1e6 * overhead_s / max(1, answered), 1)

    direct_s, idle_cpu_s, direct = await run(target.receptionist, direct_headers)
    through_s, busy_cpu_s, through = await run(target.gateway, None)
    token_s, token_cpu_s, signed_in = await run(target.gateway, await target.sign_in("bench-client"))
    return {
        "requests": requests,
        "clients": clients,
        "gateway_cpu_us_per_request": per_request_us(through_s, busy_cpu_s, len(through)),
        "signed_in": {"gateway_cpu_us_per_request": per_request_us(token_s, token_cpu_s, len(signed_in)),
                      "latency_ms": {"p50": round(percentile(signed_in, 0.5) * 1000, 2),
                                     "p99": round(percentile(signed_in, 0.99) * 1000, 2)}},
        "gateway_cpu_s": round(busy_cpu_s, 3),
        "gateway_idle_cpu_s": round(idle_cpu_s, 3),
        "direct_latency_ms": {"p50": round(percentile(direct, 0.5) * 1000, 2),
                              "p99": round(percentile(direct, 0.99) * 1000, 2)},
        "through_gateway_latency_ms": {"p50": round(percentile(through, 0.5) * 1000, 2),
                                       "p99": round(percentile(through, 0.99) * 1000, 2)},
        "ok": len(direct) == requests and len(through) == requests and len(signed_in) == requests,
    }
