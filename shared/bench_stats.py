"""The bench's arithmetic: CPU seconds of processes, percentiles, the medians of several runs, and the
figures of a run printed beside those of an earlier one (``--compare``)."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

#: The phases run again on every run, whose figures get medians.
REPEATED = ("machine", "throughput", "paced", "paced_half_peak", "gateway_overhead")

#: The figures printed at the end of a bench (and compared with ``--compare``), by their path in a run.
HEADLINE = (
    "throughput.completed_per_s",
    "throughput.cpu_ms_per_job",
    # The bench's own CPU per submission: it shares the cores with the stack (:mod:`shared.bench_client`).
    "throughput.client_cpu_ms_per_job",
    # Waiting, runnable, for a core (:func:`cpu_wait_seconds`): the machine's queue, in a latency.
    "throughput.cpu_wait_ms_per_job",
    "throughput.submit_latency_ms.p99",
    "throughput.submit_to_finished_ms.p50",
    "paced.submit_latency_ms.p99",
    "paced.submit_to_finished_ms.p50",
    "paced.submit_to_finished_ms.p99",
    "paced_half_peak.rate_per_s",
    "paced_half_peak.submit_latency_ms.p99",
    "paced_half_peak.submit_to_finished_ms.p50",
    "paced_half_peak.submit_to_finished_ms.p99",
    # A job costs more CPU at a lower rate (smaller batches, a sleeping process woken for each): at half the
    # peak the cores may be nearly as busy as at the peak, and then the wait for them is the latency.
    "paced_half_peak.cpu_ms_per_job",
    "paced_half_peak.cores_busy",
    "paced_half_peak.cpu_wait_ms_per_job",
    "gateway_overhead.gateway_cpu_us_per_request",
    "gateway_overhead.signed_in.gateway_cpu_us_per_request",
    # How fast the machine was meanwhile (:mod:`shared.bench_machine`): compare runs only when these agree.
    "machine.flat_out_us_per_request",
    "machine.paced_us_per_request",
)


def cpu_seconds(pid: int | tuple[int, ...]) -> float:
    """User + system CPU seconds a process (or several, summed) has used so far (Linux ``/proc``; 0
    elsewhere)."""
    if isinstance(pid, tuple):
        return sum(cpu_seconds(one) for one in pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedstat_seconds(pid: int, field: int) -> float | None:
    """A ``/proc/PID/task/*/schedstat`` figure summed over the process's threads alive now, in seconds, to
    the nanosecond: field 0 the time on a core, 1 the time runnable but waiting for one. None where there is
    no such file. A thread that ended takes its figures with it."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total_ns, found = 0, False
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[field])
            found = True
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile, or no schedstat
            continue
    return total_ns / 1e9 if found else None


def cpu_wait_seconds(pid: int | tuple[int, ...]) -> float:
    """Seconds a process (or several, summed) has spent runnable but waiting for a core so far: the run
    queue's delay (:func:`schedstat_seconds`, 0 where there is none). A service's main thread lives as long
    as it does; its checkpoint thread (:class:`~shared.sqlite_wal.Checkpointer`) ends after 30 s without a
    commit, which a phase under load does not reach."""
    if isinstance(pid, tuple):
        return sum(cpu_wait_seconds(one) for one in pid)
    return schedstat_seconds(pid, 1) or 0.0


class ServiceMeter:
    """The CPU and the wait for a core of each of ``pids`` (a name's process, or several) from the moment
    it is made: :meth:`since` gives both, in seconds, by name."""

    def __init__(self, pids: dict[str, int | tuple[int, ...]]) -> None:
        self.pids = pids
        self._cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self._wait = {name: cpu_wait_seconds(pid) for name, pid in pids.items()}

    def since(self) -> tuple[dict[str, float], dict[str, float]]:
        return ({name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()},
                {name: cpu_wait_seconds(pid) - self._wait[name] for name, pid in self.pids.items()})


def cpu_figures(cpu_s: dict[str, float], jobs: int, servers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Each service's CPU over a phase per job, and the sum over Conveyor's own (not the database and queue
    ``servers``, whole processes whose other clients would count too)."""
    return {"cpu_ms_per_job_by_service": {name: round(1000 * v / max(1, jobs), 3) for name, v in cpu_s.items()},
            "cpu_ms_per_job": round(1000 * sum(v for k, v in cpu_s.items() if k not in servers) / max(1, jobs), 3)}


def cpu_wait_figures(wait_s: dict[str, float], jobs: int, servers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Each service's wait for a core over a phase (:func:`cpu_wait_seconds`) per job, and the sum over
    Conveyor's own (not the database and queue ``servers``). Beside the CPU a job costs, it tells a latency
    that is the machine's queue for its cores from one that is the pipeline's own: a service that waits
    longer than it runs is one of too many processes wanting the cores at once."""
    return {"cpu_wait_ms_per_job_by_service": {name: round(1000 * v / max(1, jobs), 3) for name, v in wait_s.items()},
            "cpu_wait_ms_per_job": round(1000 * sum(v for k, v in wait_s.items() if k not in servers)
                                         / max(1, jobs), 3)}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def medians(runs: list[Any]) -> Any:
    """The median of each number over ``runs`` (alike dicts, nested); a flag is true when every run's is;
    anything else is the first run's. A key some runs lack takes the median of those that have it."""
    first = runs[0]
    if isinstance(first, bool):
        return all(runs)
    if isinstance(first, int | float):
        numbers = [r for r in runs if isinstance(r, int | float) and not isinstance(r, bool)]
        value = statistics.median(numbers)
        return round(value, 3) if isinstance(value, float) else value
    if isinstance(first, dict):
        keys = dict.fromkeys(key for run in runs if isinstance(run, dict) for key in run)
        return {key: medians([run[key] for run in runs if isinstance(run, dict) and key in run]) for key in keys}
    return first


def figure(result: dict[str, Any], path: str) -> float | None:
    """The number at a dotted ``path`` of a result, or None."""
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


#: The per-service figures printed, by phase: at half the peak a job's batches are smaller than at the peak.
_PER_SERVICE = (("throughput", "cpu_ms_per_job_by_service"), ("throughput", "requests_per_job_by_service"),
                ("paced_half_peak", "requests_per_job_by_service"))


def _per_service(result: dict[str, Any]) -> list[str]:
    """The per-service rows: CPU per job, then the requests each internal service answered per job, at the
    peak and at half of it."""
    return [f"{phase}.{figures}.{name}" for phase, figures in _PER_SERVICE
            for name in (result.get(phase) or {}).get(figures) or {}]


def summary(runs: list[dict[str, Any]], median: dict[str, Any]) -> str:
    """A table of the headline figures, and the CPU and requests per job of each service: every run's, and
    the median."""
    rows = [("figure", *(f"run {i + 1}" for i in range(len(runs))), "median")]
    for path in (*HEADLINE, *_per_service(median)):
        values = [figure(run, path) for run in runs]
        if all(v is None for v in values):
            continue
        rows.append((path, *("-" if v is None else f"{v:g}" for v in values), f"{figure(median, path) or 0:g}"))
    return _table(rows)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The headline figures and CPU per job per service of ``after`` beside ``before``'s, with the change."""
    rows = [("figure", "before", "after", "change")]
    for path in dict.fromkeys((*HEADLINE, *_per_service(before), *_per_service(after))):
        old, new = figure(before, path), figure(after, path)
        if old is None and new is None:
            continue
        change = f"{(new - old) / old * 100:+.1f}%" if old and new is not None else "-"
        rows.append((path, "-" if old is None else f"{old:g}", "-" if new is None else f"{new:g}", change))
    return _table(rows)


def medians_of(result: dict[str, Any]) -> dict[str, Any]:
    """What ``--compare`` compares of a bench's JSON: its medians, or for one written before there were
    medians, its phases as they are."""
    return result.get("median") or {phase: result[phase] for phase in REPEATED if phase in result}


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))) for row in rows)
