"""``conveyor bench --profile-dir``: py-spy's collapsed stacks read back by function, and a real recording of a
real process (py-spy attaches to it from outside, as it does to the bench's services)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.bench_profile import Profile, recording, render, render_top
from shared.cli import build_parser


def _may_trace_others() -> bool:
    """py-spy attaches with ptrace: as root, or where Yama lets a process trace more than its descendants."""
    if os.geteuid() == 0:
        return True
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text()) == 0
    except (OSError, ValueError):
        return True  # no Yama: the classic rule, a process of the same user


#: A real recording needs the right to trace (CI runs as root; a laptop may not have it).
tracing = pytest.mark.skipif(not _may_trace_others(),
                             reason="py-spy may not attach here: not root and kernel.yama.ptrace_scope is not 0")

COLLAPSED = """\
<module> (app.py:1);serve (app.py:10);handle (app.py:20);encode (json.py:5) 6
<module> (app.py:1);serve (app.py:10);handle (app.py:21) 3
<module> (app.py:1);serve (app.py:10);serve (app.py:12);wait (loop.py:7) 1
not a stack line
"""


def test_samples_are_counted_by_function_self_and_inclusive() -> None:
    profile = Profile.parse(COLLAPSED)
    assert profile.samples == 10
    # A function's lines count together: handle at line 20 and at line 21.
    assert profile.self == {"encode (json.py)": 6, "handle (app.py)": 3, "wait (loop.py)": 1}
    assert profile.inclusive["handle (app.py)"] == 9
    # A function twice on one stack (serve, recursing) is one sample, not two.
    assert profile.inclusive["serve (app.py)"] == 10
    top = profile.top(2)
    assert top["self"] == [{"function": "encode (json.py)", "percent": 60.0},
                           {"function": "handle (app.py)", "percent": 30.0}]
    assert [e["function"] for e in top["inclusive"]][:2] == ["<module> (app.py)", "serve (app.py)"]
    text = render({"svc": profile}, 3)
    assert text.startswith("== svc: 10 samples\n  -- self\n   60.0%  encode (json.py)\n")


def test_an_empty_recording_is_no_division_by_zero() -> None:
    assert Profile.parse("").top(5) == {"samples": 0, "self": [], "inclusive": []}


SPINNER = """
import sys, time

def spin_here():
    until = time.perf_counter() + 0.01
    while time.perf_counter() < until:
        pass

while True:
    spin_here()
    print("spun", flush=True)
"""


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _wait_for(path: Path, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


@tracing
async def test_a_busy_process_is_recorded_where_it_spins(tmp_path: Path) -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE, text=True)
    try:
        async with recording(tmp_path, {"spinner": spinner.pid}) as summary:
            # Sampled once py-spy says so; then the spinner's own count of turns is the clock.
            await asyncio.to_thread(_wait_for, tmp_path / "spinner.log", "Sampling process")
            assert spinner.stdout is not None
            for _ in range(40):  # 40 turns of 10 ms each, while sampled
                await asyncio.to_thread(spinner.stdout.readline)
    finally:
        _stop(spinner)
    top = summary["spinner"]
    assert top["samples"] > 0
    assert top["inclusive"][0]["percent"] > 0
    spun = next(e for e in top["inclusive"] if e["function"].startswith("spin_here "))
    assert spun["percent"] >= 50
    assert (tmp_path / "spinner.txt").read_text().strip()
    assert "== spinner:" in (tmp_path / "summary.txt").read_text()
    assert render_top(summary, 3).startswith("spinner (")


@tracing
async def test_a_process_that_cannot_be_recorded_is_named_and_the_rest_go_on(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE, text=True)
    try:
        async with recording(tmp_path, {"gone": gone.pid, "spinner": spinner.pid}) as summary:
            await asyncio.to_thread(_wait_for, tmp_path / "spinner.log", "Sampling process")
            assert spinner.stdout is not None
            for _ in range(10):
                await asyncio.to_thread(spinner.stdout.readline)
    finally:
        _stop(spinner)
    assert summary["gone"]["error"]
    assert summary["spinner"]["samples"] > 0
    assert render_top(summary, 1).startswith("gone: not recorded (")


def test_the_bench_takes_a_profile_dir() -> None:
    assert build_parser().parse_args(["bench", "--profile-dir", "out"]).profile_dir == Path("out")
    assert build_parser().parse_args(["bench"]).profile_dir is None
