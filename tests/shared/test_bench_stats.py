"""The bench's arithmetic: medians over runs, the figures beside an earlier bench's, and the options."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.bench_stats import (
    compare,
    cpu_seconds,
    cpu_wait_figures,
    cpu_wait_seconds,
    figure,
    medians,
    medians_of,
    percentile,
    summary,
)
from shared.cli import build_parser


def _run(per_s: float, p99: float, gateway_ms: float) -> dict:
    return {"throughput": {"completed_per_s": per_s, "ok": True, "cpu_ms_per_job_by_service": {"gateway": gateway_ms},
                           "submit_latency_ms": {"p50": 1.0, "p99": p99}},
            "paced": {"rate_per_s": 200.0, "submit_to_finished_ms": {"p50": 8.0, "p99": p99 * 2}, "ok": True}}


def test_medians_take_each_number_over_the_runs_and_every_flag_must_hold() -> None:
    runs = [_run(500.0, 9.0, 0.5), _run(700.0, 3.0, 0.4), _run(600.0, 30.0, 0.9)]
    runs[1]["paced"]["ok"] = False
    got = medians(runs)
    assert got["throughput"]["completed_per_s"] == 600.0
    assert got["throughput"]["submit_latency_ms"] == {"p50": 1.0, "p99": 9.0}
    assert got["throughput"]["cpu_ms_per_job_by_service"] == {"gateway": 0.5}
    assert got["paced"]["submit_to_finished_ms"]["p99"] == 18.0
    assert got["throughput"]["ok"] is True and got["paced"]["ok"] is False


def test_a_phase_only_some_runs_have_takes_the_median_of_those() -> None:
    runs = [_run(500.0, 9.0, 0.5), {"throughput": {"completed_per_s": 300.0}}]
    got = medians(runs)
    assert got["throughput"]["completed_per_s"] == 400.0
    assert got["paced"]["submit_to_finished_ms"]["p99"] == 18.0


def test_percentile_is_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (50.0, 99.0, 0.0)


def test_the_summary_names_each_run_and_the_median() -> None:
    runs = [_run(500.0, 9.0, 0.5), _run(700.0, 3.0, 0.4)]
    text = summary(runs, medians(runs))
    line = next(row for row in text.splitlines() if row.startswith("throughput.completed_per_s"))
    assert line.split()[1:] == ["500", "700", "600"]
    assert any(row.startswith("throughput.cpu_ms_per_job_by_service.gateway") for row in text.splitlines())


def test_compare_prints_the_change_against_an_earlier_bench() -> None:
    before = {"median": _run(500.0, 10.0, 0.5)}
    after = _run(750.0, 5.0, 0.25)
    rows = {row.split()[0]: row.split()[1:] for row in compare(medians_of(before), after).splitlines()}
    assert rows["throughput.completed_per_s"] == ["500", "750", "+50.0%"]
    assert rows["throughput.cpu_ms_per_job_by_service.gateway"] == ["0.5", "0.25", "-50.0%"]
    assert figure(after, "paced.submit_to_finished_ms.p99") == 10.0
    # A bench written before there were medians is compared by its phases as they are.
    assert medians_of({"throughput": {"completed_per_s": 1.0}, "failing": {}}) == {
        "throughput": {"completed_per_s": 1.0}}


def test_the_options_of_runs_and_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench"])
    assert (args.runs, args.paced_seconds, args.gateway_requests, args.compare) == (3, 10.0, 2000, None)
    earlier = tmp_path / "earlier.json"
    earlier.write_text("{}")
    args = build_parser().parse_args(["bench", "--runs", "1", "--json", str(tmp_path / "x.json"),
                                      "--compare", str(earlier)])
    assert (args.runs, args.output, args.compare) == (1, tmp_path / "x.json", earlier)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--compare", str(tmp_path / "missing.json")])
    assert "no file" in capsys.readouterr().err


#: Spins on the CPU until its stdin closes, having said it started.
SPIN = "import sys, select\nprint('up', flush=True)\nwhile not select.select([sys.stdin], [], [], 0)[0]: pass"


def test_three_spinners_on_one_core_each_wait_for_it_twice_as_long_as_they_run() -> None:
    """The run queue's wait, measured: three processes that want the same core take turns on it, so each
    waits while the two others run."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    try:
        for spinner in spinners:
            os.sched_setaffinity(spinner.pid, {min(os.sched_getaffinity(0))})
            assert spinner.stdout is not None and spinner.stdout.readline() == "up\n"
        pids = tuple(s.pid for s in spinners)
        run_before, wait_before = cpu_seconds(pids), cpu_wait_seconds(pids)
        deadline = time.monotonic() + 30
        while cpu_seconds(pids) - run_before < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        ran_s, waited_s = cpu_seconds(pids) - run_before, cpu_wait_seconds(pids) - wait_before
        each = [cpu_wait_seconds(pid) for pid in pids]
    finally:
        for spinner in spinners:
            assert spinner.stdin is not None
            spinner.stdin.close()
            spinner.wait(timeout=10)
            assert spinner.stdout is not None
            spinner.stdout.close()
    assert ran_s >= 1.0
    # One core, three of them: while one runs two wait, so the wait is twice the run (other work of this
    # machine on that core adds to it). Not the time run: that would be one times.
    assert 1.5 * ran_s < waited_s < 4 * ran_s
    assert all(w > 0 for w in each) and sum(each) >= waited_s


def test_a_process_that_is_gone_waited_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_wait_seconds(gone.pid) == 0.0


def test_the_wait_per_job_leaves_the_servers_out_of_the_sum() -> None:
    figures = cpu_wait_figures({"registry": 0.5, "gateway": 0.25, "postgresql (server)": 4.0}, 1000,
                               frozenset({"postgresql (server)"}))
    assert figures == {"cpu_wait_ms_per_job_by_service": {"registry": 0.5, "gateway": 0.25,
                                                          "postgresql (server)": 4.0},
                       "cpu_wait_ms_per_job": 0.75}
