"""The PostgreSQL store's batches are one transaction each, with a fixed number of statements whatever the
batch's size, counted by a query logger on the store's one connection (what asyncpg sends, BEGIN and
COMMIT included)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest

from registry.store.postgres import PostgresJobStore
from shared.contract import JobCreate, JobKind, JobState, JobUpdate
from tests.conftest import POSTGRES_URL
from tests.support import wait_until

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


@dataclass
class Sent:
    """What a store sent: every statement in order; ``transactions`` counts an explicit BEGIN .. COMMIT
    as one and a statement outside one as one of its own (autocommit)."""

    statements: list[str] = field(default_factory=list)

    @property
    def transactions(self) -> int:
        count, inside = 0, False
        for sql in self.statements:
            verb = sql.strip().rstrip(";").split(None, 1)[0].upper()
            if verb == "BEGIN":
                count, inside = count + 1, True
            elif verb in ("COMMIT", "ROLLBACK"):
                inside = False
            elif not inside:
                count += 1
        return count

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture
async def counted(postgres_url: str) -> AsyncIterator[tuple[PostgresJobStore, Sent]]:
    """A store with one pooled connection, and what it sends from then on."""
    store = PostgresJobStore.from_url(postgres_url, pool_min=1, pool_max=1)
    await store.open()
    sent = Sent()
    assert store._pool is not None
    async with store._pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.statements.append(record.query))
    # asyncpg looks up the array types once per connection, on their first use: not a cost per job.
    (warm, _), = await store.create_many(_specs(1, owner="warm-up"), T0)
    await store.update_many([(warm.id, JobUpdate(attempt=1, state=JobState.PROCESSING))], T0)
    await asyncio.sleep(0)  # the logger is called soon after each query: let the last ones land
    sent.clear()
    try:
        yield store, sent
    finally:
        await store.close()


def _specs(n: int, owner: str = "u") -> list[JobCreate]:
    return [JobCreate(kind=JobKind.EXPORT, type="epub", owner=f"{owner}{i % 3}", payload={"bookId": f"b{i}"},
                      idempotency_key=f"k{i}") for i in range(n)]


async def _settled() -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("size", [1, 50])
async def test_a_batch_is_one_transaction_with_a_fixed_number_of_statements(
        counted: tuple[PostgresJobStore, Sent], size: int) -> None:
    store, sent = counted
    specs = _specs(size)
    outcomes = await store.create_many(specs, T0)
    await _settled()
    assert all(created for _, created in outcomes)
    assert sent.transactions == 1
    assert len(sent.statements) == 4  # BEGIN, the jobs, their events, COMMIT
    sent.clear()

    # Every one exists: the lookup of the existing jobs instead of the events.
    again = await store.create_many(specs, T0 + timedelta(seconds=1))
    await _settled()
    assert [(job.id, created) for job, created in again] == [(job.id, False) for job, _ in outcomes]
    assert sent.transactions == 1 and len(sent.statements) == 4
    sent.clear()

    ids = [job.id for job, _ in outcomes]
    for state in (JobState.PROCESSING, JobState.FINISHED):
        results = await store.update_many([(job_id, JobUpdate(attempt=1, state=state)) for job_id in ids],
                                          T0 + timedelta(seconds=2))
        await _settled()
        assert all(not isinstance(r, Exception) and r[1] and r[0].state == state for r in results)
        assert sent.transactions == 1
        assert len(sent.statements) == 4  # BEGIN, lock and read the jobs, write them and their events, COMMIT
        sent.clear()
    events = await store.events(after_seq=2, limit=10_000)  # after the warm-up's
    assert [(e.job_id, e.state) for e in events] == [
        (job_id, state) for state in (JobState.PENDING, JobState.PROCESSING, JobState.FINISHED) for job_id in ids]
    assert [e.seq for e in events] == list(range(3, 3 * size + 3))  # dense: numbered at commit


async def test_each_single_change_is_one_transaction_of_four_statements(counted: tuple[PostgresJobStore, Sent]) -> None:
    """The single-job routes cost no more than a batch of one: no extra round trip to reset the pooled
    connection at every release."""
    store, sent = counted
    job, _ = await store.create(_specs(1)[0], T0)
    await store.update(job.id, JobUpdate(attempt=1, state=JobState.PROCESSING), T0)
    await store.update(job.id, JobUpdate(attempt=1, state=JobState.FINISHED), T0)
    await _settled()
    assert sent.transactions == 3
    assert len(sent.statements) == 12


async def test_concurrent_single_writes_share_one_transaction_each_judged_alone(
        counted: tuple[PostgresJobStore, Sent]) -> None:
    """Writes that arrive while a transaction is in flight go together in the next one (group commit); each
    caller still gets its own answer, a refusal or an unknown job included."""
    store, sent = counted
    made = await store.create_many(_specs(30), T0)
    ids = [job.id for job, _ in made]
    await _settled()
    sent.clear()
    processing = JobUpdate(attempt=1, state=JobState.PROCESSING)
    finished = JobUpdate(attempt=1, state=JobState.FINISHED)
    # Every call below is submitted before the first transaction starts (tasks run in the order made).
    outcomes = await asyncio.gather(
        *(store.update(job_id, processing, T0) for job_id in ids[:20]),
        *(store.update(job_id, finished, T0) for job_id in ids[20:]),  # pending cannot finish
        store.update(uuid.uuid4(), processing, T0),
        store.create(_specs(1, owner="late")[0], T0),
        return_exceptions=True)
    await _settled()
    assert [type(o).__name__ for o in outcomes] == ["tuple"] * 20 + ["TransitionRefused"] * 10 + ["KeyError", "tuple"]
    assert all(o[0].state == JobState.PROCESSING for o in outcomes[:20])
    assert sent.transactions == 1
    assert [(await store.get(job_id)).state for job_id in ids] == [JobState.PROCESSING] * 20 + [JobState.PENDING] * 10


async def test_two_registries_creating_the_same_jobs_in_opposite_orders_both_answer(postgres_url: str) -> None:
    """Registry A registers [one, two] while registry B registers [two, one]: each waits for the other's
    new row, PostgreSQL breaks the deadlock by rolling one back, and that one's group runs again and finds
    the jobs the other made. A trigger holds A between its two rows until B waits on A's first."""
    schema = dict(parse_qsl(urlsplit(postgres_url).query))["schema"]
    tag = uuid.uuid4().hex[:8]
    a = PostgresJobStore.from_url(f"{postgres_url}&application_name=a-{tag}")
    b = PostgresJobStore.from_url(f"{postgres_url}&application_name=b-{tag}")
    await a.open()
    await b.open()
    gate = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    key = random.randrange(1, 2**31)
    one, two = _specs(2)
    try:
        await gate.execute(f"""
            CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS
              $$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NEW; END $$;
            CREATE TRIGGER hold BEFORE INSERT ON jobs FOR EACH ROW
              WHEN (NEW.id = '{two.id}' AND current_setting('application_name') = 'a-{tag}')
              EXECUTE FUNCTION hold();""")
        await gate.execute("SELECT pg_advisory_lock($1)", key)
        first = asyncio.create_task(a.create_many([one, two], T0))

        async def waiting(name: str, event: str) -> bool:
            return bool(await gate.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                                            " AND wait_event = $2", name, event))

        await wait_until(lambda: waiting(f"a-{tag}", "advisory"), timeout_s=20, what="A to hold after one")
        second = asyncio.create_task(b.create_many([two, one], T0))
        await wait_until(lambda: waiting(f"b-{tag}", "transactionid"), timeout_s=20, what="B to wait on A")
        await gate.execute("SELECT pg_advisory_unlock($1)", key)
        outcomes = await asyncio.wait_for(asyncio.gather(first, second), 20)
        by_store = [{job.id: created for job, created in made} for made in outcomes]
        assert by_store[0].keys() == by_store[1].keys() == {one.id, two.id}
        assert [by_store[0][job_id] + by_store[1][job_id] for job_id in (one.id, two.id)] == [1, 1]
        created = [e.job_id for e in await a.events(after_seq=0) if e.type == "created"]
        assert sorted(created) == sorted([one.id, two.id])
    finally:
        await gate.close()
        await a.close()
        await b.close()
