"""Gap-free events on PostgreSQL: a reader following ``seq`` with ``after`` never skips an event whose
transaction commits after a later-numbered one, whatever the number of writers.

One test makes the race happen on purpose (a trigger holds one writer's transaction open after its event
row is written, until the test lets it go); the other runs two registry apps on one schema with hundreds
of concurrent changes while two readers follow the stream over HTTP."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import asyncpg

from registry.store.postgres import PostgresJobStore
from shared.contract import JobCreate, JobKind, JobState, JobUpdate
from tests.conftest import POSTGRES_URL
from tests.support import wait_until

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
DEADLINE_S = 20.0


def _schema(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["schema"]


def _spec() -> JobCreate:
    return JobCreate(kind=JobKind.EXPORT, type="epub", owner="alice", payload={"bookId": "b1"})


async def test_an_event_that_commits_late_is_not_skipped(postgres_url: str) -> None:
    tag = f"gap-{uuid.uuid4().hex[:8]}"  # finds this test's sessions in pg_stat_activity
    store = PostgresJobStore.from_url(f"{postgres_url}&application_name={tag}")
    await store.open()
    other = PostgresJobStore.from_url(f"{postgres_url}&application_name={tag}")  # a second registry
    await other.open()
    gate = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": _schema(postgres_url)})
    key = random.randrange(1, 2**31)  # advisory locks are database-wide: one of this test alone
    try:
        slow, _ = await store.create(_spec(), T0)
        fast, _ = await store.create(_spec(), T0)
        base = await store.last_seq()
        # The slow writer's transaction stops right after its event row is written, until the gate opens.
        await gate.execute(f"""
            CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS
              $$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$;
            CREATE TRIGGER hold AFTER INSERT ON events FOR EACH ROW
              WHEN (NEW.job_id = '{slow.id}') EXECUTE FUNCTION hold();""")
        await gate.execute("SELECT pg_advisory_lock($1)", key)
        processing = JobUpdate(attempt=1, state=JobState.PROCESSING)
        slow_write = asyncio.create_task(store.update(slow.id, processing, T0))

        async def waiting(wait_event: str | None = None) -> bool:
            rows = await gate.fetch("SELECT wait_event FROM pg_stat_activity WHERE application_name = $1"
                                    " AND wait_event_type = 'Lock'", tag)
            return any(wait_event is None or row[0] == wait_event for row in rows)

        await wait_until(lambda: waiting("advisory"), timeout_s=DEADLINE_S, what="the slow writer to hold")
        fast_write = asyncio.create_task(other.update(fast.id, processing, T0))

        async def fast_done_or_blocked() -> bool:
            if fast_write.done():
                return True
            rows = await gate.fetch("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                                    " AND wait_event_type = 'Lock'", tag)
            return rows[0][0] >= 2

        await wait_until(fast_done_or_blocked, timeout_s=DEADLINE_S, what="the fast writer to end or wait")
        # The reader looks while the slow transaction is still open.
        seen = await store.events(after_seq=base)
        await gate.execute("SELECT pg_advisory_unlock($1)", key)
        await asyncio.wait_for(asyncio.gather(slow_write, fast_write), DEADLINE_S)
        seen += await store.events(after_seq=seen[-1].seq if seen else base)
        assert sorted(e.job_id for e in seen) == sorted([slow.id, fast.id])
        assert seen == await store.events(after_seq=base)
    finally:
        await gate.close()
        await other.close()
        await store.close()


@asynccontextmanager
async def registry_process(store_url: str, session: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A registry as its own process (``python -m registry``) on a free loopback port; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "REGISTRY_STORE_URL": store_url, "REGISTRY_PORT": str(port),
           "REGISTRY_EVENT_RECHECK_S": "0.02", "REGISTRY_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "registry", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        assert proc.returncode is None, "the registry process exited"
        try:
            async with session.get(url + "/health") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    try:
        await wait_until(healthy, timeout_s=DEADLINE_S, what="the registry process to be healthy")
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), DEADLINE_S)


class Reader:
    """Follows ``GET /events`` with ``after`` as the receptionist's streams do, keeping what it was given."""

    def __init__(self, session: aiohttp.ClientSession, url: str, after: int) -> None:
        self.session = session
        self.url = url
        self.start = self.after = after
        self.items: list[dict[str, Any]] = []
        self.writers_done = asyncio.Event()
        self.final_seq = 0

    async def run(self) -> None:
        while not (self.writers_done.is_set() and self.after >= self.final_seq):
            params = {"after": str(self.after), "wait_s": "1", "limit": "100"}
            async with self.session.get(self.url + "/events", params=params) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            self.items += page["items"]
            if page["items"]:
                self.after = page["items"][-1]["seq"]


async def test_two_registries_with_concurrent_writers_lose_no_event(postgres_url: str) -> None:
    jobs = 200
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session, \
            registry_process(postgres_url, session) as first, registry_process(postgres_url, session) as second:
        urls = [first, second]
        # Several readers from the start, on both registries: each is one more chance to read at the moment
        # a later-numbered event has committed and an earlier one has not yet.
        readers = [Reader(session, urls[i % 2], after=0) for i in range(4)]
        follow = [asyncio.create_task(reader.run()) for reader in readers]

        async def call(url: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
            async with session.request(method, url + path, json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
                return await resp.json()

        async def life(i: int) -> None:
            """One job's changes, spread over both registries, single and batched routes."""
            here, there = urls[i % 2], urls[(i + 1) % 2]
            job = {"kind": "export", "type": "epub", "owner": f"u{i % 7}", "payload": {"bookId": f"b{i}"}}
            if i % 3:
                job = await call(here, "POST", "/jobs", job)
            else:
                job = (await call(here, "POST", "/jobs/batch", {"jobs": [job]}))["results"][0]["job"]
            await call(there, "PATCH", f"/jobs/{job['id']}", {"attempt": 1, "state": "processing"})
            await call(here, "POST", "/jobs/updates", {"updates": [{"id": job["id"], "attempt": 1, "progress": 0.5}]})
            await call(there, "PATCH", f"/jobs/{job['id']}", {"attempt": 1, "state": "finished"})

        async def resume_mid_stream() -> None:
            """One more reader, on the other registry, resumes from where the first one had got to."""
            async def a_third() -> bool:
                return len(readers[0].items) >= jobs * 4 // 3

            await wait_until(a_third, timeout_s=4 * DEADLINE_S, what="a third of the stream")
            readers.append(Reader(session, second, after=readers[0].after))
            follow.append(asyncio.create_task(readers[-1].run()))

        await asyncio.wait_for(asyncio.gather(resume_mid_stream(), *(life(i) for i in range(jobs))), 4 * DEADLINE_S)
        final = await call(first, "GET", "/events?after=0&limit=1")
        for reader in readers:
            reader.final_seq = final["last_seq"]
            reader.writers_done.set()
        await asyncio.wait_for(asyncio.gather(*follow), DEADLINE_S)

    store = PostgresJobStore.from_url(postgres_url)
    await store.open()
    try:
        every = [e.model_dump(mode="json") for e in await store.events(after_seq=0, limit=100_000)]
    finally:
        await store.close()
    assert len(every) == 4 * jobs
    assert len(readers) == 5 and readers[-1].start > 0
    for reader in readers:
        seqs = [e["seq"] for e in reader.items]
        missed = [e["seq"] for e in every if e["seq"] > reader.start and e["seq"] not in set(seqs)]
        assert missed == [], f"{len(missed)} of {len(every)} events missed"
        assert len(seqs) == len(set(seqs)), "an event came twice"
        assert [_key(e) for e in reader.items] == [_key(e) for e in every if e["seq"] > reader.start]


def _key(event: dict[str, Any]) -> tuple[Any, ...]:
    return event["seq"], event["job_id"], event["type"], event["state"], event["job"]["progress"]


async def test_a_database_numbered_by_a_sequence_carries_on_from_its_last_seq(postgres_url: str) -> None:
    """A database made before the sequencer (``seq BIGSERIAL``) keeps its events; new ones follow them, and
    the old sequence can no longer number an event behind the sequencer's back."""
    schema = _schema(postgres_url)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f"""
            CREATE TABLE "{schema}".events (seq BIGSERIAL PRIMARY KEY, job_id UUID NOT NULL, owner TEXT NOT NULL,
                kind TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, previous_state TEXT,
                attempt INTEGER NOT NULL, at TIMESTAMPTZ NOT NULL, job JSONB NOT NULL);
            INSERT INTO "{schema}".events (job_id, owner, kind, type, state, attempt, at, job)
                SELECT gen_random_uuid(), 'alice', 'export', 'created', 'pending', 0, now(), '{{}}'
                FROM generate_series(1, 7);""")
        store = PostgresJobStore.from_url(postgres_url)
        await store.open()
        try:
            assert await store.last_seq() == 7
            job, _ = await store.create(_spec(), T0)
            assert [e.seq for e in await store.events(after_seq=6)] == [7, 8]
            assert (await store.events(after_seq=7))[0].job_id == job.id
        finally:
            await store.close()
        default = await conn.fetchval(
            "SELECT column_default FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = 'events' AND column_name = 'seq'", schema)
        assert default is None
    finally:
        await conn.close()
