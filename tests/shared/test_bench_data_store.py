"""The bench's choice of bulk data store: the stack it starts uses it, and PostgreSQL gets a schema of its own."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from shared.bench_data import bench_data_store
from shared.cli import build_parser
from shared.datastore import DataStore
from shared.launcher import Options, plan
from tests.conftest import POSTGRES_URL


def test_the_stack_reads_and_writes_the_data_store_it_is_given(tmp_path: Path) -> None:
    args = build_parser().parse_args(["bench", "--jobs", "0", "--datastore-url", "postgresql://db/x?schema=s"])
    assert args.jobs == 0 and args.data_store_url == "postgresql://db/x?schema=s"
    services = plan(Options(data_dir=tmp_path, data_store_url=args.data_store_url))
    urls = {svc.name: svc.env.get(f"{svc.module.upper()}_DATA_STORE_URL") for svc in services
            if svc.module in ("handler", "receptionist")}
    assert urls and set(urls.values()) == {"postgresql://db/x?schema=s"}, urls
    services = plan(Options(data_dir=tmp_path))
    assert {svc.env.get("HANDLER_DATA_STORE_URL") for svc in services if svc.module == "handler"} == {
        f"sqlite:///{tmp_path.resolve()}/data.db"}


async def test_a_postgres_url_without_a_schema_gets_one_dropped_after(postgres_url: str) -> None:
    async with bench_data_store(POSTGRES_URL) as url:
        assert url is not None and "?schema=bench_" in url
        schema = url.rsplit("schema=", 1)[1]
        async with DataStore.from_url(url) as store:
            await store.upsert("users", [("u1", "a@example.com", "A", "reader", 1, "2024-01-01T00:00:00+00:00",
                                          "2024-01-01T00:00:00+00:00")])
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
    finally:
        await conn.close()
    async with bench_data_store(postgres_url) as given:
        assert given == postgres_url  # a schema named is the operator's: kept
    async with bench_data_store(None) as default:
        assert default is None
