"""A client's deadlines (:mod:`shared.server`): a request's head must come whole within ``head_timeout_s``
of its first byte, and a body must not stop for longer than ``body_idle_s``. aiohttp alone waits forever,
so a client sending a byte now and then (slowloris), or nothing, held a connection and its file
descriptor for good. Past a deadline: a 408 JSON answer, and the connection closes. Served by
:func:`shared.server.serve` as every service is, talked to over raw sockets; one test runs a real service
process with the deadline from its settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.settings import Settings as GatewaySettings
from scheduler.settings import Settings as SchedulerSettings
from shared.server import serve
from tests.conftest import Core
from tests.shared.test_server import _free_port, exchange, service_apps, split_answer

DEADLINE_S = 0.4
#: Long enough for any deadline to have passed and the server to have acted on it, on a slow machine.
WAIT_S = 10.0
HEAD = b"GET /health HTTP/1.1\r\nHost: a\r\n"


def _echo_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    """Serve an app with the deadlines at :data:`DEADLINE_S`; its port."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application | None = None, **deadlines: float) -> int:
        runner = await serve(app or _echo_app(), "127.0.0.1", 0, **{
            "head_timeout_s": DEADLINE_S, "body_idle_s": DEADLINE_S, **deadlines})
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def _answer_then_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a timeout fails the test: it never closed)."""
    return await asyncio.wait_for(reader.read(), WAIT_S)


def _timed_out(answer: bytes, field: str) -> dict[str, Any]:
    status, headers, body = split_answer(answer)
    assert status == 408, answer
    assert headers["content-type"].startswith("application/json") and headers.get("connection") == "close", answer
    data = orjson.loads(body)
    assert data["error"] == "request timeout" and [d["field"] for d in data["details"]] == [field], data
    return data


async def test_a_head_that_never_ends_is_a_408_and_the_connection_closes(started: Any) -> None:
    port = await started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"X-Slow: ")
    began = time.monotonic()
    answer = await _answer_then_close(reader)
    writer.close()
    data = _timed_out(answer, "request")
    assert f"within {DEADLINE_S:g} s" in data["details"][0]["message"]
    assert time.monotonic() - began >= DEADLINE_S * 0.9


async def test_a_connection_that_sends_nothing_is_closed(started: Any) -> None:
    port = await started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _timed_out(await _answer_then_close(reader), "request")
    writer.close()


async def test_a_byte_now_and_then_does_not_hold_the_head_open(started: Any) -> None:
    """The deadline counts from the head's first byte: a trickle that never ends it is closed all the same."""
    port = await started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)

    async def trickle() -> None:
        while not writer.is_closing():
            writer.write(b"X")
            await asyncio.sleep(DEADLINE_S / 4)

    dripping = asyncio.create_task(trickle())
    began = time.monotonic()
    try:
        _timed_out(await _answer_then_close(reader), "request")
    finally:
        dripping.cancel()
        writer.close()
    assert time.monotonic() - began < WAIT_S / 2


async def test_a_kept_alive_connection_waits_between_requests(started: Any) -> None:
    """Between two requests the connection idles as long as aiohttp's keep-alive allows: the head's
    deadline starts with the next request's first byte, not with the last answer."""
    port = await started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(HEAD + b"\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(split_answer(head)[1]["content-length"])
            assert orjson.loads(await asyncio.wait_for(reader.readexactly(length), WAIT_S)) == {"ok": True}
            await asyncio.sleep(DEADLINE_S * 3)  # idle, well past the head's deadline
    finally:
        writer.close()


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(started: Any) -> None:
    """The gateway's setting (75 s; aiohttp's hour elsewhere) reaches aiohttp: the connection is closed."""
    port = await started(keepalive_timeout_s=DEADLINE_S)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"\r\n")
    answer = await _answer_then_close(reader)  # the answer, then nothing: the server closed the connection
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok": true}'), answer
    assert GatewaySettings().keepalive_timeout_s == 75 and SchedulerSettings().keepalive_timeout_s == 3630


async def test_a_body_that_stops_is_a_408_one_that_trickles_is_read(started: Any, core: Core, tmp_path: Path) -> None:
    """A receptionist, as served: a submission whose body stops is a 408 naming ``body``; one whose bytes
    come a quarter of the deadline apart takes longer than the deadline in all, and is accepted."""
    port = await started(service_apps(core, tmp_path)["receptionist"]())
    body = b'{"description": "slow"}'
    post = (b"POST /tasks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post + body[:5])
    data = _timed_out(await _answer_then_close(reader), "body")
    assert f"for {DEADLINE_S:g} s" in data["details"][0]["message"]
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(post)
        for at in range(0, len(body), 4):
            await asyncio.sleep(DEADLINE_S / 4)
            writer.write(body[at:at + 4])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 201 "), head
        length = int(split_answer(head)[1]["content-length"])
        assert orjson.loads(await asyncio.wait_for(reader.readexactly(length), WAIT_S))["description"] == "slow"
    finally:
        writer.close()


async def test_the_gateway_answers_a_body_that_stops_with_a_408(started: Any, core: Core, tmp_path: Path) -> None:
    """The gateway reads a small submission whole before relaying it (to send it again if need be): a
    client that stops half-way gets the 408, and no receptionist hears of it."""
    port = await started(service_apps(core, tmp_path)["gateway"]())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /tasks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                 b'{"description": ')
    _timed_out(await _answer_then_close(reader), "body")
    writer.close()


async def test_a_service_process_takes_the_deadline_from_its_settings(tmp_path: Path) -> None:
    """``python -m scheduler`` with ``SCHEDULER_REQUEST_HEAD_TIMEOUT_S``: an unfinished head is a 408."""
    port = _free_port()
    env = {**os.environ, "SCHEDULER_PORT": str(port), "SCHEDULER_STORE_URL": "memory://",
           "SCHEDULER_REQUEST_HEAD_TIMEOUT_S": str(DEADLINE_S)}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = await exchange(port, HEAD + b"Connection: close\r\n\r\n")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert split_answer(answer)[0] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + b"X-Slow: ")
        _timed_out(await _answer_then_close(reader), "request")
        writer.close()
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
