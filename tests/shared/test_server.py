"""Requests aiohttp's parser refuses before any handler: every service answers them with a JSON error that
echoes nothing of the request, and logs one line without a traceback.

The apps are served by :func:`shared.server.serve`, the way ``python -m <service>`` serves them, and talked
to over raw sockets (no HTTP client would send these requests); one test runs a real service process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from loguru import logger

from shared.server import serve
from tests.conftest import Core
from tests.support import wait_until

MARK = b"<evil\xc3\xa9>"
#: name -> the raw request, which carries MARK where the fault is (or as near as the fault allows).
MALFORMED: dict[str, bytes] = {
    "header over 8 KB": b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + MARK + b"A" * 9000 + b"\r\n\r\n",
    "request line over 8 KB": b"GET /" + MARK + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "control byte in the path": b"GET /health\x01" + MARK + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad chunk size": (b"POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"ZZ" + MARK + b"\r\nabc\r\n0\r\n\r\n"),
    "Content-Length with Transfer-Encoding": (b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                                              b"Transfer-Encoding: chunked\r\nX-Mark: " + MARK + b"\r\n\r\n"
                                              b"3\r\nabc\r\n0\r\n\r\n"),
    "malformed request line": b"GARBAGE" + MARK + b"\r\n\r\n",
    "bad method": b"G\x00ET" + MARK + b" /health HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad version": b"GET /health HTTP/9." + MARK + b"\r\nHost: a\r\n\r\n",
    "bad header name": b"GET /health HTTP/1.1\r\nHost: a\r\nX" + MARK + b": 1\r\n\r\n",
    "too many headers": (b"GET /health HTTP/1.1\r\nHost: a\r\n"
                         + b"".join(b"X-%d: %s\r\n" % (i, MARK) for i in range(200)) + b"\r\n"),
}


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; the whole answer, until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def port_of(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


async def _started(runner: web.AppRunner) -> bool:
    assert runner.server is not None
    return runner.server.requests_count > 0


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_json_refusal(answer: bytes) -> dict[str, Any]:
    status, headers, body = split_answer(answer)
    assert status == 400, answer
    assert headers["content-type"].startswith("application/json"), answer
    assert b"evil" not in answer and b"GARBAGE" not in answer and b"AAAA" not in answer, answer
    data = orjson.loads(body)
    assert data["error"] == "malformed request"
    assert len(data["details"]) == 1 and set(data["details"][0]) == {"field", "message"}
    return data


@pytest.fixture
def log_lines() -> Iterator[list[Any]]:
    """Every loguru record at DEBUG or above, while the test runs."""
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    yield records
    logger.remove(sink)


def service_apps(core: Core, tmp_path: Path) -> dict[str, Callable[[], web.Application]]:
    from gateway.app import create_app as gateway_app
    from gateway.settings import Settings as GatewaySettings
    from handler.app import create_app as handler_app
    from handler.settings import Settings as HandlerSettings
    from logging_service.app import create_app as logging_app
    from logging_service.settings import Settings as LoggingSettings
    from receptionist.app import create_app as receptionist_app
    from receptionist.settings import Settings as ReceptionistSettings
    from registry.app import create_app as registry_app
    from registry.settings import Settings as RegistrySettings
    from scheduler.app import create_app as scheduler_app
    from scheduler.settings import Settings as SchedulerSettings

    return {
        "gateway": lambda: gateway_app(GatewaySettings(receptionists=["http://127.0.0.1:9"],
                                                       registry_url=core.registry_url, rate_limit_per_s=0)),
        "receptionist": lambda: receptionist_app(ReceptionistSettings(
            registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
            sweep_interval_s=0, data_store_url=f"sqlite:///{tmp_path}/data.db")),
        "handler": lambda: handler_app(HandlerSettings(
            registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
            poll_wait_s=1.0, data_store_url=f"sqlite:///{tmp_path}/data.db")),
        "registry": lambda: registry_app(RegistrySettings(store_url="memory://")),
        "scheduler": lambda: scheduler_app(SchedulerSettings(store_url="memory://")),
        "logging_service": lambda: logging_app(LoggingSettings(store_url="memory://")),
    }


@pytest.fixture
async def served(core: Core, tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """Start one service's app with :func:`shared.server.serve`; its runner."""
    runners: list[web.AppRunner] = []
    apps = service_apps(core, tmp_path)

    async def start(service: str) -> web.AppRunner:
        runner = await serve(apps[service](), "127.0.0.1", 0)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("service", ["gateway", "receptionist", "handler", "registry", "scheduler",
                                     "logging_service"])
async def test_every_service_refuses_malformed_requests_with_json(served: Any, log_lines: list[Any],
                                                                   service: str) -> None:
    port = port_of(await served(service))
    for name, raw in MALFORMED.items():
        log_lines.clear()
        answer = await exchange(port, raw)
        assert_json_refusal(answer)
        refusals = [r for r in log_lines if r["message"].startswith("refused a malformed request")]
        assert len(refusals) == 1, (name, [r["message"] for r in log_lines])
        assert "evil" not in refusals[0]["message"]
        assert all(r["exception"] is None for r in log_lines), name
        assert all(r["level"].no < 40 for r in log_lines), name


async def test_the_refusal_names_the_fault(served: Any) -> None:
    port = port_of(await served("registry"))
    expected = {
        "header over 8 KB": "headers",
        "control byte in the path": "path",
        "bad chunk size": "request",
        "malformed request line": "method",
        "bad version": "request line",
    }
    for name, field in expected.items():
        data = assert_json_refusal(await exchange(port, MALFORMED[name]))
        assert data["details"][0]["field"] == field, (name, data)
    data = assert_json_refusal(await exchange(port, MALFORMED["bad chunk size"]))
    assert data["details"][0]["message"] == "invalid character in chunk size"


async def test_a_body_that_cannot_be_decoded_is_a_400_not_a_500(served: Any, log_lines: list[Any]) -> None:
    """The parser takes the headers, the handler starts, then the gzip body turns out to be garbage."""
    port = port_of(await served("receptionist"))
    body = b"not gzip" + MARK
    answer = await exchange(port, b"POST /tasks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                                  b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    data = assert_json_refusal(answer)
    assert data["details"] == [{"field": "Content-Encoding", "message": "the body cannot be decoded"}]
    assert all(r["exception"] is None and r["level"].no < 40 for r in log_lines)


async def test_a_bad_chunk_in_a_later_packet_is_a_400(served: Any, log_lines: list[Any]) -> None:
    """The handler has started reading the body when the bad chunk size arrives: it must not wait forever."""
    runner = await served("receptionist")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(runner))
    try:
        writer.write(b"POST /tasks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n")
        await writer.drain()
        await wait_until(lambda: _started(runner), what="the request reaching its handler")
        writer.write(b"ZZ" + MARK + b"\r\nabc\r\n0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    data = assert_json_refusal(answer)
    assert data["details"] == [{"field": "request", "message": "invalid character in chunk size"}]
    assert split_answer(answer)[1]["connection"] == "close"
    assert all(r["exception"] is None and r["level"].no < 40 for r in log_lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_service_process_refuses_malformed_requests_with_json(tmp_path: Path) -> None:
    """``python -m scheduler``, as the launcher starts it: same answer, one log line, a clean stop."""
    port = _free_port()
    env = {**os.environ, "SCHEDULER_PORT": str(port), "SCHEDULER_STORE_URL": "memory://"}
    root = Path(__file__).resolve().parents[2]
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = await exchange(port, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
                await asyncio.sleep(0.05)
        assert split_answer(answer)[0] == 200
        for raw in (MALFORMED["header over 8 KB"], MALFORMED["control byte in the path"]):
            assert_json_refusal(await exchange(port, raw))
    finally:
        proc.terminate()
        code = await asyncio.to_thread(proc.wait, 20)
    text = stderr.read_text()
    assert code == 0, text
    assert text.count("refused a malformed request") == 2, text
    assert "Traceback" not in text and "evil" not in text, text
