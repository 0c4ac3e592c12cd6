"""``conveyor bench`` on the embedded default, tiny: two runs, each with the throughput phase, both paced
phases and the gateway overhead phase, and the bulk data phases on the first; the JSON holds every run, their
medians, and a copy by time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.bench import BenchOptions, bench
from shared.bench_stats import medians
from tests.e2e.conftest import _free_port_base


@pytest.mark.timeout(300)
async def test_two_tiny_runs_with_paced_phases_and_their_medians(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    output, history = tmp_path / "bench.json", tmp_path / "history"
    opts = BenchOptions(jobs=30, clients=4, failing_jobs=0, import_records=200, at_once_tasks=0, timeout_s=60,
                        port_base=_free_port_base(), output=output, runs=2, paced_rate=20.0, paced_s=1.0,
                        gateway_requests=20, machine_requests=200, history_dir=history)

    assert await bench(opts) == 0

    result = json.loads(output.read_text())
    assert [json.loads(p.read_text()) for p in history.iterdir()] == [result]
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        # The machine's speed, before each stack: a bare server's CPU a request, flat out and paced (waking
        # a sleeping process costs more than the request).
        machine = run["machine"]
        assert 0 < machine["flat_out_us_per_request"] < machine["paced_us_per_request"]
        assert run["throughput"]["finished"] == 30
        assert set(run["throughput"]["cpu_ms_per_job_by_service"]) >= {"gateway", "registry", "handler-1"}
        assert run["throughput"]["client_cpu_ms_per_job"] > 0  # the bench's own, beside the stack's
        # Each job was registered, enqueued, dequeued, reported twice and acked: in batches, so some share
        # of a request at each service, and the bench's own reads are not counted.
        requests = run["throughput"]["requests_per_job_by_service"]
        assert set(requests) >= {"registry", "scheduler", "receptionist-1", "handler-1", "logging_service"}
        assert "gateway" not in requests
        assert 0 < requests["registry"] <= 3 and 0 < requests["scheduler"] <= 4
        assert 0 < requests["receptionist-1"] + requests["receptionist-2"] <= 1.5  # a submission a job, and probes
        paced, half = run["paced"], run["paced_half_peak"]
        assert (paced["rate_per_s"], paced["jobs"], paced["accepted"], paced["finished"]) == (20.0, 20, 20, 20)
        assert paced["submit_to_finished_ms"]["p99"] >= paced["submit_to_finished_ms"]["p50"] > 0
        assert half["rate_per_s"] == round(run["throughput"]["completed_per_s"] / 2, 1)
        assert half["finished"] == half["jobs"]
        # The paced phases count requests too (less the bench's own polls of the registry's counts): at a
        # low rate a job's calls seldom share a batch, so the registry and the scheduler answer about one
        # request for each of a job's three calls to them, and the receptionists one submission a job.
        for phase in (paced, half):
            served = phase["requests_per_job_by_service"]
            assert set(served) == set(requests)
            assert 0 < served["registry"] <= 5 and 0 < served["scheduler"] <= 6, served
            assert 0.9 <= served["receptionist-1"] + served["receptionist-2"] <= 1.5, served
        # Each service's wait for a core, runnable, beside its CPU: eight processes and the bench on this
        # machine's cores wait for them now and then.
        for phase in (run["throughput"], paced, half):
            waits = phase["cpu_wait_ms_per_job_by_service"]
            assert set(waits) == set(phase["cpu_ms_per_job_by_service"]) and min(waits.values()) >= 0
            assert phase["cpu_ms_per_job"] == pytest.approx(sum(phase["cpu_ms_per_job_by_service"].values()), abs=0.01)
        assert run["throughput"]["cpu_wait_ms_per_job"] > 0
        # A paced job's time in three stretches: each a part of its submit-to-finished, never more.
        for phase in (paced, half):
            assert 0 < phase["cores_busy"] <= (os.cpu_count() or 1) + 0.1
            path, whole = phase["path_ms"], phase["submit_to_finished_ms"]
            assert set(path) == {"due_to_created", "created_to_started", "started_to_finished"}
            assert path["due_to_created"]["p50"] > 0 and path["created_to_started"]["p50"] > 0
            for stretch in path.values():
                assert 0 <= stretch["p50"] <= whole["p50"] and stretch["p50"] <= stretch["p99"] <= whole["p99"]
        overhead = run["gateway_overhead"]
        assert (overhead["requests"], overhead["ok"]) == (20, True)
        assert overhead["through_gateway_latency_ms"]["p50"] > 0
        # The same submissions from a signed-in user, with its token (each answered: "ok" above).
        assert overhead["signed_in"]["latency_ms"]["p50"] > 0
    assert result["median"] == medians(result["runs"])
    # The bulk data phases, on the first stack only: 200 users imported from a CSV, then streamed back out.
    imported, exported = result["data_import"], result["data_export"]
    assert (imported["imported"], imported["state"], imported["ok"]) == (200, "finished", True)
    assert imported["records_per_s"] > 0 and set(imported["handler_rss_mb"]) == {"handler-1", "handler-2"}
    assert (exported["rows"], exported["ok"]) == (200, True)
    out = capsys.readouterr().out
    assert "the embedded stack, 2 run(s)" in out and "paced.submit_to_finished_ms.p99" in out
    assert "throughput.requests_per_job_by_service.registry" in out and "machine.paced_us_per_request" in out
    assert "gateway_overhead.signed_in.gateway_cpu_us_per_request" in out
    assert "throughput.client_cpu_ms_per_job" in out and "paced_half_peak.cpu_wait_ms_per_job" in out
