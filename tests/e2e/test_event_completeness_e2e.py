"""Event completeness end to end: two registries on one PostgreSQL schema, each written through by its own
receptionist and handler, and an operator's event stream through the gateway that must receive every
change of every job, none missed and none twice; then a stream resumed with ``Last-Event-ID`` from the
middle of the first one must replay exactly the rest.

Every service is its own process (``python -m <service>``) on a free loopback port, as the hosts of a
deployment run them (``conveyor up`` starts one registry only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sse import Block, SseReader
from tests.support import wait_until

JOBS = 600
CONCURRENCY = 16
DEADLINE_S = 60.0
OPERATOR_PASSWORD = "operator password"
USER_PASSWORD = "alice password"


@dataclass
class Service:
    name: str
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def tail(self) -> str:
        return f"--- {self.name} (exit {self.process.returncode}) ---\n" + self.log.read_text(errors="replace")[-3000:]


@dataclass
class Deployment:
    """The services of the test, each its own process, and the internal service token they share."""

    tmp: Path
    session: aiohttp.ClientSession
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    services: list[Service] = field(default_factory=list)

    @property
    def internal(self) -> dict[str, str]:
        return {"X-Service-Token": self.token}

    async def start(self, module: str, prefix: str, name: str, **values: str) -> Service:
        """``python -m module`` with ``<PREFIX><KEY>`` settings, on a free port; returned once healthy."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", f"{prefix}PORT": str(port), f"{prefix}HOST": "127.0.0.1",
               f"{prefix}INSTANCE": name, f"{prefix}SERVICE_TOKEN": self.token, f"{prefix}LOG_LEVEL": "WARNING"}
        env.update({f"{prefix}{key.upper()}": value for key, value in values.items()})
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env,
                                                        stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                        stderr=asyncio.subprocess.STDOUT)
        service = Service(name, f"http://127.0.0.1:{port}", proc, log)
        self.services.append(service)

        async def healthy() -> bool:
            assert proc.returncode is None, service.tail()
            try:
                async with self.session.get(service.url + "/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(healthy, timeout_s=DEADLINE_S, interval_s=0.05, what=f"{name} to be healthy")
        return service

    def logs(self) -> str:
        return "\n".join(service.tail() for service in self.services)

    async def stop(self) -> None:
        for service in reversed(self.services):
            if service.process.returncode is None:
                service.process.terminate()
        for service in self.services:
            try:
                await asyncio.wait_for(service.process.wait(), 20)
            except TimeoutError:
                service.process.kill()
                await service.process.wait()


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        deployment = Deployment(tmp_path, session)
        try:
            yield deployment
        finally:
            await deployment.stop()


async def start_two_registry_stack(deployment: Deployment, postgres_url: str) -> str:
    """Two registries on one schema, a scheduler, the logging service, and a receptionist and a handler for
    each registry, behind one gateway; the gateway's URL."""
    tmp, start = deployment.tmp, deployment.start
    logging_service = await start("logging_service", "LOGGING_", "logging_service",
                                  store_url=f"sqlite:///{tmp}/logs.db")
    common = {"log_url": logging_service.url}
    # The first registry makes the schema; the second finds it made.
    registries = [await start("registry", "REGISTRY_", "registry-1", store_url=postgres_url, **common)]
    registries.append(await start("registry", "REGISTRY_", "registry-2", store_url=postgres_url, **common))
    scheduler = await start("scheduler", "SCHEDULER_", "scheduler", store_url="memory://", **common)
    artifacts = str(tmp / "artifacts")
    neighbours = {"scheduler_url": scheduler.url, "artifacts_dir": artifacts, "time_scale": "0", **common}
    receptionists = await asyncio.gather(*(
        start("receptionist", "RECEPTIONIST_", f"receptionist-{i}", registry_url=registry.url,
              logging_url=logging_service.url, data_store_url=f"sqlite:///{tmp}/data.db", **neighbours)
        for i, registry in enumerate(registries, 1)))
    await asyncio.gather(*(
        start("handler", "HANDLER_", f"handler-{i}", registry_url=registry.url,
              data_store_url=f"sqlite:///{tmp}/data.db", **neighbours)
        for i, registry in enumerate(registries, 1)))
    gateway = await start("gateway", "GATEWAY_", "gateway", receptionists=",".join(r.url for r in receptionists),
                          registry_url=registries[0].url, jwt_secret=secrets.token_urlsafe(48), rate_limit_per_s="0",
                          **common)
    return gateway.url


class Stream:
    """An event stream through the gateway, its events read into ``events`` as they come."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.reader = SseReader(resp)
        self.events: list[Block] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (block := await self.reader.block(timeout_s=DEADLINE_S)) is not None:
            if block.is_event:
                self.events.append(block)

    @property
    def ids(self) -> list[int]:
        return [int(block.id or 0) for block in self.events]

    async def until(self, seq: int) -> None:
        """Wait until the event ``seq``, or a later one, has come."""
        async def reached() -> bool:
            if self.task.done():
                raise AssertionError(f"the stream ended: {self.task.exception()!r}")
            return bool(self.events) and self.ids[-1] >= seq

        await wait_until(reached, timeout_s=DEADLINE_S, interval_s=0.05, what=f"the stream to reach event {seq}")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.reader.resp.close()


@contextlib.asynccontextmanager
async def open_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> AsyncIterator[Stream]:
    async with session.get(url + "/events", params={"topic": "job.updated"}, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE_S)) as resp:
        stream = Stream(resp)
        try:
            yield stream
        finally:
            await stream.close()


def seen(block: Block) -> tuple[Any, ...]:
    data = block.json()
    return int(block.id or 0), data["job_id"], data["state"], data["previous_state"], data["attempt"]


def logged(event: dict[str, Any]) -> tuple[Any, ...]:
    return event["seq"], event["job_id"], event["state"], event["previous_state"], event["attempt"]


async def test_an_operator_stream_misses_no_event_of_two_registries_and_resumes_without_gaps(
        deployment: Deployment, postgres_url: str) -> None:
    session = deployment.session
    gateway = await start_two_registry_stack(deployment, postgres_url)
    registry = next(service.url for service in deployment.services if service.name == "registry-1")

    async def call(method: str, url: str, expect: tuple[int, ...], **kwargs: Any) -> Any:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.json()
            assert resp.status in expect, (method, url, resp.status, body)
            return body

    for name, password, role in (("ops", OPERATOR_PASSWORD, "operator"), ("alice", USER_PASSWORD, "user")):
        await call("POST", registry + "/users", (201,), headers=deployment.internal,
                   json={"username": name, "password": password, "roles": [role]})

    async def login(name: str, password: str) -> dict[str, str]:
        answer = await call("POST", gateway + "/auth/token", (200,), json={"username": name, "password": password})
        return {"Authorization": f"Bearer {answer['access_token']}"}

    operator, alice = await login("ops", OPERATOR_PASSWORD), await login("alice", USER_PASSWORD)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def submit(i: int) -> str:
        """A task, or every fourth time a book export, as alice: its job id."""
        path, body = ("/exports", {"bookId": f"book-{i}", "type": "pdf"}) if i % 4 == 0 else \
            ("/tasks", {"description": f"task {i}", "fail_probability": 0})
        async with slots:
            return (await call("POST", gateway + path, (201,), headers=alice, json=body))["id"]

    async def all_finished() -> bool:
        counts = await call("GET", registry + "/counts", (200,), headers=deployment.internal)
        assert not counts.get("failed") and not counts.get("dead"), counts
        return counts.get("finished", 0) == JOBS

    async def event_log() -> tuple[list[dict[str, Any]], int]:
        """Every event the registries wrote, from the first, and the last ``seq``."""
        items: list[dict[str, Any]] = []
        while True:
            page = await call("GET", registry + "/events", (200,), headers=deployment.internal,
                              params={"after": str(items[-1]["seq"] if items else 0), "limit": "1000"})
            items += page["items"]
            if not page["items"]:
                return items, page["last_seq"]

    try:
        async with contextlib.AsyncExitStack() as streams:
            # Once the stream's answer has begun, it has taken its place at the head, where nothing has
            # happened yet: every change from here on is the stream's to deliver.
            first = await streams.enter_async_context(open_stream(session, gateway, operator))
            submitting = asyncio.gather(*(submit(i) for i in range(JOBS)))
            # A second stream resumes, while the jobs run, after the last event the first one has had so far
            # (as a reconnecting EventSource would), through whichever receptionist the gateway picks.
            await first.until(JOBS)  # a third of the way: each job makes three events (pending, processing, finished)
            resumed_after = first.events[-1]
            during = await streams.enter_async_context(
                open_stream(session, gateway, {**operator, "Last-Event-ID": resumed_after.id or ""}))
            ids = await asyncio.wait_for(submitting, DEADLINE_S)
            await wait_until(all_finished, timeout_s=DEADLINE_S, interval_s=0.1, what=f"{JOBS} jobs to finish")
            log, head = await event_log()
            await first.until(head)
            await during.until(head)
        received = [seen(block) for block in first.events]
        # Both registries wrote jobs and their changes: the log interleaves two writers.
        wrote = [(await call("GET", service.url + "/status", (200,), headers=deployment.internal))["requests"]
                 for service in deployment.services if service.name.startswith("registry-")]
        assert all(counters["created"] and counters["updated"] for counters in wrote), wrote
        assert sum(counters["created"] for counters in wrote) == JOBS
        assert sum(counters["created"] + counters["updated"] for counters in wrote) == len(log)
        assert log[-1]["seq"] == head
        assert {event["job_id"] for event in log} == set(ids)

        seqs = [seq for seq, *_ in received]
        twice = len(seqs) - len(set(seqs))
        missed = sorted({event["seq"] for event in log} - set(seqs))
        assert (len(missed), twice) == (0, 0), f"{len(missed)} of {len(log)} events missed, {twice} came twice"
        assert received == [logged(event) for event in log]
        # Each job's history as the stream told it ends in its final state.
        assert {job_id: state for _, job_id, state, *_ in received} == {job_id: "finished" for job_id in ids}
        # The stream resumed mid-run had exactly the rest: none missed, none twice.
        resumed = int(resumed_after.id or 0)
        assert [seen(block) for block in during.events] == [event for event in received if event[0] > resumed]

        # Resumed afterwards from the middle of the first stream, one replays exactly the rest, up to the head.
        middle = len(received) // 2
        async with open_stream(session, gateway, {**operator, "Last-Event-ID": str(received[middle][0])}) as late:
            await late.until(head)
        assert [seen(block) for block in late.events] == received[middle + 1:]
    except BaseException:
        print(deployment.logs())
        raise
