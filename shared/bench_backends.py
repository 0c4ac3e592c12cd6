"""The backends of ``conveyor bench --backends``: the distributed stack's PostgreSQL, Redis and S3, each
fresh for one run and cleaned up after, and the PostgreSQL transaction count of a phase.

The embedded default (SQLite everywhere, artifacts in a local directory) is always the baseline; the
backends named add a second run of the same phases with registry and logs on PostgreSQL, the queues and
the gateway's rate-limit buckets on Redis, and every artifact on S3 (a moto server process of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

#: The backends a distributed run can use; ``distributed`` names all three.
DISTRIBUTED = ("postgres", "redis", "s3")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: moto accepts any credentials; the services read them from the standard AWS variables, as on AWS.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "conveyor-bench", "AWS_SECRET_ACCESS_KEY": "conveyor-bench-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def parse_backends(text: str) -> tuple[str, ...]:
    """The distributed backends a ``--backends`` list names, in a fixed order: ``embedded`` (the
    baseline, always run) adds none, ``distributed`` all of them. Raises ``ValueError`` naming an
    unknown one."""
    chosen: set[str] = set()
    for name in (part.strip().lower() for part in text.split(",")):
        if name == "distributed":
            chosen.update(DISTRIBUTED)
        elif name in DISTRIBUTED:
            chosen.add(name)
        elif name != "embedded":
            raise ValueError(f"unknown backend {name!r}: choose among embedded, distributed, "
                             + ", ".join(DISTRIBUTED))
    return tuple(name for name in DISTRIBUTED if name in chosen)


@dataclass
class Servers:
    """Where the servers the distributed run uses are: options, else ``CONVEYOR_BENCH_*`` variables,
    else this machine's defaults."""

    postgres_url: str = field(default_factory=lambda: os.environ.get("CONVEYOR_BENCH_POSTGRES_URL",
                                                                      DEFAULT_POSTGRES_URL))
    redis_url: str = field(default_factory=lambda: os.environ.get("CONVEYOR_BENCH_REDIS_URL", DEFAULT_REDIS_URL))


def with_path_and_query(url: str, path: str | None = None, **params: str) -> str:
    """``url`` with another path (a database) and these query parameters added."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path if path is None else path, query, parts.fragment))


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set meanwhile (the launcher passes its environment on to the
    services it plans), as it was after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TransactionCounter:
    """Committed transactions of one database (``pg_stat_database.xact_commit``), read from a connection
    to another database where there is one, so that reading does not count."""

    def __init__(self, server_url: str, database: str, settle_s: float) -> None:
        self.server_url = server_url
        self.database = database
        #: Backends flush their statistics at most once a second, and an idle one up to 10 s later:
        #: waiting this long before each reading counts every transaction of the phase, and no other.
        self.settle_s = settle_s

    async def read(self) -> int:
        import asyncpg

        await asyncio.sleep(self.settle_s)
        conn = await asyncpg.connect(self.server_url)
        try:
            value = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                                        self.database)
        finally:
            await conn.close()
        return int(value or 0)


#: The names the servers' CPU goes under, apart from the services'.
SERVERS = frozenset({"s3 (moto)", "postgresql (server)", "redis (server)"})
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def local_server_pids(command: str) -> tuple[int, ...]:
    """The processes of this machine whose command name is ``command`` (``postgres``: the server and
    every backend of it, ``redis-server``), from Linux ``/proc``; none elsewhere."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    pids.append(int(entry.name))
            except OSError:
                continue  # it ended meanwhile
    return tuple(pids)


@dataclass
class DistributedRun:
    """The environment of one distributed stack, and what it found out about its servers."""

    env: dict[str, str]
    describe: dict[str, Any]
    counter: TransactionCounter | None = None
    #: Server processes of the run's own (the moto S3 server).
    pids: dict[str, int] = field(default_factory=dict)
    #: The command names of the database and queue servers on this machine that the run uses.
    local_servers: dict[str, str] = field(default_factory=dict)

    def server_pids(self) -> dict[str, int | tuple[int, ...]]:
        """The servers' processes as they are now (PostgreSQL starts a backend per connection: call
        this once the stack is up)."""
        found: dict[str, int | tuple[int, ...]] = dict(self.pids)
        found.update({name: local_server_pids(command) for name, command in self.local_servers.items()})
        return found


@contextlib.asynccontextmanager
async def _postgres(server_url: str, settle_s: float) -> AsyncIterator[tuple[dict[str, str], TransactionCounter,
                                                                            dict[str, Any]]]:
    """A fresh database on the server (so that its transaction count is the stack's alone), else fresh
    schemas in the given one where the role may not create databases; dropped after."""
    import asyncpg

    name = f"conveyor_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            own_database = True
        except asyncpg.InsufficientPrivilegeError:
            own_database = False
        database = name if own_database else await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    base = with_path_and_query(server_url, f"/{database}") if own_database else server_url
    schemas = {"registry": f"{name}_registry", "logs": f"{name}_logs"}
    env = {"REGISTRY_STORE_URL": with_path_and_query(base, schema=schemas["registry"]),
           "LOGGING_STORE_URL": with_path_and_query(base, schema=schemas["logs"])}
    describe = {"database": database, "schemas": list(schemas.values()),
                "transactions_counted": "this database alone" if own_database
                else "every client of the database (the role may not create one)"}
    try:
        yield env, TransactionCounter(server_url, database, settle_s), describe
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            if own_database:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                for schema in schemas.values():
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def _redis(server_url: str) -> AsyncIterator[dict[str, str]]:
    """A fresh key prefix for the queues and the rate-limit buckets; its keys deleted after."""
    import redis.asyncio as redis

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    url = with_path_and_query(server_url, prefix=prefix)
    try:
        yield {"SCHEDULER_STORE_URL": url, "GATEWAY_RATE_LIMIT_URL": url}
    finally:
        client = redis.Redis.from_url(server_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start:start + 1000])
        finally:
            await client.aclose()


_MOTO = ("import logging, sys; logging.getLogger('werkzeug').setLevel(logging.WARNING); "
         "from moto.server import main; main(sys.argv[1:])")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _create_bucket(endpoint: str, bucket: str) -> None:
    """Made with boto3 (moto[server] brings it): the artifact store never creates a bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


@contextlib.asynccontextmanager
async def _s3() -> AsyncIterator[tuple[dict[str, str], int]]:
    """A moto S3 server process of this run alone, with a bucket made for it; everything it held goes
    with the process."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's server with werkzeug's line per request turned off: formatting it under the server's lock
    # was a sixth of its time in the bench, and nobody reads it.
    process = subprocess.Popen([sys.executable, "-c", _MOTO, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(endpoint + "/moto-api/"):
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the moto S3 server did not start at {endpoint}")
                await asyncio.sleep(0.1)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        await asyncio.to_thread(_create_bucket, endpoint, bucket)
        url = f"s3://{bucket}/artifacts?endpoint={endpoint}"
        yield {"RECEPTIONIST_ARTIFACTS_URL": url, "HANDLER_ARTIFACTS_URL": url, **S3_CREDENTIALS}, process.pid
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


@contextlib.asynccontextmanager
async def distributed(backends: tuple[str, ...], servers: Servers, settle_s: float
                      ) -> AsyncIterator[DistributedRun]:
    """Fresh PostgreSQL schemas, Redis prefix and S3 bucket for the backends named, as the environment
    of a stack; every one of them removed after."""
    async with contextlib.AsyncExitStack() as stack:
        run = DistributedRun({}, {"backends": list(backends)})
        if "postgres" in backends:
            env, run.counter, run.describe["postgres"] = await stack.enter_async_context(
                _postgres(servers.postgres_url, settle_s))
            run.env.update(env)
            if urlsplit(servers.postgres_url).hostname in _LOCAL_HOSTS:
                run.local_servers["postgresql (server)"] = "postgres"
        if "redis" in backends:
            run.env.update(await stack.enter_async_context(_redis(servers.redis_url)))
            if urlsplit(servers.redis_url).hostname in _LOCAL_HOSTS:
                run.local_servers["redis (server)"] = "redis-server"
        if "s3" in backends:
            env, run.pids["s3 (moto)"] = await stack.enter_async_context(_s3())
            run.env.update(env)
        # Passwords stay out of what is printed: the URLs' hosts and names are what a reader needs.
        run.describe["settings"] = {name: _without_password(value) for name, value in run.env.items()
                                    if name.endswith("_URL")}
        yield run


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def side_by_side(embedded: dict[str, Any], other: dict[str, Any]) -> str:
    """The throughput figures of both runs, one line each, and the distributed run's share of the
    embedded one."""
    rows = [("completed jobs/s (end to end)", "completed_per_s"), ("submitted jobs/s", "submitted_per_s")]
    lines = [f"{'':34}{'embedded':>12}{'distributed':>14}{'ratio':>8}"]
    for label, key in rows:
        a, b = embedded.get(key, 0.0), other.get(key, 0.0)
        lines.append(f"{label:34}{a:>12.1f}{b:>14.1f}{(b / a if a else 0.0):>8.2f}")
    for label, key in (("submit latency p50/p99 ms", "submit_latency_ms"),
                       ("submit to finished p50/p99 ms", "submit_to_finished_ms")):
        a, b = embedded.get(key, {}), other.get(key, {})
        lines.append(f"{label:34}{a.get('p50', 0):>6.0f}/{a.get('p99', 0):<5.0f}"
                     f"{b.get('p50', 0):>8.0f}/{b.get('p99', 0):<5.0f}")
    lines.append(f"{'CPU ms per job: services':34}{embedded.get('cpu_ms_per_job', 0):>12.2f}"
                 f"{other.get('cpu_ms_per_job', 0):>14.2f}")
    if "server_cpu_ms_per_job" in other:
        lines.append(f"{'CPU ms per job: local servers':34}{'':>12}{other['server_cpu_ms_per_job']:>14.2f}")
    if "pg_transactions_per_job" in other:
        lines.append(f"{'PostgreSQL transactions per job':34}{'':>12}{other['pg_transactions_per_job']:>14.2f}")
    return "\n".join(lines)
