"""The Python client (``shared.client``) against a live stack: submit, get, wait (on the event stream, and by
polling when no stream can be had), result, cancel, list, events; typed errors from real error answers; and a
submission retried across a dropped connection that still makes one job."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import (
    AsyncClient,
    Client,
    Conflict,
    Event,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    Unreachable,
    ValidationError,
    WaitTimeout,
)
from tests.e2e import live
from tests.e2e.conftest import _free_port_base
from tests.support import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveStack]:
    # One event stream per caller, so that a test can take a caller's only one and watch wait() poll.
    stack = live.start(tmp_path_factory.mktemp("client"), env={"RECEPTIONIST_EVENT_STREAMS_PER_IDENTITY": "1"})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def tokens(stack: live.LiveStack) -> dict[str, str]:
    return {name: stack.token(name) for name in live.USERS}


def epub(book: str = "b1") -> dict[str, Any]:
    return {"bookId": book, "type": "epub"}


async def test_submit_wait_and_download_the_result(stack: live.LiveStack, tokens: dict[str, str],
                                                   tmp_path: Path) -> None:
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        job = await client.submit("export", epub("moby"), priority=3)
        assert (job.kind, job.state, job.priority, job.payload) == ("export", "pending", 3, epub("moby"))
        assert job.idempotency_key  # one was made, so that a retry finds this job
        seen: list[tuple[str, float]] = []
        done = await client.wait(job, timeout=60, on_update=lambda _id, state, progress: seen.append((state, progress)))
        assert done.state == "finished" and done.done and done.progress == 1.0
        assert [state for state, _ in seen][-1] == "finished" and ("processing", 0.0) in seen
        assert (await client.get(job.id)) == done
        path = await client.result(done, tmp_path)  # a directory: the file's own name
        assert path.parent == tmp_path and path.stat().st_size > 0
        named = await client.result(done.id, tmp_path / "copy.epub")
        assert named.read_bytes() == path.read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "copy.epub"])  # no partial left


async def test_kinds_with_routes_of_their_own_are_submitted_alike(stack: live.LiveStack,
                                                                   tokens: dict[str, str]) -> None:
    """``submit`` takes the built-in kinds with a route of their own too (by ``POST /jobs``, answered with
    the generic job view); only those whose submission carries more than JSON are refused, naming their
    route."""
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        task = await client.submit("task", {"description": "by the client", "duration_s": 0, "fail_probability": 0})
        assert (task.kind, task.type, task.state, task.payload) == (
            "task", "task", "pending", {"description": "by the client", "duration_s": 0.0, "fail_probability": 0.0})
        assert (await client.wait(task, timeout=60)).state == "finished"
        assert (await client.call("GET", f"/tasks/{task.id}"))["status"] == "SUCCESS"  # its own view shows it
        with pytest.raises(Forbidden, match="exporter"):  # a data export needs its permission, by any route
            await client.submit("data_export", {"resource": "users", "format": "csv"})
        with pytest.raises(ValidationError, match="POST /ecgs") as ecg:
            await client.submit("ecg", {"date": "2023-07-30T10:15:00Z", "leads": [{"name": "I", "signal": [1]}]})
        assert ecg.value.field == "kind"


async def test_delayed_jobs_are_listed_a_page_at_a_time_and_cancelled(stack: live.LiveStack,
                                                                      tokens: dict[str, str]) -> None:
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        jobs = [await client.submit("export", epub(f"later-{i}"), delay_s=600) for i in range(3)]
        assert all(job.state == "pending" and job.run_at is not None for job in jobs)
        listed = [job.id async for job in client.list(kind="export", state="pending", page_size=1)]
        assert {job.id for job in jobs} <= set(listed) and len(listed) == len(set(listed))
        assert listed[:3] == [job.id for job in reversed(jobs)]  # newest first, across pages of one
        assert len([job async for job in client.list(kind="export", limit=2, page_size=1)]) == 2
        cancelled = await client.cancel(jobs[0])
        assert cancelled.state == "cancelled"
        assert (await client.cancel(jobs[0].id)).state == "cancelled"  # twice is harmless
        assert (await client.wait(jobs[0], timeout=10)).state == "cancelled"
        with pytest.raises(WaitTimeout) as waited:
            await client.wait(jobs[1], timeout=0.5, poll_s=0.1)
        assert waited.value.job is not None and waited.value.job.state == "pending"
        for job in jobs[1:]:
            await client.cancel(job)


async def test_error_answers_are_typed(stack: live.LiveStack, tokens: dict[str, str]) -> None:
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        with pytest.raises(NotFound, match=r"^404: "):
            await client.get(str(uuid.uuid4()))
        with pytest.raises(ValidationError) as bad:
            await client.submit("export", {"bookId": "1", "type": "mobi"})
        assert bad.value.status == 400 and bad.value.field == "payload.type"
        with pytest.raises(ValidationError) as unknown:
            await client.submit("no.such.kind", {})
        assert unknown.value.field == "kind"
        with pytest.raises(ValidationError) as priority:
            await client.submit("export", epub(), priority=1000)
        assert priority.value.field == "priority"
        done = await client.wait(await client.submit("export", epub()), timeout=60)
        with pytest.raises(Conflict):
            await client.cancel(done)
        with pytest.raises(Forbidden):
            await client.queues()  # an operator's
        with pytest.raises(Unauthorized):
            await client.login("alice", "not her password")
    async with AsyncClient(stack.url, "not.a.token") as client:
        with pytest.raises(Unauthorized):
            await client.get(done.id)
    async with AsyncClient(stack.url, tokens["olga"]) as operator:
        assert "export" in str(await operator.queues())
        assert (await operator.get(done.id)).payload is None  # states, not contents
    async with AsyncClient(f"http://127.0.0.1:{_free_port_base()}", retries=1) as nowhere:
        with pytest.raises(Unreachable, match="cannot reach"):
            await nowhere.health()


class DroppingRelay:
    """A loopback TCP relay to ``port``. On its first ``drops`` connections the request reaches the server,
    which does the work, but the connection is closed as soon as the answer starts: the client sees a
    connection failure after the fact, as when a network drops an answer."""

    def __init__(self, port: int, drops: int = 1) -> None:
        self.port, self.drops, self.dropped = port, drops, 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:  # a connection still being relayed ends with the relay
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:
            writer.close()
            raise

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()

        upstream = asyncio.ensure_future(copy(reader, up_writer))
        try:
            if self.drops > 0:
                self.drops -= 1
                await up_reader.read(1)  # the server answers: it has done the work
                self.dropped += 1
            else:
                await copy(up_reader, writer)
        finally:
            upstream.cancel()
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()


async def test_a_submission_retried_after_a_dropped_connection_makes_one_job(stack: live.LiveStack,
                                                                             tokens: dict[str, str]) -> None:
    relay = DroppingRelay(int(stack.url.rsplit(":", 1)[1]))
    async with relay as relay_url, AsyncClient(relay_url, tokens["alice"]) as client:
        book = f"retried-{uuid.uuid4().hex[:8]}"
        job = await client.submit("export", epub(book))
        assert relay.dropped == 1  # the first try's answer was lost, and the client tried again
        mine = [j async for j in client.list(kind="export") if (j.payload or {}).get("bookId") == book]
        assert [j.id for j in mine] == [job.id]
        assert mine[0].idempotency_key == job.idempotency_key
    relay = DroppingRelay(int(stack.url.rsplit(":", 1)[1]), drops=2)
    async with relay as relay_url, AsyncClient(relay_url, tokens["alice"], retries=1) as client:
        with pytest.raises(Unreachable):  # retries run out: the failure reaches the caller
            await client.submit("export", epub())


async def test_events_resume_after_the_last_one_seen(stack: live.LiveStack, tokens: dict[str, str]) -> None:
    async with AsyncClient(stack.url, tokens["uma"]) as client:
        first = await client.wait(await client.submit("export", epub("first")), timeout=60)
        mark = (await client.history(first))[-1]
        assert mark.data["state"] == "finished" and mark.id is not None
        second = await client.wait(await client.submit("export", epub("second")), timeout=60)

        async def take(n: int, after: str | None) -> list[Event]:
            events: list[Event] = []
            stream = client.events(topics=["job.updated"], last_event_id=after)
            try:
                async with asyncio.timeout(30):
                    async for event in stream:
                        events.append(event)
                        if len(events) == n:
                            return events
            finally:
                await stream.aclose()
            return events

        events = await take(3, mark.id)
        assert [(e.data["job_id"], e.data["state"]) for e in events] == [
            (second.id, "pending"), (second.id, "processing"), (second.id, "finished")]
        assert await take(1, events[1].id) == [events[2]]  # resumed after the second: the third comes next


async def test_wait_polls_when_no_stream_can_be_had(stack: live.LiveStack, tokens: dict[str, str]) -> None:
    async with AsyncClient(stack.url, tokens["bob"]) as client, AsyncClient(stack.url, tokens["bob"]) as holder:

        async def hold() -> Any:  # bob's only stream (RECEPTIONIST_EVENT_STREAMS_PER_IDENTITY=1)
            stream = holder.http.open("GET", "/events", stream=True)
            try:
                await stream.__aenter__()
            except RateLimited:
                return None  # a stream of bob's that just ended still holds it, for up to a quarter second
            return stream

        held = await wait_until(hold, timeout_s=30, interval_s=0.3, what="bob's stream slot")
        try:
            job = await client.submit("export", epub("polled"))
            with pytest.raises(RateLimited):  # what wait() meets
                async with client.http.open("GET", f"/jobs/{job.id}/events", stream=True):
                    pass
            states: list[str] = []
            done = await client.wait(job, timeout=60, poll_s=0.1,
                                     on_update=lambda _i, state, _p: states.append(state))
            assert done.state == "finished" and states[-1] == "finished"
        finally:
            await held.__aexit__(None, None, None)


def test_the_sync_client(stack: live.LiveStack, tokens: dict[str, str], tmp_path: Path) -> None:
    with Client(stack.url, token=tokens["alice"]) as client:
        job = client.wait(client.submit("export", epub("sync")), timeout=60)
        assert job.state == "finished"
        assert client.result(job, tmp_path / "sync.epub").stat().st_size > 0
        assert job.id in [j.id for j in client.list(kind="export", limit=50)]
        assert client.get(job.id) == job
        with pytest.raises(NotFound):
            client.get(str(uuid.uuid4()))


def test_the_readme_example_runs(stack: live.LiveStack, tokens: dict[str, str], tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(block for block in blocks if "from shared.client import Client" in block)
    (tmp_path / "example.py").write_text(example)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(README.parent), "CONVEYOR_URL": stack.url,
                               "CONVEYOR_TOKEN": tokens["alice"]})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("finished ") and Path(tmp_path, lines[0].split()[1]).stat().st_size > 0
    assert lines[-1] == "payload.type"


async def test_what_json_cannot_carry_is_refused_before_it_is_sent(stack: live.LiveStack,
                                                                    tokens: dict[str, str]) -> None:
    """NaN and infinity have no JSON: orjson would send them as null, which the server takes for "not given"
    and replaces by its default. The client refuses them, naming the field; the key it was given then makes
    a job of its own, so none was made (a stored null would answer 409: another payload)."""
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        for bad in (math.nan, math.inf, -math.inf):
            key = f"finite-{uuid.uuid4()}"
            with pytest.raises(ValueError, match=r"^payload\.fail_probability is not a finite number"):
                await client.submit("task", {"description": "x", "fail_probability": bad}, idempotency_key=key)
            with pytest.raises(ValueError, match=r"^delay_s is not a finite number"):
                await client.submit("task", {"description": "x"}, delay_s=bad, idempotency_key=key)
            with pytest.raises(ValueError, match=r"^payload\.points\.1\.y is not a finite number"):
                await client.submit("task", {"description": "x", "points": [{"y": 1.0}, {"y": bad}]},
                                    idempotency_key=key)
            job = await client.submit("task", {"description": "x", "fail_probability": 0.0}, delay_s=600,
                                      idempotency_key=key)
            assert job.payload is not None and job.payload["fail_probability"] == 0.0 and job.run_at is not None
            await client.cancel(job)
    async with AsyncClient(stack.url, tokens["olga"]) as operator:
        with pytest.raises(ValueError, match=r"^ratio is not a finite number"):
            await operator.call("POST", "/dead/requeue", json={"job_ids": [], "ratio": math.nan}, retry=False)


async def test_a_limit_below_one_is_refused(stack: live.LiveStack, tokens: dict[str, str]) -> None:
    """``limit=0`` (or -1) once read a page and yielded its first job: a silently different answer."""
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        await client.cancel(await client.submit("export", epub("limited"), delay_s=600))
        for limit in (0, -1):
            with pytest.raises(ValueError, match="limit must be at least 1"):
                [job async for job in client.list(limit=limit)]
            with pytest.raises(ValueError, match="limit must be at least 1"):
                [item async for item in client.items("/jobs", limit=limit)]
        assert len([job async for job in client.list(limit=1)]) == 1
    with Client(stack.url, token=tokens["alice"]) as sync, pytest.raises(ValueError, match="limit must be at least 1"):
        list(sync.list(limit=0))


async def test_an_idempotency_key_given_is_sent_as_given(stack: live.LiveStack, tokens: dict[str, str]) -> None:
    """An empty key was swapped for one of the client's own; it goes as given, and the server refuses it."""
    async with AsyncClient(stack.url, tokens["alice"]) as client:
        with pytest.raises(ValidationError) as empty:
            await client.submit("export", epub("keyless"), idempotency_key="")
        assert empty.value.field == "Idempotency-Key"
