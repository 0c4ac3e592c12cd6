"""``conveyor bench --profile-dir DIR``: where each service's time goes during the throughput phase.

py-spy, a sampling profiler that reads a running process from outside without changing it, records every
service of the first stack while its throughput phase runs. Each service's samples are kept as
``DIR/<service>.txt``, py-spy's collapsed stacks (a line a stack: ``frame;frame;... count``, what flame
graph tools read), and ``DIR/summary.txt`` lists for each service the functions its samples were in
(self) and under (inclusive), the biggest first. The same summary, shorter, goes into the bench's JSON
under ``profile``.

How to read it: py-spy counts a sample whenever the process is running or waiting for a core, not only
when it has one. On a machine with fewer cores than busy services, a send that wakes a peer is often where
the sender loses its core, so the sends (aiohttp's ``_writelines``, the lean client's ``request``) weigh
more here than in CPU. ``run (shared/server.py)`` on its own is the event loop's work outside Python
frames: uvloop, aiohttp's parser, system calls. ``cpu_ms_per_job_by_service`` is the CPU itself;
``perf record -p PIDS`` then ``perf report --sort pid,dso`` says which library it went to.

Attaching needs the right to trace another process: root, or ``kernel.yama.ptrace_scope`` at 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Samples a second of each service: about a thousand a service in a 10 s phase. py-spy reads a process's
#: memory without stopping it, but its reading takes CPU of its own: a profiled run's jobs/s are lower
#: (about a quarter on two cores at 250 a second), so measure with one run and profile with another.
RATE_HZ = 100
#: How long a recorder may take to write its file once told to stop.
STOP_TIMEOUT_S = 15.0
#: ``function (file:line)``: the line is dropped, so that a function's lines count together.
_LINE = re.compile(r":\d+\)$")


class ProfilerMissing(RuntimeError):
    """No py-spy to record with."""


def find_py_spy() -> str:
    """The py-spy next to this Python (a virtualenv's), else on ``PATH``; :class:`ProfilerMissing` otherwise."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("py-spy", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if found is None:
        raise ProfilerMissing("--profile-dir needs py-spy: pip install py-spy (make venv installs it)")
    return found


@dataclass
class Profile:
    """The samples of one process, by function: ``self`` counts the samples a function was running in,
    ``inclusive`` those it was anywhere on the stack of (once a sample, however deep it recursed)."""

    samples: int = 0
    self: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        """A profile from py-spy's collapsed stacks (``--format raw``)."""
        profile = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_LINE.sub(")", frame) for frame in stack.split(";") if frame]
            if not frames:
                continue
            profile.samples += n
            profile.self[frames[-1]] += n
            for frame in set(frames):
                profile.inclusive[frame] += n
        return profile

    def top(self, n: int) -> dict[str, Any]:
        """The ``n`` biggest of each kind, as per cent of the samples."""
        def share(counts: Counter[str]) -> list[dict[str, Any]]:
            return [{"function": frame, "percent": round(100 * count / self.samples, 1)}
                    for frame, count in _ranked(counts, n)] if self.samples else []

        return {"samples": self.samples, "self": share(self.self), "inclusive": share(self.inclusive)}


def _ranked(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """The ``n`` biggest, ties by name: the same samples always list the same way."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def render(profiles: dict[str, Profile], n: int) -> str:
    """The text of ``summary.txt``: each service's ``n`` biggest functions, self and inclusive."""
    out: list[str] = []
    for name, profile in profiles.items():
        out.append(f"== {name}: {profile.samples} samples")
        for kind, counts in (("self", profile.self), ("inclusive", profile.inclusive)):
            out.append(f"  -- {kind}")
            out.extend(f"  {100 * count / max(profile.samples, 1):5.1f}%  {frame}"
                       for frame, count in _ranked(counts, n))
    return "\n".join(out) + "\n"


def render_top(summary: dict[str, Any], n: int) -> str:
    """Each service's ``n`` biggest functions by self samples, from :func:`recording`'s summary."""
    out: list[str] = []
    for name, top in summary.items():
        if "error" in top:
            out.append(f"{name}: not recorded ({top['error']})")
            continue
        out.append(f"{name} ({top['samples']} samples):")
        out.extend(f"  {entry['percent']:5.1f}%  {entry['function']}" for entry in top["self"][:n])
    return "\n".join(out)


@contextlib.asynccontextmanager
async def recording(directory: Path, pids: dict[str, int], *, rate_hz: int = RATE_HZ,
                    summary_lines: int = 25) -> AsyncIterator[dict[str, Any]]:
    """Record each of ``pids`` (a name each) with py-spy while the block runs, then write ``<name>.txt``
    and ``summary.txt`` in ``directory`` and fill the dict yielded with each one's :meth:`Profile.top`
    (``summary_lines`` of each kind). A recorder that failed (a process gone, no right to trace) is named
    with its error instead; the block itself is never cut short by one."""
    py_spy = find_py_spy()
    directory.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, asyncio.subprocess.Process] = {}
    for name, pid in pids.items():
        (directory / f"{name}.txt").unlink(missing_ok=True)
        with open(directory / f"{name}.log", "wb") as log:  # what py-spy says, for when it fails
            recorders[name] = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(pid), "--rate", str(rate_hz), "--format", "raw", "--nonblocking",
                "--output", str(directory / f"{name}.txt"),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    summary: dict[str, Any] = {}
    try:
        yield summary
    finally:
        profiles: dict[str, Profile] = {}
        for name, recorder in recorders.items():
            error = await _stop(recorder, directory / f"{name}.log")
            path = directory / f"{name}.txt"
            if path.is_file():
                profiles[name] = Profile.parse(path.read_text(errors="replace"))
                summary[name] = profiles[name].top(summary_lines)
            else:
                summary[name] = {"error": error or "py-spy wrote nothing"}
        (directory / "summary.txt").write_text(render(profiles, summary_lines))


async def _stop(recorder: asyncio.subprocess.Process, log: Path) -> str:
    """Stop a recorder as Ctrl-C does (py-spy then writes its file); its last words when it failed."""
    if recorder.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            recorder.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(recorder.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        recorder.kill()
        await recorder.wait()
        return "py-spy did not stop"
    if recorder.returncode == 0:
        return ""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"py-spy exited with status {recorder.returncode}"
