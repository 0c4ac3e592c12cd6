"""shared.logs.LogShipper against the real logging service: lines arrive with their meta, a down service
never blocks logging, and what waited is delivered once the service is back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from loguru import logger

from logging_service.app import create_app
from logging_service.settings import Settings
from shared.logs import LogShipper

Server = Callable[..., Awaitable[TestServer]]
Client = Callable[..., Awaitable[TestClient]]


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def items(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get("/logs", params={"limit": 5000, **params})
    assert resp.status == 200
    return (await resp.json())["items"]


async def test_lines_arrive_with_their_job_id(aiohttp_server: Server, aiohttp_client: Client) -> None:
    server = await aiohttp_server(create_app(Settings(store_url="memory://")))
    client = await aiohttp_client(server)
    shipper = LogShipper(str(server.make_url("/")), "worker", interval_s=0.02)
    async with shipper.running():
        for step in range(3):
            logger.bind(job_id="job-1").info("step {}", step)
        logger.debug("below the shipper's level")

        async def arrived() -> bool:
            return len(await items(client, service="worker", job_id="job-1")) == 3

        await eventually(arrived)
    got = await items(client, service="worker")
    assert [i["message"] for i in got] == ["step 2", "step 1", "step 0"]
    assert all(i["meta"]["job_id"] == "job-1" and i["level"] == "info" for i in got)
    assert shipper.stats()["shipped"] == 3


async def test_a_value_json_cannot_encode_does_not_stop_shipping(aiohttp_server: Server,
                                                                 aiohttp_client: Client) -> None:
    server = await aiohttp_server(create_app(Settings(store_url="memory://")))
    client = await aiohttp_client(server)
    shipper = LogShipper(str(server.make_url("/")), "worker", interval_s=0.02)
    async with shipper.running():
        logger.bind(path=Path("/tmp/out.epub"), job_id="job-2").info("wrote the file")
        logger.bind(job_id="job-2").info("after it")

        async def arrived() -> bool:
            return len(await items(client, service="worker", job_id="job-2")) == 2

        await eventually(arrived)
    got = await items(client, service="worker", job_id="job-2")
    assert got[1]["meta"]["path"] == "/tmp/out.epub"


async def test_a_down_service_never_blocks_and_gets_the_newest_lines_later(aiohttp_server: Server,
                                                                           aiohttp_client: Client) -> None:
    port = free_port()  # nothing listens here yet
    capacity = 100
    shipper = LogShipper(f"http://127.0.0.1:{port}", "worker-down", buffer=capacity, batch=50, interval_s=0.02)
    async with shipper.running():
        # The event loop does not run while these are logged, so no line can leave: the sink must take
        # them all without waiting, keeping the newest ``capacity`` and counting the rest as dropped.
        for i in range(20_000):
            logger.info("line {}", i)
        assert shipper.stats() == {"shipped": 0, "dropped": 20_000 - capacity, "failed_posts": 0,
                                   "waiting": capacity}

        await eventually(lambda: shipper.stats()["failed_posts"] >= 2)
        assert shipper.stats()["waiting"] == capacity  # a failed batch goes back, nothing more is lost

        server = await aiohttp_server(create_app(Settings(store_url="memory://")), port=port)
        client = await aiohttp_client(server)
        await eventually(lambda: shipper.stats()["shipped"] == capacity)
    got = await items(client, service="worker-down")
    assert [i["message"] for i in got] == [f"line {i}" for i in range(19_999, 19_999 - capacity, -1)]
    assert shipper.stats()["dropped"] == 20_000 - capacity


async def test_lines_in_a_post_under_way_still_count_as_waiting(aiohttp_server: Server) -> None:
    from aiohttp import web

    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_logs(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"stored": len(await request.json())})

    app = web.Application()
    app.router.add_post("/logs", slow_logs)
    server = await aiohttp_server(app)
    shipper = LogShipper(str(server.make_url("/")), "worker-slow", buffer=100, batch=10, interval_s=0.02)
    async with shipper.running():
        for i in range(30):
            logger.info("line {}", i)
        await asyncio.wait_for(arrived.wait(), 10)
        # Ten lines are out in the post, twenty in the buffer: none is delivered yet.
        assert shipper.stats()["waiting"] == 30
        release.set()
        await eventually(lambda: shipper.stats()["shipped"] == 30)
        assert shipper.stats()["waiting"] == 0


async def test_a_filling_buffer_does_not_cut_the_backoff_short() -> None:
    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "worker-busy", buffer=100, batch=10, interval_s=5)
    async with shipper.running():
        for i in range(10):  # a full batch wakes the shipper: its post fails, the backoff is now 10 s
            logger.info("line {}", i)
        await eventually(lambda: shipper.stats()["failed_posts"] == 1)
        # A busy service keeps logging (and waking the shipper) while the logging service is down; the
        # shipper must not retry before its backoff is over (here, well within 10 s).
        for i in range(200):
            logger.info("more {}", i)
            await asyncio.sleep(0.002)
        assert shipper.stats()["failed_posts"] == 1


async def test_a_services_metrics_count_the_log_lines_it_could_not_ship(aiohttp_client: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from scheduler.app import create_app as scheduler_app
    from scheduler.settings import Settings as SchedulerSettings

    # Nothing listens on port 9: every line waits, and past the buffer of 100 the oldest are dropped.
    client = await aiohttp_client(scheduler_app(SchedulerSettings(store_url="memory://", log_url="http://127.0.0.1:9",
                                                                  log_buffer=100)))
    for i in range(150):
        logger.warning("line {}", i)
    text = await (await client.get("/metrics")).text()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert values["conveyor_log_lines_dropped_total"] >= 50
    assert values["conveyor_log_lines_shipped_total"] == 0


async def test_the_stderr_line_and_the_shipped_one_are_one_record(aiohttp_server: Server, aiohttp_client: Client,
                                                                  capsys: Any) -> None:
    import orjson

    from shared.logs import _json_sink

    server = await aiohttp_server(create_app(Settings(store_url="memory://")))
    client = await aiohttp_client(server)
    shipper = LogShipper(str(server.make_url("/")), "worker", interval_s=0.02)
    stderr_sink = logger.add(_json_sink("worker"), level="INFO", format="{message}")
    try:
        async with shipper.running():
            logger.bind(job_id="job-2").info("plain")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.bind(job_id="job-2").exception("failed")

            async def arrived() -> bool:
                return len(await items(client, job_id="job-2")) == 2

            await eventually(arrived)
    finally:
        logger.remove(stderr_sink)
    written = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    shipped = {i["message"]: i for i in await items(client, job_id="job-2")}
    assert [line["message"] for line in written] == ["plain", "failed"]
    # The local line carries the traceback; the shipped one only names the exception.
    assert "Traceback" in written[1]["meta"]["traceback"] and "traceback" not in shipped["failed"]["meta"]
    assert shipped["failed"]["meta"]["exception"] == written[1]["meta"]["exception"] == "ValueError: boom"
    assert "traceback" not in written[0]["meta"] and shipped["plain"]["meta"]["job_id"] == "job-2"


async def test_a_line_the_service_cannot_store_is_lost_alone(aiohttp_server: Server, aiohttp_client: Client) -> None:
    """The logging service refuses a batch whole for one line it cannot store (a NUL in its message, an
    integer past 64 bits) or for its size: the lines that shared the batch still arrive, each once."""
    server = await aiohttp_server(create_app(Settings(store_url="memory://", max_body_bytes=64 * 1024)))
    client = await aiohttp_client(server)
    shipper = LogShipper(str(server.make_url("/")), "worker", interval_s=60)  # one batch, when stopped
    await shipper.start()
    for i in range(20):
        logger.bind(job_id="job-3").info("line {}", i)
        if i == 5:
            logger.bind(job_id="job-3").info("a NUL \x00 in a message")
        if i == 10:
            logger.bind(job_id="job-3", n=2**70).info("an integer past 64 bits")
        if i == 15:
            logger.bind(job_id="job-3", blob="a" * 100_000).info("a line larger than a batch may be")
    await shipper.stop()
    got = await items(client, service="worker", job_id="job-3")
    assert sorted(line["message"] for line in got) == sorted(f"line {i}" for i in range(20))
    assert (shipper.shipped, shipper.refused) == (20, 3)
