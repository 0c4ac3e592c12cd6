"""``conveyor bench-registry --writes``: both ways of making ids carry every job to finished on their own
file, and the figures it prints are the store's own (its statements run, its commits counted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("jobs", [300])
def test_the_write_bench_runs_both_id_makers_through_the_store(tmp_path: Path, jobs: int) -> None:
    done = subprocess.run([sys.executable, "-m", "shared.cli", "bench-registry", "--writes", str(jobs), "--json"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    results = orjson.loads(done.stdout)
    assert [r["ids"] for r in results] == ["uuid4", "uuid7"]
    for r in results:
        assert r["jobs"] == jobs
        assert 0 < r["commit_ms_per_job"] <= r["sql_ms_per_job"] <= r["cpu_ms_per_job"]
        wait = r["commit_wait_ms"]
        assert 0 < wait["p50"] <= wait["p99"] <= wait["max"]
    assert not any((tmp_path / "var").iterdir()), "the bench's files are removed"
