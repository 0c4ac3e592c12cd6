"""``conveyor bench --backends``: the option parses, and a tiny run goes through the embedded default and
then through PostgreSQL, Redis and S3 (a moto server process the bench starts), comparing both, and leaves
no database, key or bucket behind."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import redis.asyncio as redis

from shared.bench import BenchOptions, bench
from shared.bench_backends import SERVERS, Servers
from shared.cli import build_parser
from tests.conftest import POSTGRES_URL, REDIS_URL, _require
from tests.e2e.conftest import PORT_OFFSETS, _free_port_base
from tests.support import unavailable


@pytest.mark.parametrize(("text", "chosen"), [
    ("postgres,redis,s3", ("postgres", "redis", "s3")),
    ("embedded,distributed", ("postgres", "redis", "s3")),
    ("s3, Postgres", ("postgres", "s3")),
    ("embedded", ()),
])
def test_backends_option_parses(text: str, chosen: tuple[str, ...]) -> None:
    args = build_parser().parse_args(["bench", "--backends", text, "--postgres-url", "postgresql://db/x"])
    assert (args.backends, args.postgres_url, args.redis_url) == (chosen, "postgresql://db/x", None)
    assert build_parser().parse_args(["bench"]).backends == ()


def test_an_unknown_backend_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", "--backends", "postgres,mysql"])
    assert exited.value.code == 2
    assert "unknown backend 'mysql'" in capsys.readouterr().err


def _two_free_blocks() -> int:
    """A port base whose block and the distributed stack's (300 above) are both free now."""
    for _ in range(50):
        base = _free_port_base()
        try:
            for offset in PORT_OFFSETS:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + 300 + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no two free blocks of ports")


@pytest.mark.timeout(300)
async def test_a_tiny_run_on_both_backends_compares_them_and_cleans_up(tmp_path: Path) -> None:
    _require(POSTGRES_URL, "PostgreSQL")
    _require(REDIS_URL, "Redis")
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed: no S3-compatible server")
    output = tmp_path / "bench.json"
    opts = BenchOptions(jobs=20, clients=4, failing_jobs=0, import_records=0, at_once_tasks=0, timeout_s=60,
                        port_base=_two_free_blocks(), output=output, backends=("postgres", "redis", "s3"),
                        servers=Servers(POSTGRES_URL, REDIS_URL), stats_settle_s=0.0,
                        paced_s=0.0, gateway_requests=0, machine_requests=0)  # those phases have their own test

    assert await bench(opts) == 0

    result = json.loads(output.read_text())
    embedded, other = result["throughput"], result["distributed"]["throughput"]
    assert (embedded["finished"], other["finished"]) == (20, 20)
    settings = result["distributed"]["settings"]
    assert {name: urlsplit(url).scheme for name, url in settings.items()} == {
        "REGISTRY_STORE_URL": "postgresql", "LOGGING_STORE_URL": "postgresql", "SCHEDULER_STORE_URL": "redis",
        "GATEWAY_RATE_LIMIT_URL": "redis", "RECEPTIONIST_ARTIFACTS_URL": "s3", "HANDLER_ARTIFACTS_URL": "s3"}
    assert isinstance(other["pg_transactions"], int) and "pg_transactions" not in embedded
    assert other["pg_transactions_of_the_bench"] >= 1  # it asked the registry's counts at least once
    assert other["pg_transactions_per_job"] == round(
        (other["pg_transactions"] - other["pg_transactions_of_the_bench"]) / 20, 3)
    assert result["comparison"]["ratio"] == round(other["completed_per_s"] / embedded["completed_per_s"], 3)
    # CPU per job: the services' in both runs, and apart the servers the distributed run used on this
    # machine (PostgreSQL, Redis, the moto S3 server), each of which did some work.
    for run in (embedded, other):
        assert run["cpu_ms_per_job"] == round(1000 * sum(
            v for k, v in run["cpu_s_by_service"].items() if k not in SERVERS) / 20, 3) > 0
    assert "server_cpu_ms_per_job" not in embedded
    assert {"s3 (moto)", "postgresql (server)", "redis (server)"} <= set(other["cpu_s_by_service"])
    assert other["cpu_s_by_service"]["s3 (moto)"] > 0 and other["server_cpu_ms_per_job"] > 0

    # Nothing is left behind: the run's database (or schemas) and its Redis keys are gone.
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        database = result["distributed"]["postgres"]["database"]
        schemas = result["distributed"]["postgres"]["schemas"]
        assert database.startswith("conveyor_bench_")
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", database) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", schemas) == 0
    finally:
        await conn.close()
    prefix = parse_qs(urlsplit(settings["SCHEDULER_STORE_URL"]).query)["prefix"][0]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert [key async for key in client.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await client.aclose()
