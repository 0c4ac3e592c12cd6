"""The real scheduler process on a SQLite file, killed with SIGKILL and started again on the same file:
every write it acknowledged over HTTP is there afterwards, and no enqueue is half done."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
QUEUE = "work"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_body(max_attempts: int = 3) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "task", "type": "demo", "owner": "ada", "payload": {"n": 1},
            "retry": {"max_attempts": max_attempts, "backoff_base_s": 0.0}}


@dataclass
class Scheduler:
    """A ``python -m scheduler`` process and a client of it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def states(self, job_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(job_ids), 1000):
            answer = await self.call("POST", "/queues/states", json={"job_ids": job_ids[start:start + 1000]})
            found |= answer["states"]
        return found

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL


Launch = Callable[..., Awaitable[Scheduler]]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """Starts the scheduler on ``tmp_path/s.db`` and waits until it is healthy; kills what is left after."""
    processes: list[subprocess.Popen[bytes]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def start(reap_interval_s: float = 0.05) -> Scheduler:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
            env |= {"SCHEDULER_PORT": str(port), "SCHEDULER_STORE_URL": f"sqlite:///{tmp_path}/s.db",
                    "SCHEDULER_REAP_INTERVAL_S": str(reap_interval_s), "SCHEDULER_LOG_LEVEL": "WARNING",
                    "PYTHONPATH": str(REPO)}
            log = tmp_path / f"scheduler-{len(processes)}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=REPO, env=env,
                                           stdout=out, stderr=subprocess.STDOUT)
            processes.append(process)
            scheduler = Scheduler(process, f"http://127.0.0.1:{port}", log, session)
            await wait_healthy(scheduler)
            return scheduler

        try:
            yield start
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)


async def wait_healthy(scheduler: Scheduler, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        assert scheduler.process.poll() is None, f"the scheduler exited:\n{scheduler.log.read_text()[-3000:]}"
        try:
            async with scheduler.session.get(scheduler.url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert loop.time() < deadline, f"the scheduler was not healthy in time:\n{scheduler.log.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def take(scheduler: Scheduler, max_jobs: int, lease_s: float) -> list[dict[str, Any]]:
    answer = await scheduler.call("POST", "/dequeue", json={"queues": [QUEUE], "max": max_jobs, "lease_s": lease_s})
    return answer["deliveries"]


def lease(delivery: dict[str, Any]) -> dict[str, str]:
    return {"job_id": delivery["job"]["id"], "lease_id": delivery["lease_id"]}


async def test_every_acknowledged_write_survives_a_sigkill(launch: Launch) -> None:
    # The first process never reaps, so the short leases are still leases in the file when it dies.
    first = await launch(reap_interval_s=3600)
    jobs = [job_body(max_attempts=1 if 60 <= n < 70 else 3) for n in range(200)]
    ids = [job["id"] for job in jobs]
    for start in range(0, 200, 10):
        assert await first.call("POST", f"/queues/{QUEUE}/jobs", json={"jobs": jobs[start:start + 10]}) == {
            "enqueued": 10, "duplicates": 0}

    acked = await take(first, 50, 600)  # jobs 0..49: acked, one by one and in a batch
    for delivery in acked[:25]:
        await first.call("POST", "/leases/ack", json=lease(delivery))
    answer = await first.call("POST", "/leases/acks", json={"items": [lease(d) for d in acked[25:]]})
    assert (len(answer["acked"]), answer["lost"]) == (25, [])
    failed = await take(first, 20, 600)  # 50..59 retry in an hour; 60..69 were on their last attempt
    for delivery in failed:
        await first.call("POST", "/leases/nack", json={**lease(delivery), "error": "broken", "delay_s": 3600})
    held = await take(first, 20, 600)  # 70..89 stay leased; 70 is cancelled while it runs
    short = await take(first, 20, 1)  # 90..109 stay leased, and their leases run out
    assert [d["job"]["id"] for d in acked + failed + held + short] == ids[:110]
    assert await first.call("POST", f"/queues/jobs/{ids[70]}/cancel") == {"outcome": "flagged"}
    assert await first.call("POST", f"/queues/jobs/{ids[110]}/cancel") == {"outcome": "removed"}
    before = (await first.call("GET", "/status"))["queues"][QUEUE]

    first.kill()
    second = await launch()

    after = (await second.call("GET", "/status"))["queues"][QUEUE]
    counters = ("enqueued", "dequeued", "acked", "nacked", "delayed", "dead")
    assert {k: after[k] for k in counters} == {k: before[k] for k in counters} == {
        "enqueued": 200, "dequeued": 110, "acked": 50, "nacked": 20, "delayed": 10, "dead": 10}
    assert after["ready"] + after["leased"] == 129
    assert await second.call("GET", "/queues/lengths") == {"lengths": {QUEUE: 139}, "max_queue_length": 0}
    states = await second.states(ids)
    assert set(states) == set(ids[50:110] + ids[111:])
    assert {states[i] for i in ids[50:60]} == {"delayed"}
    assert {states[i] for i in ids[60:70]} == {"dead"}
    assert {states[i] for i in ids[70:90]} == {"leased"}
    assert {states[i] for i in ids[90:110]} <= {"leased", "ready"}
    assert {states[i] for i in ids[111:]} == {"ready"}
    dead = (await second.call("GET", "/dead"))["items"]
    assert sorted((d["job"]["id"], d["attempt"], d["error"]) for d in dead) == sorted(
        (i, 1, "broken") for i in ids[60:70])

    # The long leases are still the handlers' leases, and the cancel flag is still on job 70.
    for delivery in held:
        extended = await second.call("POST", "/leases/extend", json=lease(delivery))
        assert extended["cancelled"] is (delivery["job"]["id"] == ids[70])
    assert await second.call("POST", "/leases/ack", json=lease(held[1])) == {}

    async def short_leases_expired() -> bool:
        return set((await second.states(ids[90:110])).values()) == {"ready"}

    await wait_until(short_leases_expired)
    again: list[dict[str, Any]] = []
    while batch := await take(second, 100, 600):
        again += batch
    # FIFO among what was ready; the expired leases came back later, with their attempt raised.
    assert [(d["job"]["id"], d["attempt"]) for d in again] == (
        [(i, 1) for i in ids[111:]] + [(i, 2) for i in ids[90:110]])


async def test_a_kill_in_mid_stream_loses_no_acknowledged_enqueue_and_halves_none(launch: Launch) -> None:
    first = await launch()
    acknowledged: list[list[str]] = []
    unanswered: list[list[str]] = []
    enough = asyncio.Event()

    async def produce() -> None:
        while True:
            batch = [job_body() for _ in range(5)]
            ids = [job["id"] for job in batch]
            try:
                async with first.session.post(f"{first.url}/queues/{QUEUE}/jobs", json={"jobs": batch}) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
            except aiohttp.ClientError:
                unanswered.append(ids)
                return
            acknowledged.append(ids)
            if len(acknowledged) >= 150:
                enough.set()

    producers = [asyncio.create_task(produce()) for _ in range(4)]
    await asyncio.wait_for(enough.wait(), timeout=60)
    first.kill()  # while the producers are still sending
    await asyncio.wait_for(asyncio.gather(*producers), timeout=30)
    second = await launch()

    states = await second.states([i for ids in acknowledged + unanswered for i in ids])
    assert all(states.get(i) == "ready" for ids in acknowledged for i in ids)
    # An enqueue is one transaction: a batch whose answer was lost is all there or not at all.
    assert all(len({i in states for i in ids}) == 1 for ids in unanswered)
    lengths = await second.call("GET", "/queues/lengths")
    assert lengths["lengths"] == {QUEUE: len(states)}
