"""``GET /logs/stream``: new log lines pushed as server-sent events, through the real gateway, receptionist,
registry, scheduler and logging service on loopback. Lines are written straight to the logging service, as
a shipping service writes them, from services of the test's own (the process's own lines go there too)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from logging_service.app import STORE
from logging_service.app import create_app as logging_app
from logging_service.settings import Settings as LoggingSettings
from logging_service.store import MemoryLogStore
from receptionist.app import create_app as receptionist_app
from receptionist.keys import LOG_FOLLOWERS
from receptionist.log_followers import LogFollowers, fetch_lines
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from shared.http import ServiceClient
from tests.receptionist.test_redaction import TOKEN, Stack
from tests.sse import SseReader


@pytest.fixture
async def stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> tuple[Stack, Any]:
    def url(server: Any) -> str:
        return str(server.make_url("")).rstrip("/")

    registry = url(await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN))))
    scheduler = url(await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://",
                                                                         service_token=TOKEN))))
    logs = url(await aiohttp_server(logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN))))
    receptionist = await aiohttp_server(receptionist_app(ReceptionistSettings(
        registry_url=registry, scheduler_url=scheduler, logging_url=logs, artifacts_dir=str(tmp_path),
        service_token=TOKEN, sweep_interval_s=0, time_scale=0, log_stream_tick_s=0.05, log_stream_lines=5)))
    gateway = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[url(receptionist)], registry_url=registry, service_token=TOKEN, jwt_secret="j" * 48,
        rate_limit_per_s=0)))
    return Stack(gateway, registry, scheduler, logs), receptionist.app


def line(message: str, at: datetime, service: str = "streamed", **meta: Any) -> dict[str, Any]:
    return {"timestamp": at.isoformat(), "service": service, "level": "info", "message": message, "meta": meta}


async def ship(stack: Stack, *lines: dict[str, Any]) -> None:
    await stack.internal("POST", stack.logs + "/logs", json=list(lines))


async def test_new_lines_arrive_filtered_redacted_and_resumable(stack: tuple[Stack, Any]) -> None:
    s, app = stack
    ops = await s.login("olga", ["operator"])
    now = datetime.now(timezone.utc)
    await ship(s, line("before the stream", now))
    params = {"service": "streamed", "q": "WANTED"}
    async with s.gateway.get("/logs/stream", params=params, headers=ops) as resp:
        events = SseReader(resp)
        # Two followers of one filter share one reader; nothing from before the stream comes.
        async with s.gateway.get("/logs/stream", params=params, headers=ops) as second:
            assert len(app[LOG_FOLLOWERS]) == 1
            await ship(s, line("not this one", now + timedelta(seconds=1)),
                       line("wanted: one", now + timedelta(seconds=1), book_id="secret", job_id="j1"),
                       line("wanted elsewhere", now + timedelta(seconds=1), service="other"))
            first = await events.event()
            assert first.event == "log" and first.json()["message"] == "wanted: one"
            assert first.json()["meta"] == {"job_id": "j1"}  # as GET /logs shows it to an operator: redacted
            assert (await SseReader(second).event()).json()["message"] == "wanted: one"
        # A line shipped late, older than one already sent, still comes: ids follow arrival, not time.
        await ship(s, line("wanted: late", now + timedelta(milliseconds=500)))
        late = await events.event()
        assert late.json()["message"] == "wanted: late"
        assert "seq" not in late.json()  # the number is the event's id, not part of the line
        assert first.id is not None and int(late.id or 0) > int(first.id)
    # Resuming after an event: the lines that arrived after it, matching the filters, then what comes next.
    await ship(s, line("wanted: while away", now + timedelta(seconds=2)))
    async with s.gateway.get("/logs/stream", params=params,
                             headers={**ops, "Last-Event-ID": first.id}) as resp:
        events = SseReader(resp)
        assert (await events.event()).json()["message"] == "wanted: late"  # it arrived after the first
        assert (await events.event()).json()["message"] == "wanted: while away"
        await ship(s, line("wanted: after", now + timedelta(seconds=3)))
        assert (await events.event()).json()["message"] == "wanted: after"


async def test_an_id_from_before_sequence_numbers_is_taken_as_a_time(stack: tuple[Stack, Any]) -> None:
    # A browser that followed before the upgrade sends the time of its last line, in microseconds.
    s, _ = stack
    ops = await s.login("olga", ["operator"])
    now = datetime.now(timezone.utc)
    await ship(s, line("seen before", now, service="upgrade"), line("missed", now + timedelta(seconds=1),
                                                                      service="upgrade"))
    old_id = str((now - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1))
    async with s.gateway.get("/logs/stream", params={"service": "upgrade"},
                             headers={**ops, "Last-Event-ID": old_id}) as resp:
        missed = await SseReader(resp).event()
    assert missed.json()["message"] == "missed" and int(missed.id or 0) < int(old_id)


async def test_a_tick_over_its_lines_says_it_skipped_some(stack: tuple[Stack, Any]) -> None:
    s, _ = stack
    ops = await s.login("olga", ["operator"])
    now = datetime.now(timezone.utc)
    async with s.gateway.get("/logs/stream", params={"service": "burst"}, headers=ops) as resp:
        events = SseReader(resp)
        await ship(s, *[line(f"burst {n}", now + timedelta(milliseconds=n), service="burst") for n in range(8)])
        got = await events.until(lambda block: block.event == "log" and block.json()["message"] == "burst 7")
    assert got[0].event == "skipped"  # 5 lines a tick here: the 3 oldest were passed over
    assert [block.json()["message"] for block in got[1:]] == [f"burst {n}" for n in range(3, 8)]


async def test_bad_filters_and_plain_users_are_refused(stack: tuple[Stack, Any]) -> None:
    s, _ = stack
    ops, alice = await s.login("olga", ["operator"]), await s.login("alice", ["user"])
    assert (await s.gateway.get("/logs/stream", headers=alice)).status == 403
    for params, field in (({"q": ""}, "q"), ({"level": "loud"}, "level"), ({"limit": "5"}, "limit"),
                          ({"after": "soon"}, "after"), ({"job_id": "42"}, "job_id")):
        resp = await s.gateway.get("/logs/stream", params=params, headers=ops)
        assert resp.status == 400, (params, await resp.text())
        assert field in {d["field"] for d in (await resp.json())["details"]}
    resp = await s.gateway.get("/logs/stream", headers={**ops, "Last-Event-ID": "yesterday"})
    assert resp.status == 400


async def test_a_follower_goes_on_when_the_logging_service_numbers_afresh(aiohttp_server: Any) -> None:
    app = logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN))
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    now = datetime.now(timezone.utc)
    async with aiohttp.ClientSession(headers={"X-Service-Token": TOKEN}) as session:
        logs = ServiceClient("logging_service", url, session, token=TOKEN)

        async def ship_here(*lines: dict[str, Any]) -> None:
            async with session.post(url + "/logs", json=list(lines)) as resp:
                assert resp.status == 202

        await ship_here(*[line(f"before {n}", now) for n in range(5)])
        with LogFollowers().watch(logs, {"service": "streamed"}, tick_s=0.02, lines=10) as watch:
            watch.start((await fetch_lines(logs, {}, 0, 1)).last_seq)
            store = app[STORE]
            assert isinstance(store, MemoryLogStore)
            store._items.clear()  # as if it restarted: nothing kept, numbered from 1 again
            store._seq = 0
            await ship_here(line("after the restart", now))
            batches = []
            while not (batches and batches[-1][0]):
                batch = await asyncio.wait_for(watch.queue.get(), 10)
                assert batch is not None
                batches.append(batch)
    assert any(restarted for _, _, restarted in batches)
    assert [item["message"] for item in batches[-1][0]] == ["after the restart"]
