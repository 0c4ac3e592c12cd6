"""Tasks as the task service showed them (``GET /tasks``) and the server-sent event streams (``GET /events``,
``GET /jobs/{id}/events``), on a real receptionist in front of the real registry and scheduler (memory
stores), with a real handler doing the work, every one on loopback. Streams are read line by line with
deadlines (:mod:`tests.sse`)."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from loguru import logger

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from handler.app import create_app as handler_app
from handler.settings import Settings as HandlerSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from tests.sse import Block, SseReader
from tests.support import wait_until

TASK_TOPICS = {"topic": "task.created,task.updated"}
#: A task that works long enough (times the handler's time scale) to be seen RUNNING.
SLOW = {"description": "slow", "duration_s": 20.0, "fail_probability": 0}
QUICK = {"description": "quick", "duration_s": 1.0, "fail_probability": 0}
HANDLER_TIME_SCALE = 0.05


def who(username: str, roles: str = "user") -> dict[str, str]:
    """The identity headers the gateway would set for this caller."""
    return {"X-Conveyor-User": username, "X-Conveyor-Roles": roles}


ALICE, BOB, OPERATOR, ADMIN = who("alice"), who("bob"), who("olga", "operator"), who("root", "admin")

StartHandler = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def receptionist_settings(core: Any, tmp_path: Path) -> Callable[..., ReceptionistSettings]:
    def make(**overrides: Any) -> ReceptionistSettings:
        values: dict[str, Any] = {
            "registry_url": core.registry_url, "scheduler_url": core.scheduler_url, "artifacts_dir": str(tmp_path),
            "sweep_interval_s": 0, "time_scale": 0, "event_keepalive_s": 15.0, "event_poll_wait_s": 10.0}
        return ReceptionistSettings(**(values | overrides))

    return make


@pytest.fixture
async def client(aiohttp_client: Any, receptionist_settings: Callable[..., ReceptionistSettings]) -> TestClient:
    return await aiohttp_client(receptionist_app(receptionist_settings()))


@pytest.fixture
def start_handler(aiohttp_client: Any, core: Any, tmp_path: Path) -> StartHandler:
    async def start(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {"registry_url": core.registry_url, "scheduler_url": core.scheduler_url,
                                  "artifacts_dir": str(tmp_path), "time_scale": HANDLER_TIME_SCALE,
                                  "poll_wait_s": 1.0, "progress_interval_s": 0,
                                  "data_store_url": f"sqlite:///{tmp_path}/data.db"}
        return await aiohttp_client(handler_app(HandlerSettings(**(values | overrides))))

    return start


async def submit(client: TestClient, headers: dict[str, str], body: dict[str, Any] = QUICK) -> dict[str, Any]:
    resp = await client.post("/tasks", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def get(client: TestClient, path: str, headers: dict[str, str], **params: str) -> tuple[int, Any]:
    resp = await client.get(path, headers=headers, params=params)
    return resp.status, await resp.json()


async def task_status(client: TestClient, task_id: str, status: str) -> dict[str, Any] | None:
    code, task = await get(client, f"/tasks/{task_id}", ALICE)
    assert code == 200, task
    return task if task["status"] == status else None


async def stream(client: TestClient, path: str, headers: dict[str, str], **params: str) -> SseReader:
    return SseReader(await client.get(path, headers=headers, params=params))


async def open_streams(client: TestClient, n: int) -> None:
    async def counted() -> bool:
        return (await (await client.get("/status")).json())["event_streams"] == n

    await wait_until(counted, what=f"{n} open event stream(s)")


# GET /tasks


async def test_a_task_is_pending_then_running_then_success(client: TestClient, start_handler: StartHandler) -> None:
    task = await submit(client, ALICE, SLOW)
    code, view = await get(client, f"/tasks/{task['id']}", ALICE)
    assert code == 200
    assert view == {"id": task["id"], "description": "slow", "status": "PENDING", "attempt": 0,
                    "created_at": task["created_at"], "updated_at": task["updated_at"], "error": None}
    code, listed = await get(client, "/tasks", ALICE)
    assert code == 200 and listed == {"items": [view], "next_cursor": None}

    await start_handler()
    running = await wait_until(lambda: task_status(client, task["id"], "RUNNING"), what="the task RUNNING")
    assert running["attempt"] == 1 and running["error"] is None
    done = await wait_until(lambda: task_status(client, task["id"], "SUCCESS"), timeout_s=30,
                            what="the task SUCCESS")
    assert done["attempt"] == 1 and done["error"] is None and done["updated_at"] > running["created_at"]
    _, listed = await get(client, "/tasks", ALICE)
    assert listed["items"] == [done]


async def test_a_task_failing_every_attempt_is_failed(client: TestClient, start_handler: StartHandler) -> None:
    task = await submit(client, ALICE, {"description": "doomed", "duration_s": 0, "fail_probability": 1})
    await start_handler()
    failed = await wait_until(lambda: task_status(client, task["id"], "FAILED"), timeout_s=30,
                              what="the task FAILED")
    assert failed["attempt"] == 3 and failed["error"] == "TaskFailed: the task failed (simulated)"


async def test_a_cancelled_task_is_cancelled(client: TestClient) -> None:
    task = await submit(client, ALICE)
    assert (await client.delete(f"/jobs/{task['id']}", headers=ALICE)).status == 200
    code, view = await get(client, f"/tasks/{task['id']}", ALICE)
    assert code == 200 and view["status"] == "CANCELLED"


async def test_tasks_are_their_owners_only_newest_first_and_paged(client: TestClient) -> None:
    ids = [(await submit(client, ALICE, {**QUICK, "description": f"t{i}"}))["id"] for i in range(3)]
    bobs = await submit(client, BOB)
    export = await (await client.post("/exports", json={"bookId": "b", "type": "epub"}, headers=ALICE)).json()

    code, page = await get(client, "/tasks", ALICE, limit="2")
    assert code == 200 and [t["id"] for t in page["items"]] == ids[:0:-1]
    resp = await client.get("/tasks", headers=ALICE, params={"limit": "2"})
    assert resp.headers["Link"] == f'</tasks?limit=2&cursor={page["next_cursor"]}>; rel="next"'
    _, rest = await get(client, "/tasks", ALICE, limit="2", cursor=page["next_cursor"])
    assert [t["id"] for t in rest["items"]] == ids[:1] and rest["next_cursor"] is None

    _, of_bob = await get(client, "/tasks", BOB)
    assert [t["id"] for t in of_bob["items"]] == [bobs["id"]]
    for headers, task_id in ((BOB, ids[0]), (OPERATOR, ids[0]), (ALICE, bobs["id"]), (ALICE, export["id"]),
                             (ALICE, str(uuid.uuid4())), (ALICE, "not-a-uuid")):
        code, body = await get(client, f"/tasks/{task_id}", headers)
        assert code == 404 and body["error"], (headers, task_id)
    assert (await get(client, "/tasks", OPERATOR))[0] == 403
    assert (await get(client, "/tasks", ADMIN))[0] == 403
    code, body = await get(client, "/tasks", ALICE, limit="0")
    assert code == 400 and {d["field"] for d in body["details"]} == {"limit"}


# The event streams


def ids_of(blocks: list[Block]) -> list[int]:
    return [int(block.id) for block in blocks if block.id is not None]


async def test_a_users_stream_shows_their_task_from_created_to_success(client: TestClient,
                                                                       start_handler: StartHandler) -> None:
    alice = await stream(client, "/events", ALICE, **TASK_TOPICS)
    bob = await stream(client, "/events", BOB, **TASK_TOPICS)
    operator = await stream(client, "/events", OPERATOR)
    task = await submit(client, ALICE)

    created = await alice.event()
    assert (created.event, created.json()) == ("task.created", {
        "task_id": task["id"], "user_id": "alice", "status": "PENDING", "description": "quick"})
    await start_handler()
    updates = await alice.until(lambda b: b.json()["status"] == "SUCCESS")
    assert {b.event for b in updates} == {"task.updated"}
    statuses = [b.json()["status"] for b in updates]
    assert statuses[0] == "RUNNING" and set(statuses[:-1]) == {"RUNNING"}
    assert updates[-1].json() == {"task_id": task["id"], "user_id": "alice", "status": "SUCCESS", "attempt": 1,
                                  "error": None}
    seen = [created, *updates]
    assert ids_of(seen) == sorted(ids_of(seen)) and len(ids_of(seen)) == len(seen)

    # The operator sees it all, tasks' descriptions aside, and every job's changes as job.updated.
    first = await operator.until(lambda b: b.event == "task.created")
    assert first[-1].json() == {"task_id": task["id"], "user_id": "alice", "status": "PENDING", "description": None}
    rest = await operator.until(lambda b: b.event == "job.updated" and b.json()["state"] == "finished")
    job_updates = [b.json() for b in [*first, *rest] if b.event == "job.updated"]
    assert job_updates[0] == {"job_id": task["id"], "kind": "task", "owner": "alice", "state": "pending",
                              "previous_state": None, "attempt": 0, "progress": 0.0}
    assert job_updates[-1]["previous_state"] == "processing" and job_updates[-1]["progress"] == 1.0
    assert all(set(update) == set(job_updates[0]) for update in job_updates)

    # Bob saw nothing of it: the first thing his stream shows is his own task.
    bobs = await submit(client, BOB)
    first_of_bob = await bob.event()
    assert first_of_bob.json()["task_id"] == bobs["id"] and first_of_bob.json()["user_id"] == "bob"


async def test_a_stream_resumes_after_last_event_id(client: TestClient, start_handler: StartHandler) -> None:
    alice = await stream(client, "/events", ALICE, **TASK_TOPICS)
    task = await submit(client, ALICE)
    await start_handler()
    seen = await alice.until(lambda b: b.json()["status"] == "SUCCESS")
    created, after_created = seen[0], seen[1:]
    assert created.event == "task.created" and created.id is not None

    resumed = await stream(client, "/events", {**ALICE, "Last-Event-ID": created.id}, **TASK_TOPICS)
    again = await resumed.until(lambda b: b.json()["status"] == "SUCCESS")
    assert [(b.id, b.event, b.data) for b in again] == [(b.id, b.event, b.data) for b in after_created]
    # The header wins over ?after= (a reconnecting EventSource keeps its first URL).
    by_query = await stream(client, "/events", {**ALICE, "Last-Event-ID": after_created[0].id},
                            after=created.id, **TASK_TOPICS)
    assert (await by_query.event()).id == after_created[1].id
    by_query = await stream(client, "/events", ALICE, after=str(int(created.id) - 1), **TASK_TOPICS)
    assert (await by_query.event()).data == created.data
    assert task["id"] == created.json()["task_id"]


async def test_event_ids_are_unique_in_a_stream_and_resuming_between_two_of_one_change_loses_neither(
        client: TestClient, start_handler: StartHandler) -> None:
    """A task's change is a task event and a job event: ``seq-1`` then ``seq``. Resumed from the first,
    the stream gives the second, then what came after; never an event twice, never one skipped."""
    task = await submit(client, ALICE)
    history = await stream(client, f"/jobs/{task['id']}/events", ALICE)
    await start_handler()
    seen = await history.rest(timeout_s=30)
    ids = [b.id for b in seen]
    assert len(ids) == len(set(ids)) and len(ids) >= 6  # created, running, finished: two events each
    assert [b.event for b in seen[:2]] == ["task.created", "job.updated"]
    first, second = seen[0].id, seen[1].id
    assert first == f"{second}-1" and second.isdigit()

    resumed = await stream(client, f"/jobs/{task['id']}/events", {**ALICE, "Last-Event-ID": first})
    assert [(b.id, b.event, b.data) for b in await resumed.rest()] == [(b.id, b.event, b.data) for b in seen[1:]]
    resumed = await stream(client, f"/jobs/{task['id']}/events", {**ALICE, "Last-Event-ID": second})
    assert [b.id for b in await resumed.rest()] == ids[2:]
    # One topic: one event a change, whose id is the seq.
    only_jobs = await stream(client, f"/jobs/{task['id']}/events", ALICE, topic="job.updated")
    assert [b.id for b in await only_jobs.rest()] == [i for i in ids if "-" not in i]


async def test_a_jobs_stream_ends_after_its_final_state(client: TestClient, start_handler: StartHandler) -> None:
    task = await submit(client, ALICE, {**QUICK, "duration_s": 10.0})
    live = await stream(client, f"/jobs/{task['id']}/events", ALICE)
    first = await live.event()
    assert (first.event, first.json()["task_id"]) == ("task.created", task["id"])
    await start_handler()
    rest = await live.rest(timeout_s=30)
    assert live.ended
    assert (rest[-1].event, rest[-1].json()["state"]) == ("job.updated", "finished")
    assert (rest[-2].event, rest[-2].json()["status"]) == ("task.updated", "SUCCESS")
    history = [first, *rest]
    assert {b.json().get("task_id") or b.json()["job_id"] for b in history} == {task["id"]}

    # Opened after the end: the whole history, then the end; resumed from the end: nothing, the end.
    replay = await stream(client, f"/jobs/{task['id']}/events", OPERATOR)
    assert [(b.id, b.event) for b in await replay.rest()] == [(b.id, b.event) for b in history]
    done = await stream(client, f"/jobs/{task['id']}/events", {**ALICE, "Last-Event-ID": history[-1].id})
    assert await done.rest() == []
    only_tasks = await stream(client, f"/jobs/{task['id']}/events", ALICE, topic="task.updated")
    assert {b.event for b in await only_tasks.rest()} == {"task.updated"}

    for headers, job_id in ((BOB, task["id"]), (ALICE, str(uuid.uuid4())), (ALICE, "nope")):
        resp = await client.get(f"/jobs/{job_id}/events", headers=headers)
        assert resp.status == 404 and resp.content_type == "application/json"


async def test_a_redriven_jobs_stream_goes_past_its_first_failure_to_its_last_event(
        client: TestClient, start_handler: StartHandler) -> None:
    """A failed job is final until an operator redrives it: then it is pending again and its later
    attempts follow. Its stream ends at a final state only when that is the job's last event, so its
    history is whole (``conveyor job`` shows what the stream gives), not cut at the first failure."""
    task = await submit(client, ALICE, {"description": "doomed", "duration_s": 0, "fail_probability": 1})
    live = await stream(client, f"/jobs/{task['id']}/events", ALICE, topic="job.updated")
    await start_handler()

    async def failed_after(attempt: int) -> dict[str, Any] | None:
        found = await task_status(client, task["id"], "FAILED")
        return found if found is not None and found["attempt"] == attempt else None

    async def redrive() -> None:
        resp = await client.post("/dead/requeue", json={"job_ids": [task["id"]]}, headers=OPERATOR)
        assert (resp.status, (await resp.json())["requeued"]) == (200, [task["id"]])

    # Open before the first failure: it ended there, final when it ended.
    first_run = await live.rest(timeout_s=30)
    assert live.ended and [b.json()["state"] for b in first_run][-1] == "failed"
    await wait_until(lambda: failed_after(3), timeout_s=30, what="the task FAILED after 3 attempts")

    # Opened after a redrive (the job pending, running or failed again by then): on to the next failure.
    await redrive()
    after_one = await stream(client, f"/jobs/{task['id']}/events", ALICE, topic="job.updated")
    states = [(b.json()["state"], b.json()["attempt"]) for b in await after_one.rest(timeout_s=30)]
    assert after_one.ended and states.count(("failed", 3)) == 1 and states[-1] == ("failed", 6)

    await wait_until(lambda: failed_after(6), timeout_s=30, what="the task FAILED after 6 attempts")
    await redrive()
    await wait_until(lambda: failed_after(9), timeout_s=30, what="the task FAILED after 9 attempts")
    # Failed now, after two redrives: the whole history, ended after its last event.
    whole = await stream(client, f"/jobs/{task['id']}/events", OPERATOR, topic="job.updated")
    history = await whole.rest()
    assert whole.ended
    assert [b.json()["attempt"] for b in history if b.json()["state"] == "failed"] == [3, 6, 9]
    assert history[-1].json()["state"] == "failed" and len({b.id for b in history}) == len(history)
    assert [b.id for b in history[:len(first_run)]] == [b.id for b in first_run]
    # Resumed after the first failure: the rest of it, to the same end.
    resumed = await stream(client, f"/jobs/{task['id']}/events", {**ALICE, "Last-Event-ID": first_run[-1].id},
                           topic="job.updated")
    assert [b.id for b in await resumed.rest()] == [b.id for b in history[len(first_run):]]


async def test_a_quiet_stream_gets_keep_alives(aiohttp_client: Any, receptionist_settings: Any) -> None:
    client = await aiohttp_client(receptionist_app(receptionist_settings(event_keepalive_s=0.05,
                                                                         event_poll_wait_s=0.2)))
    quiet = await stream(client, "/events", ALICE)
    for _ in range(3):
        block = await quiet.block()
        assert block is not None and not block.is_event and block.comments == ["keep-alive"]
    task = await submit(client, ALICE)
    assert (await quiet.event()).json()["task_id"] == task["id"]


async def test_through_the_gateway_a_quiet_stream_outlives_its_read_timeout(
        aiohttp_client: Any, aiohttp_server: Any, core: Any, receptionist_settings: Any) -> None:
    receptionist = await aiohttp_server(receptionist_app(receptionist_settings(event_keepalive_s=0.1)))
    gateway = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[str(receptionist.make_url("")).rstrip("/")], registry_url=core.registry_url,
        upstream_timeout_s=0.5, rate_limit_per_s=0)))
    quiet = SseReader(await gateway.get("/events", params=TASK_TOPICS))
    # Twelve keep-alives take longer than the gateway's read timeout; without them it would cut the stream.
    for _ in range(12):
        block = await quiet.block()
        assert block is not None and block.comments == ["keep-alive"]
    resp = await gateway.post("/tasks", json=QUICK)
    assert resp.status == 201
    created = await quiet.event()
    assert created.event == "task.created" and created.json()["task_id"] == (await resp.json())["id"]
    assert created.json()["user_id"] == "anonymous"


@pytest.fixture
async def served(receptionist_settings: Callable[..., ReceptionistSettings]) -> AsyncIterator[Served]:
    """A receptionist served as ``shared.web.run`` serves it: unlike the test server, aiohttp does not cancel
    a handler whose client went away, so the stream itself has to notice."""
    runner = web.AppRunner(receptionist_app(receptionist_settings()), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
        yield Served(runner, session)
        if runner.server is not None:  # not stopped by the test already
            await runner.cleanup()


class Served:
    def __init__(self, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.session = session

    async def stream(self, path: str, headers: dict[str, str]) -> SseReader:
        return SseReader(await self.session.get(path, headers=headers))

    async def open_streams(self, n: int) -> None:
        async def counted() -> bool:
            async with self.session.get("/status") as resp:
                return (await resp.json())["event_streams"] == n

        await wait_until(counted, what=f"{n} open event stream(s)")


async def test_a_stream_ends_when_its_client_goes_away(served: Served) -> None:
    alice = await served.stream("/events", ALICE)
    await served.open_streams(1)
    alice.resp.close()
    await served.open_streams(0)


@pytest.fixture
def problems() -> Iterator[list[str]]:
    """Every WARNING or worse logged (loguru or the standard library's, aiohttp's), with tracebacks."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    yield lines
    logging.getLogger().removeHandler(handler)
    logger.remove(sink)


async def test_streams_end_cleanly_when_the_app_stops(served: Served, problems: list[str]) -> None:
    readers = [await served.stream(path, ALICE) for path in ("/events", "/events")]
    await served.open_streams(2)
    # Well within the runner's shutdown timeout: the streams end at once, they are not cancelled at its end.
    await asyncio.wait_for(served.runner.cleanup(), 2)
    for reader in readers:
        assert await reader.rest(timeout_s=1) == [] and reader.ended
    assert problems == []


async def test_bad_stream_requests(aiohttp_client: Any, client: TestClient, receptionist_settings: Any) -> None:
    for params, reason in (({"topic": "task.deleted"}, "'task.deleted' is not a topic"),
                           ({"topic": "task.created,nope"}, "'nope' is not a topic"),
                           ({"topic": "task.created,"}, "an empty topic")):
        resp = await client.get("/events", params=params, headers=ALICE)
        assert resp.status == 400, params
        details = (await resp.json())["details"]
        assert [d["field"] for d in details] == ["topic"] and reason in details[0]["message"], details
        assert "task.created, task.updated, job.updated" in details[0]["message"] or "empty" in reason
    for params, headers, field in (({"after": "-1"}, ALICE, "after"),
                                   ({"after": str(2**64)}, ALICE, "after"),
                                   ({}, {**ALICE, "Last-Event-ID": "yesterday"}, "Last-Event-ID"),
                                   ({}, {**ALICE, "Last-Event-ID": "12-0"}, "Last-Event-ID"),
                                   ({}, {**ALICE, "Last-Event-ID": str(2**63)}, "Last-Event-ID")):
        resp = await client.get("/events", params=params, headers=headers)
        assert resp.status == 400 and resp.content_type == "application/json", params
        assert field in {d["field"] for d in (await resp.json())["details"]}, params
    assert (await client.get("/events", headers=ADMIN)).status == 403

    limited = await aiohttp_client(receptionist_app(receptionist_settings(event_streams_max=1)))
    first = await stream(limited, "/events", ALICE)
    resp = await limited.get("/events", headers=BOB)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    first.resp.close()
    await open_streams(limited, 0)
    await stream(limited, "/events", BOB)


async def test_an_unreachable_registry_is_a_503_before_any_stream(aiohttp_client: Any,
                                                                  receptionist_settings: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = await aiohttp_client(receptionist_app(receptionist_settings(registry_url=closed)))
    resp = await client.get("/events", headers=ALICE)
    assert resp.status == 503 and resp.content_type == "application/json"
