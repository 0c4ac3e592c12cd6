"""``conveyor bench``'s bulk data phases (:mod:`shared.bench`): a CSV of users imported through the gateway
(records/s, the handlers' memory, the CPU a record of the handlers and of a PostgreSQL data store's
sessions), and the same users streamed back out (rows/s); and the data store the bench's stack uses."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from shared.bench_stats import cpu_seconds

if TYPE_CHECKING:
    from shared.bench import BenchOptions, Target


def memory_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory figure in kB (``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def write_users_csv(path: Path, n: int) -> int:
    """A CSV of ``n`` valid users, written a block at a time; returns its size in bytes."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("id,email,name,role,active\n")
        roles = ("admin", "author", "reader")
        for start in range(0, n, 10_000):
            fh.write("".join(f"u{i},user{i}@example.com,User {i},{roles[i % 3]},{'true' if i % 2 else 'false'}\n"
                             for i in range(start, min(n, start + 10_000))))
    return path.stat().st_size


async def _store_backends(url: str | None) -> list[int]:
    """The process ids of the data store's PostgreSQL sessions, when the server runs on this machine (for
    their CPU seconds); none for SQLite."""
    if url is None or not url.startswith(("postgresql://", "postgres://")):
        return []
    import asyncpg

    from shared.datastore.postgres import APPLICATION_NAME

    conn = await asyncpg.connect(url.split("?", 1)[0])
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = "
                                "current_database()", APPLICATION_NAME)
    finally:
        await conn.close()
    return [row["pid"] for row in rows if Path(f"/proc/{row['pid']}").exists()]


async def data_import_phase(target: Target, opts: BenchOptions, pids: dict[str, int] | None = None,
                            data_store_url: str | None = None) -> dict[str, Any]:
    """A CSV of ``import_records`` users, uploaded through the gateway by a user with the ``importer``
    permission and imported: records/s of the import (the job's start to its end) and the handlers'
    resident memory while it ran."""
    n = opts.import_records
    handlers = {name: pid for name, pid in (pids or {}).items() if name.startswith("handler")}
    with tempfile.TemporaryDirectory(prefix="bench-import-", dir=opts.scratch_dir) as scratch:
        path = Path(scratch) / "users.csv"
        size = await asyncio.to_thread(write_users_csv, path, n)
        print(f"importing {n} users ({size / 1e6:.1f} MB of CSV) through the gateway")
        rss_before = {name: memory_kb(pid, "VmRSS") for name, pid in handlers.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in handlers.items()}
        store_cpu_before = {pid: cpu_seconds(pid) for pid in await _store_backends(data_store_url)}
        peak = dict(rss_before)
        importer = await target.sign_in("bench-importer", ("importer",))
        started = time.perf_counter()
        with open(path, "rb") as fh:
            form = aiohttp.FormData()
            form.add_field("file", fh, filename="users.csv", content_type="text/csv")
            async with target.session.post(target.gateway + "/v1/imports?resource=users", data=form,
                                           headers=importer) as resp:
                accepted = await resp.json()
        upload_s = time.perf_counter() - started
        if resp.status != 201:
            print(f"the upload was refused: {resp.status} {accepted}")
            return {"records": n, "upload_status": resp.status, "ok": False}
        job_id = accepted["id"]
        deadline = time.monotonic() + opts.timeout_s
        while True:
            for name, pid in handlers.items():
                peak[name] = max(peak[name], memory_kb(pid, "VmRSS"))
            async with target.session.get(f"{target.registry}/jobs/{job_id}", headers=target.headers) as resp:
                job = await resp.json()
            if job["state"] in ("finished", "failed", "cancelled") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    end_to_end_s = time.perf_counter() - started
    # CPU seconds a record, unlike records/s, hardly depend on what else the machine is doing.
    handler_cpu_s = sum(cpu_seconds(pid) - cpu_before[name] for name, pid in handlers.items())
    store_cpu_s = sum(cpu_seconds(pid) - store_cpu_before.get(pid, 0.0)
                      for pid in await _store_backends(data_store_url))
    result = job.get("result") or {}
    import_s = ((datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
                if job.get("finished_at") and job.get("started_at") else float("nan"))
    imported = int(result.get("imported", 0))
    return {
        "records": n,
        "csv_mb": round(size / 1e6, 1),
        "state": job["state"],
        "error": job.get("error"),
        "imported": imported,
        "rejected": result.get("rejected"),
        "upload_s": round(upload_s, 3),
        "import_s": round(import_s, 3),
        "records_per_s": round(imported / import_s, 1) if imported and import_s > 0 else 0.0,
        "end_to_end_per_s": round(imported / end_to_end_s, 1) if imported else 0.0,
        "handler_cpu_us_per_record": round(handler_cpu_s / imported * 1e6, 2) if imported else None,
        "postgres_cpu_us_per_record": (round(store_cpu_s / imported * 1e6, 2) if imported and store_cpu_s
                                       else None),
        "handler_rss_mb": {name: {"before": round(rss_before[name] / 1024, 1), "peak": round(peak[name] / 1024, 1),
                                  "hwm_after": round(memory_kb(pid, "VmHWM") / 1024, 1)}
                           for name, pid in handlers.items()},
        "ok": job["state"] == "finished" and imported == n,
    }


async def export_phase(target: Target, expected: int) -> dict[str, Any]:
    """The imported users streamed back out through the gateway (``GET /v1/exports``, NDJSON), as a user
    with the ``exporter`` permission: rows/s."""
    print(f"streaming {expected} users back out")
    headers = await target.sign_in("bench-exporter", ("exporter",))
    rows = size = 0
    started = time.perf_counter()
    async with target.session.get(target.gateway + "/v1/exports", params={"resource": "users", "format": "ndjson"},
                                  headers=headers) as resp:
        status = resp.status
        async for chunk in resp.content.iter_chunked(1 << 20):
            rows += chunk.count(b"\n")
            size += len(chunk)
    elapsed_s = time.perf_counter() - started
    return {"status": status, "rows": rows, "mb": round(size / 1e6, 1), "seconds": round(elapsed_s, 2),
            "rows_per_s": round(rows / elapsed_s, 1) if elapsed_s else 0.0, "ok": status == 200 and rows == expected}


@contextlib.asynccontextmanager
async def bench_data_store(url: str | None) -> AsyncIterator[str | None]:
    """The data store URL for the bench's stack: a PostgreSQL URL without a ``schema`` gets a schema of its
    own, dropped after, so that every run imports into empty tables."""
    if url is None or not url.startswith(("postgresql://", "postgres://")) or "schema=" in url:
        yield url
        return
    import asyncpg

    schema = f"bench_{secrets.token_hex(6)}"
    try:
        yield f"{url}{'&' if '?' in url else '?'}schema={schema}"
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
