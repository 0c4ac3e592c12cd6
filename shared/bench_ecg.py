"""The benchmark's ECG memory phase (``conveyor bench --ecg-memory``): the receptionist's peak resident
memory while it takes one, then four concurrent, maximum-size ECGs through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from shared.bench import BenchOptions
from shared.bench_data import memory_kb
from shared.kinds.ecg import LEAD_NAMES, MAX_SAMPLES
from shared.launcher import Launcher, Options


def reset_peak_rss(pid: int) -> None:
    """Start ``pid``'s ``VmHWM`` afresh from its current RSS (Linux: ``clear_refs``, 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def max_ecg_body(samples: int = MAX_SAMPLES, limit_bytes: int = 128 * 1024 * 1024) -> bytes:
    """An ECG of twelve leads of ``samples`` random samples each, as large as fits under ``limit_bytes``
    (the receptionist's default ``max_ecg_bytes``): the widest samples that fit, both signs."""
    rng = np.random.default_rng(8)
    digits = 10
    while True:
        high = 10 ** (digits - 1)  # numbers of ``digits`` digits, both signs, within 32 bits
        signals = [rng.integers(-min(high * 10 - 1, 2**31 - 1), min(high * 10, 2**31), size=samples,
                                dtype=np.int64).astype(np.int32) for _ in LEAD_NAMES]
        body = orjson.dumps({"id": "bench", "date": "2024-01-01T00:00:00Z", "leads": [
            {"name": name, "number_of_samples": samples, "signal": signal}
            for name, signal in zip(LEAD_NAMES, signals, strict=True)]}, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(body) <= limit_bytes or digits == 1:
            return body
        digits -= 1


async def ecg_memory_phase(opts: BenchOptions) -> dict[str, Any]:
    """The receptionist's peak resident memory (``VmHWM``) while it takes one, then four concurrent,
    maximum-size ECGs (twelve leads of a million samples) through the gateway, on a stack of its own
    with one receptionist; its RSS at rest before, for comparison."""
    body = await asyncio.to_thread(max_ecg_body)
    result: dict[str, Any] = {"body_mb": round(len(body) / 1e6, 1), "samples": 12 * MAX_SAMPLES}
    with tempfile.TemporaryDirectory(prefix="bench-ecg-", dir=opts.scratch_dir) as tmp:
        launcher = Launcher(Options(receptionists=1, handlers=1, time_scale=0.0, data_dir=Path(tmp),
                                    port_base=opts.port_base + 200, rate_limit_per_s=0.0))
        try:
            await launcher.start()
            pids = {svc.name: svc.process.pid for svc in launcher.services if svc.process is not None}
            gateway = f"http://127.0.0.1:{opts.port_base + 200}"
            timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def submit() -> tuple[int, float]:
                    started = time.perf_counter()
                    async with session.post(gateway + "/ecgs", data=body,
                                            headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                        return resp.status, time.perf_counter() - started

                for concurrent in (1, 4):
                    print(f"sending {concurrent} ECG(s) of {len(body) / 1e6:.0f} MB at once")
                    for pid in pids.values():
                        reset_peak_rss(pid)
                    rest = {name: memory_kb(pid, "VmRSS") for name, pid in pids.items()}
                    answers = await asyncio.gather(*(submit() for _ in range(concurrent)))
                    result[f"concurrent_{concurrent}"] = {
                        "statuses": [status for status, _ in answers],
                        "seconds": round(max(elapsed for _, elapsed in answers), 2),
                        **{f"{name}_rss_mb": {"at_rest": round(rest[name] / 1024, 1),
                                              "peak": round(memory_kb(pid, "VmHWM") / 1024, 1)}
                           for name, pid in pids.items() if name in ("receptionist-1", "gateway")},
                    }
        finally:
            await launcher.stop()
    result["ok"] = all(status == 201 for phase in ("concurrent_1", "concurrent_4")
                       for status in result[phase]["statuses"])
    return result
