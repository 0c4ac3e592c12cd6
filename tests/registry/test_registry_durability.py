"""The registry as a real process (``python -m registry``) on a SQLite file, killed with SIGKILL: every
write it answered with a 2xx is still there when it starts again on the same file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Registry:
    """One ``python -m registry`` process on a port and a SQLite file, with a client session of its own."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def healthy(self) -> bool:
        if self.process.returncode is not None:
            raise AssertionError(f"the registry exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            status, _ = await self.call("GET", "/health")
        except aiohttp.ClientError:
            return False
        return status == 200

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.process.wait(), timeout=10) == -signal.SIGKILL
        await self.session.close()


@pytest.fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Registry]]]:
    """Start a registry on ``tmp_path/r.db`` (the same file every time) and wait until /health says ok;
    whatever is still running after the test is killed."""
    started: list[Registry] = []
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REGISTRY_", "CONVEYOR_"))}

    async def start() -> Registry:
        port = free_port()
        log = tmp_path / f"registry-{len(started)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "registry", cwd=REPO_ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**env, "REGISTRY_PORT": str(port), "REGISTRY_STORE_URL": f"sqlite:///{tmp_path}/r.db",
                     "REGISTRY_LOG_LEVEL": "WARNING"})
        registry = Registry(process, f"http://127.0.0.1:{port}", log)
        started.append(registry)
        await wait_until(registry.healthy, timeout_s=30, what="the registry to answer /health")
        return registry

    yield start

    for registry in started:
        if registry.process.returncode is None:
            await registry.kill()
        await registry.session.close()


@dataclass
class Expected:
    """What the registry answered for one job: the job after its last 2xx write, and how many writes
    changed it (each leaves one event, on top of the ``created`` one)."""

    job: dict[str, Any]
    changes: int = 0
    in_flight: dict[str, Any] | None = None  # a write sent but not answered when the registry was killed


async def write(registry: Registry, expected: Expected, method: str, path: str, body: dict[str, Any]) -> None:
    status, answer = await registry.call(method, path, json=body)
    assert status == 200, answer
    assert answer != expected.job, f"{method} {path} {body} changed nothing"
    expected.job = answer
    expected.changes += 1


async def take_through(registry: Registry, expected: Expected, i: int) -> None:
    """Move job ``i`` through a path picked by ``i``, as handlers and operators would."""
    job = f"/jobs/{expected.job['id']}"
    if i % 5 == 0:
        return  # left pending: the last phase starts these while the registry is killed
    await write(registry, expected, "PATCH", job, {"attempt": 1, "state": "processing"})
    if i % 5 == 1:
        await write(registry, expected, "PATCH", job, {"attempt": 1, "progress": 0.5})
    elif i % 5 == 2:
        await write(registry, expected, "PATCH", job, {"attempt": 1, "state": "finished", "result": {"i": i}})
    elif i % 5 == 3:
        await write(registry, expected, "PATCH", job, {"attempt": 1, "state": "failed", "error": f"boom {i}"})
        if i % 10 == 3:
            await write(registry, expected, "POST", f"{job}/redrive", {"extra_attempts": 3})
    else:
        await write(registry, expected, "PATCH", job, {"attempt": 2, "state": "processing"})
        await write(registry, expected, "POST", f"{job}/cancel", {})


async def test_answered_writes_survive_sigkill(start_registry: Callable[[], Awaitable[Registry]]) -> None:
    first = await start_registry()
    limit = asyncio.Semaphore(16)

    async def create(i: int) -> Expected:
        async with limit:
            body = {"kind": "export", "type": "epub", "owner": f"owner-{i % 7}", "payload": {"bookId": f"b{i}"},
                    "idempotency_key": f"key-{i}"}
            status, job = await first.call("POST", "/jobs", json=body)
            assert status == 201, job
            expected = Expected(job)
            await take_through(first, expected, i)
            return expected

    jobs = await asyncio.gather(*(create(i) for i in range(JOBS)))

    # Last phase: start every pending job at once and kill the registry after a few answers, so that
    # some writes are answered, some are in flight and some never reach it.
    pending = jobs[::5]  # the jobs take_through left alone (the redriven ones are pending too: not these)
    assert {expected.job["state"] for expected in pending} == {"pending"}
    answered = 0
    enough = asyncio.Event()

    async def start_job(expected: Expected) -> None:
        nonlocal answered
        async with limit:
            expected.in_flight = {"attempt": 1, "state": "processing"}
            try:
                await write(first, expected, "PATCH", f"/jobs/{expected.job['id']}", expected.in_flight)
            except (aiohttp.ClientError, TimeoutError):
                return  # killed before it answered: the write may or may not have been committed
            expected.in_flight = None
            answered += 1
            if answered == len(pending) // 4:
                enough.set()

    starts = [asyncio.create_task(start_job(expected)) for expected in pending]
    await asyncio.wait_for(enough.wait(), timeout=30)
    await first.kill()
    await asyncio.gather(*starts)
    assert len(pending) // 4 <= sum(expected.in_flight is None for expected in pending) < len(pending)

    second = await start_registry()
    state_counts: dict[str, int] = {}
    for expected in jobs:
        status, job = await second.call("GET", f"/jobs/{expected.job['id']}")
        assert status == 200, job
        events_status, events = await second.call("GET", f"/jobs/{expected.job['id']}/events")
        assert events_status == 200
        if expected.in_flight is not None and job != expected.job:
            # The unanswered write was committed before the kill: it must be whole.
            assert (job["state"], job["attempt"]) == ("processing", 1), job
            assert len(events["items"]) == 1 + expected.changes + 1
        else:
            assert job == expected.job
            assert len(events["items"]) == 1 + expected.changes
        assert events["items"][-1]["job"] == job
        state_counts[job["state"]] = state_counts.get(job["state"], 0) + 1

    status, counts = await second.call("GET", "/counts")
    assert status == 200 and counts == {state: state_counts.get(state, 0) for state in counts}
    assert sum(counts.values()) == JOBS
    # The redriven jobs came back pending, with their history and their raised attempt budget.
    redriven = [e.job for i, e in enumerate(jobs) if i % 10 == 3]
    assert redriven and all((j["state"], j["attempt"], j["max_attempts"], len(j["errors"])) == ("pending", 1, 4, 1)
                            for j in redriven)

    # The restarted registry carries on: idempotent creates find the old jobs, new writes land.
    status, again = await second.call("POST", "/jobs", json={
        "kind": "export", "type": "epub", "owner": "owner-1", "payload": {"bookId": "b1"}, "idempotency_key": "key-1"})
    assert status == 200 and again["id"] == jobs[1].job["id"]
    status, done = await second.call("PATCH", f"/jobs/{jobs[1].job['id']}", json={"attempt": 1, "state": "finished"})
    assert status == 200 and done["state"] == "finished"
