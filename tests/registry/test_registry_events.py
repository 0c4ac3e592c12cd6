"""The registry's event routes as long polls (``wait_s``), and their ``owner`` and ``kind`` filters, served
for real on loopback. A poll woken by the bell is told apart from one that found its event at the re-check
by setting the re-check far beyond the test's deadlines; ``/status`` tells when a poll is waiting."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from registry.app import create_app
from registry.settings import Settings
from tests.support import wait_until

BOOK = {"kind": "export", "type": "epub", "owner": "alice", "payload": {"bookId": "b1"}}
TASK = {"kind": "task", "type": "task", "owner": "bob", "payload": {"description": "d"}}
#: Long enough that a poll answered within a test's deadline was woken by the bell, not by the re-check.
SLOW_RECHECK_S = 10.0
DEADLINE_S = 5.0


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(Settings(store_url="memory://", event_recheck_s=SLOW_RECHECK_S)))


async def post_job(client: TestClient, **fields: Any) -> dict[str, Any]:
    resp = await client.post("/jobs", json={**BOOK, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def get_json(client: TestClient, path: str, **params: Any) -> tuple[int, Any]:
    resp = await client.get(path, params={key: str(value) for key, value in params.items()})
    return resp.status, await resp.json()


async def polls_waiting(client: TestClient, n: int = 1) -> None:
    async def waiting() -> bool:
        _, status = await get_json(client, "/status")
        return status["long_polls_waiting"] == n

    await wait_until(waiting, timeout_s=DEADLINE_S, what=f"{n} long poll(s) waiting")


async def test_a_long_poll_answers_as_soon_as_an_event_is_appended(client: TestClient) -> None:
    await post_job(client)
    _, page = await get_json(client, "/events")
    head = page["last_seq"]
    assert head == page["items"][-1]["seq"]

    poll = asyncio.create_task(get_json(client, "/events", after=head, wait_s=30))
    await polls_waiting(client)
    job = await post_job(client)
    status, page = await asyncio.wait_for(poll, DEADLINE_S)
    assert status == 200
    assert [(e["job_id"], e["type"]) for e in page["items"]] == [(job["id"], "created")]
    assert page["last_seq"] == page["items"][0]["seq"] > head


async def test_a_long_poll_with_nothing_new_answers_empty_after_wait_s(client: TestClient) -> None:
    await post_job(client)
    _, page = await get_json(client, "/events")
    status, page = await asyncio.wait_for(get_json(client, "/events", after=page["last_seq"], wait_s=0.1),
                                          DEADLINE_S)
    assert status == 200 and page["items"] == [] and page["last_seq"] == 1


async def test_events_of_one_owner_or_kind(client: TestClient) -> None:
    book = await post_job(client)
    task = await post_job(client, **TASK)
    _, page = await get_json(client, "/events", owner="bob")
    assert [e["job_id"] for e in page["items"]] == [task["id"]]
    _, page = await get_json(client, "/events", kind="export")
    assert [e["job_id"] for e in page["items"]] == [book["id"]]
    _, page = await get_json(client, "/events", owner="alice", kind="task")
    assert page["items"] == [] and page["last_seq"] == 2

    # A waiting poll of bob's ignores alice's changes (they wake it, it finds nothing of bob's and waits
    # on) and answers with bob's next one.
    poll = asyncio.create_task(get_json(client, "/events", owner="bob", after=2, wait_s=30))
    await polls_waiting(client)
    await post_job(client)
    await client.patch(f"/jobs/{book['id']}", json={"attempt": 1, "state": "processing"})
    await client.patch(f"/jobs/{task['id']}", json={"attempt": 1, "state": "processing"})
    _, page = await asyncio.wait_for(poll, DEADLINE_S)
    assert [(e["job_id"], e["state"]) for e in page["items"]] == [(task["id"], "processing")]


async def test_a_jobs_long_poll_waits_for_that_jobs_next_event(client: TestClient) -> None:
    a = await post_job(client)
    b = await post_job(client)
    _, page = await get_json(client, f"/jobs/{a['id']}/events")
    poll = asyncio.create_task(get_json(client, f"/jobs/{a['id']}/events", after=page["items"][-1]["seq"],
                                        wait_s=30))
    await polls_waiting(client)
    await client.patch(f"/jobs/{b['id']}", json={"attempt": 1, "state": "processing"})
    await client.post(f"/jobs/{a['id']}/cancel")
    status, page = await asyncio.wait_for(poll, DEADLINE_S)
    assert status == 200
    assert [(e["job_id"], e["state"], e["previous_state"]) for e in page["items"]] == [
        (a["id"], "cancelled", "pending")]


async def test_an_unknown_job_is_a_404_at_once_even_when_waiting(client: TestClient) -> None:
    status, body = await asyncio.wait_for(get_json(client, f"/jobs/{uuid.uuid4()}/events", wait_s=30), DEADLINE_S)
    assert status == 404 and body["error"]


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/events", {"wait_s": "31"}, "wait_s"),
    ("/events", {"wait_s": "-1"}, "wait_s"),
    ("/events", {"wait_s": "soon"}, "wait_s"),
    ("/events", {"kind": "No such kind"}, "kind"),
    ("/events", {"owner": "x" * 201}, "owner"),
    ("/jobs/{job_id}/events", {"owner": "alice"}, "owner"),
    ("/jobs/{job_id}/events", {"wait_s": "31"}, "wait_s"),
])
async def test_bad_event_queries_are_400(client: TestClient, path: str, params: dict[str, str], field: str) -> None:
    job = await post_job(client)
    resp = await client.get(path.format(job_id=job["id"]), params=params)
    assert resp.status == 400
    assert field in {detail["field"] for detail in (await resp.json())["details"]}


async def test_a_waiting_poll_answers_when_the_app_stops(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_app(Settings(store_url="memory://", event_recheck_s=SLOW_RECHECK_S)))

    async def poll(session: aiohttp.ClientSession) -> tuple[int, Any]:
        async with session.get(server.make_url("/events"), params={"wait_s": "30"}) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(poll(session))

        async def polls() -> bool:
            async with session.get(server.make_url("/status")) as resp:
                return (await resp.json())["long_polls_waiting"] == 1

        await wait_until(polls, timeout_s=DEADLINE_S, what="the poll to wait")
        # The app's shutdown would wait for the poll; it answers at once instead.
        await asyncio.wait_for(server.close(), DEADLINE_S)
        assert await asyncio.wait_for(waiting, DEADLINE_S) == (200, {"items": [], "last_seq": 0})


async def test_events_another_registry_process_wrote_are_found_by_the_recheck(aiohttp_client: Any,
                                                                              tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    reader = await aiohttp_client(create_app(Settings(store_url=url, event_recheck_s=0.05)))
    writer = await aiohttp_client(create_app(Settings(store_url=url)))
    poll = asyncio.create_task(get_json(reader, "/events", wait_s=30))
    await polls_waiting(reader)
    job = await post_job(writer)
    _, page = await asyncio.wait_for(poll, DEADLINE_S)
    assert [e["job_id"] for e in page["items"]] == [job["id"]]
