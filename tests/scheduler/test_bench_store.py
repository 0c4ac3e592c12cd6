"""``python -m scheduler.bench_store``: the queue store alone carries every job from enqueued to acked, and
the CPU it prints is split among its three calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scheduler.bench_store", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_queue_store_bench_carries_every_job_and_splits_its_cpu() -> None:
    done = _bench("--jobs", "300", "--enqueue-batch", "7", "--lease-batch", "16", "--json")
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert (result["jobs"], result["enqueue_batch"], result["lease_batch"]) == (300, 7, 16)
    calls = result["by_call_ms_per_job"]
    assert set(calls) == {"enqueue", "dequeue", "ack"} and all(ms > 0 for ms in calls.values())
    # The three calls are part of the whole, which also counts the loop between them.
    assert sum(calls.values()) <= result["cpu_ms_per_job"] + 0.0002  # each figure rounded to 0.0001


def test_the_queue_store_bench_refuses_an_empty_batch() -> None:
    done = _bench("--jobs", "10", "--lease-batch", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
