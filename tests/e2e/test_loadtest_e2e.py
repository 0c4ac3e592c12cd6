"""``conveyor loadtest`` against a live stack (``conveyor up`` at time scale 0, real processes): the JSON
report of a small run, errors by status, and jobs that do not end within the drain time (their queue
paused by an operator through the gateway) making it exit non-zero."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from tests.e2e.test_identity_e2e import cli

RATE, DURATION_S = 20, 2


async def loadtest(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "loadtest", "--url", url, "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert out, err.decode()
    return proc.returncode or 0, orjson.loads(out)


def ordered(latency: dict[str, float | None]) -> bool:
    values = [latency[k] for k in ("p50", "p90", "p99", "max")]
    return all(v is not None for v in values) and values == sorted(values) and values[0] > 0  # type: ignore[type-var]


async def test_a_small_load_test_reports_every_job_and_its_latencies(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0", "--rate-limit", "1000", "--rate-burst", "1000",
                              env={"CONVEYOR_ADMIN_PASSWORD": "admin's secret"})
    code, report = await loadtest(stack.url, "--rate", str(RATE), "--duration", str(DURATION_S), "--drain", "60")
    assert code == 0, report
    planned = RATE * DURATION_S
    assert (report["planned"], report["sent"], report["accepted"]) == (planned, planned, planned)
    assert report["errors"] == {} and report["unfinished"] == 0
    assert report["states"] == {"finished": planned}
    assert report["follow"] == "events" and report["mix"] == {"export": 1.0}
    assert ordered(report["submit_latency_ms"]) and ordered(report["end_to_end_ms"])
    assert report["end_to_end_ms"]["max"] >= report["submit_latency_ms"]["p50"]

    # A kind that comes only by a route of its own (an ECG's signals) is refused by POST /jobs: errors by
    # status, and a failed run.
    code, report = await loadtest(stack.url, "--rate", "10", "--duration", "1", "--mix", "export=1,ecg=1",
                                  "--payload", 'ecg={"id": "load {n}"}', "--seed", "7", "--drain", "60")
    assert code == 1
    refused = report["errors"]["400"]
    assert refused > 0 and report["accepted"] == 10 - refused and report["states"] == {"finished": 10 - refused}

    # A user's token, and a queue paused by an operator: accepted, never handed out, so never ended in time.
    data = ["--data-dir", str(stack.data_dir)]
    code, out = await cli("user", "add", "olga", "--password", "olga's secret", "--role", "operator", "--role",
                          "user", *data)
    assert code == 0, out
    code, token = await cli("token", "olga", "--password", "olga's secret", *data)
    assert code == 0, token
    operator = {"Authorization": f"Bearer {token.strip()}"}
    status, snapshot, _ = await stack.request("POST", "/queues/export/pause", headers=operator)
    assert status == 200 and snapshot["paused"] is True, snapshot
    code, report = await loadtest(stack.url, "--rate", "10", "--duration", "0.5", "--drain", "1",
                                  "--token", token.strip())
    assert code == 1
    assert (report["accepted"], report["unfinished"], report["states"]) == (5, 5, {})
    status, queues, _ = await stack.request("GET", "/queues", headers=operator)
    export = {q["queue"]: q for q in queues["items"]}["export"]
    assert export["paused"] is True and export["ready"] == 5
    status, snapshot, _ = await stack.request("POST", "/queues/export/resume", headers=operator)
    assert status == 200 and snapshot["paused"] is False
