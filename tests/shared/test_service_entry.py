"""A service's process writes JSON lines only, from its first (``shared.entry``): a setting it cannot use, a
store it cannot reach, the standard library's logging, a warning, an uncaught exception. Each process writes
its stdout and stderr to one file, as ``conveyor up`` does: the file the operator reads."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE = {"timestamp", "service", "level", "message", "meta"}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound here (so nothing else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def run_to_file(args: list[str], env: dict[str, str], log: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run ``python <args>`` with stdout and stderr to ``log`` until it exits; its exit code and its lines,
    each checked to be one JSON object of the central log's shape."""
    # The environment of the test run, less any setting of ours it may carry.
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CONVEYOR_", "GATEWAY_", "REGISTRY_", "SCHEDULER_", "HANDLER_", "RECEPTIONIST_",
                                  "LOGGING_"))}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=REPO_ROOT, env={**clean, **env},
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=asyncio.subprocess.STDOUT)
    code = await asyncio.wait_for(proc.wait(), timeout=60)
    lines = []
    for raw in log.read_bytes().splitlines():
        line = orjson.loads(raw)  # fails the test on anything that is not JSON
        assert isinstance(line, dict) and set(line) == SHAPE, raw
        lines.append(line)
    assert lines, "nothing was written"
    return code, lines


@pytest.mark.parametrize(("service", "env", "variable", "reason"), [
    ("gateway", {"GATEWAY_RATE_LIMIT_PER_S": "abc"}, "GATEWAY_RATE_LIMIT_PER_S", "valid number"),
    ("scheduler", {"SCHEDULER_LOG_LEVEL": "loud"}, "SCHEDULER_LOG_LEVEL", "not a log level"),
])
async def test_a_bad_setting_is_one_json_line_naming_it_and_exit_2(
        tmp_path: Path, service: str, env: dict[str, str], variable: str, reason: str) -> None:
    code, lines = await run_to_file(["-m", service], env, tmp_path / f"{service}.log")
    assert code == 2
    [line] = lines
    assert line["level"] == "error" and line["service"] == service
    assert line["message"].startswith(f"cannot start: invalid setting {variable}: "), line
    assert reason in line["message"] and reason in line["meta"]["settings"][variable]
    assert "traceback" not in line["meta"]


async def test_a_store_it_cannot_reach_stops_it_with_one_json_line(tmp_path: Path, closed_port: int) -> None:
    code, lines = await run_to_file(["-m", "registry"], {
        "REGISTRY_STORE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/conveyor", "REGISTRY_PORT": "0",
    }, tmp_path / "registry.log")
    assert code == 1
    last = lines[-1]
    assert last["level"] == "critical" and last["message"] == "stopped by an error: StoreUnavailable", last
    assert "unreachable" in last["meta"]["exception"]
    assert last["meta"]["traceback"].startswith("Traceback (most recent call last)")


PROBE = """
import asyncio, logging, threading, warnings
from shared.logs import capture_stray_output, setup_logging

setup_logging("probe")
capture_stray_output()
logging.getLogger("aiohttp.server").warning("a {brace} and %s", "an argument")
logging.getLogger("aiohttp.server").debug("below the level")
warnings.warn("a warning", UserWarning)
worker = threading.Thread(target=lambda: 1 / 0, name="worker")
worker.start()
worker.join()
loop = asyncio.new_event_loop()
loop.call_exception_handler({"message": "a callback failed", "exception": KeyError("k")})
loop.close()
raise RuntimeError("the end")
"""


async def test_stdlib_logging_warnings_and_uncaught_errors_are_json_lines(tmp_path: Path) -> None:
    code, lines = await run_to_file(["-c", PROBE], {}, tmp_path / "probe.log")
    assert code == 1
    assert all(line["service"] == "probe" for line in lines)
    got = [(line["level"], line["message"], line["meta"].get("logger")) for line in lines]
    assert got[0] == ("warning", "a {brace} and an argument", "aiohttp.server")
    assert got[1][0] == "warning" and "a warning" in got[1][1] and got[1][2] == "py.warnings"
    assert got[2][:2] == ("error", "uncaught ZeroDivisionError in a thread") and lines[2]["meta"]["thread"] == "worker"
    assert got[3] == ("error", "a callback failed", "asyncio")
    assert got[4][:2] == ("critical", "stopped by an uncaught RuntimeError")
    assert len(lines) == 5  # the debug line is below the level
    for line in (lines[2], lines[4]):
        assert line["meta"]["traceback"].startswith("Traceback (most recent call last)"), line
    assert lines[3]["meta"]["exception"] == "KeyError: 'k'"  # never raised: no traceback but its own line
    assert lines[4]["meta"]["exception"] == "RuntimeError: the end"
