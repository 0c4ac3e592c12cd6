"""The registry store for many machines: PostgreSQL through an asyncpg pool
(``postgresql://user@host:5432/db``; ``?schema=NAME`` keeps the tables in that schema, created if missing).

A batch (``create_many``, ``update_many``) is one transaction of the same few multi-row statements as a
single write (:mod:`registry.store.postgres_writes`), and the writes that arrive while one transaction is
in flight share the next (:mod:`registry.store.postgres_commits`), each still judged alone. An update
locks its jobs' rows (``SELECT ... FOR UPDATE``) before applying the state machine, so concurrent reports
of one job queue behind each other and each sees the state the previous one left.

Event order: the event sequencer (:mod:`registry.store.postgres_writes`) makes transactions with events
commit in ``seq`` order, whatever the number of registries on the database, so a reader that has seen a
``seq`` has seen every lower one: following ``events(after_seq=...)`` misses nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from registry.errors import StoreUnavailable
from registry.store.base import JobEvent, JobStore, StoredUser
from registry.store.paging import decode_cursor, encode_cursor
from registry.store.postgres_commits import GroupCommitter
from registry.store.postgres_instances import PostgresInstances
from registry.store.postgres_schedules import PostgresSchedules
from registry.store.postgres_schema import DDL
from registry.store.postgres_writes import Apply, Change, Create, Outcome, write
from registry.store.rules import apply_cancel, apply_redrive
from shared.api import Role
from shared.contract import Job, JobCreate, JobPage, JobState, JobUpdate, TransitionRefused, apply_update
from shared.postgres import (
    check_schema,
    create_tables,
    import_asyncpg,
    session_settings,
    split_schema,
    unreachable_errors,
)

if TYPE_CHECKING:
    import asyncpg


_EVENT_COLUMNS = "seq, job_id, owner, kind, type, state, previous_state, attempt, at, job::text"
_USER_COLUMNS = "id, username, password_hash, roles, permissions, created_at, updated_at, epoch"
# The flag lives only in the job document. The condition is spelled out with no parameter, exactly as in
# the jobs_cancel_requested partial index, so that the planner can use that index (flagged jobs are few).
_CANCEL_REQUESTED = {True: "(doc->>'cancel_requested')::boolean",
                     False: "NOT (doc->>'cancel_requested')::boolean"}


def _may_be_stored(text: str) -> bool:
    """Whether PostgreSQL's text can hold ``text``: not with a NUL. A username or an owner with one (which
    no user has: the API refuses to make it) is nobody, without a query that the server would refuse."""
    return "\x00" not in text


def _user(row: asyncpg.Record) -> StoredUser:
    return StoredUser(id=uuid.UUID(bytes=row["id"].bytes), username=row["username"],
                      password_hash=row["password_hash"], roles=row["roles"], permissions=row["permissions"],
                      created_at=row["created_at"], updated_at=row["updated_at"], epoch=row["epoch"])


#: How often a group transaction that lost a deadlock is run again before its writers hear of it.
_DEADLOCK_ATTEMPTS = 3


def _unexpected(outcome: Exception) -> Any:
    """An op's outcome that no caller expects (a registration has none): raised, never handed on."""
    raise outcome


def _applying(update: JobUpdate) -> Apply:
    return lambda job, now: apply_update(job, update, now)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg's default sends one more statement at every release (unlock
    advisory locks, close cursors, unlisten, reset settings): a round trip and a transaction for nothing,
    since this store leaves no session state (its advisory lock is a transaction's). An open transaction is
    still rolled back by the pool before this is called."""


class PostgresJobStore(PostgresInstances, PostgresSchedules, JobStore):
    """Jobs in PostgreSQL: indexed columns for filters and order, the whole job as JSONB; users, service
    instances and schedules in columns."""

    def __init__(self, dsn: str, *, schema: str | None = None, pool_min: int = 1, pool_max: int = 10,
                 acquire_timeout_s: float = 10.0) -> None:
        check_schema(schema)
        self.dsn = dsn
        self.schema = schema
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.acquire_timeout_s = acquire_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._commits: GroupCommitter[Create | Change, tuple[Job, bool]] = GroupCommitter(self._write)
        self._asyncpg = import_asyncpg("the PostgreSQL registry store")
        self._unavailable = unreachable_errors(self._asyncpg)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresJobStore:
        """A store for ``postgresql://...``; the ``schema`` query parameter is ours, the rest goes to asyncpg."""
        dsn, schema = split_schema(url)
        return cls(dsn, schema=schema, **options)

    async def open(self) -> None:
        try:
            pool = await self._asyncpg.create_pool(self.dsn, min_size=self.pool_min, max_size=self.pool_max,
                                                   server_settings=session_settings(self.schema),
                                                   reset=_keep_session)
        except self._unavailable as exc:
            raise StoreUnavailable("the registry database is unreachable") from exc
        try:
            async with pool.acquire() as conn:
                await create_tables(conn, self.schema, DDL, "conveyor.registry.schema")
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        await self._commits.wait_idle()  # the writes already accepted go through first
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        try:
            async with self._pool.acquire(timeout=self.acquire_timeout_s) as conn:
                yield conn
        except self._unavailable as exc:
            raise StoreUnavailable("the registry database is unreachable") from exc

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def create(self, spec: JobCreate, now: datetime) -> tuple[Job, bool]:
        return (await self.create_many([spec], now))[0]

    async def create_many(self, specs: list[JobCreate], now: datetime) -> list[tuple[Job, bool]]:
        outcomes = await self._commits.submit([Create(spec, now) for spec in specs])
        return [_unexpected(outcome) if isinstance(outcome, Exception) else outcome for outcome in outcomes]

    async def get(self, job_id: uuid.UUID) -> Job | None:
        async with self._connection() as conn:
            doc = await conn.fetchval("SELECT doc::text FROM jobs WHERE id = $1", job_id)
        return Job.model_validate_json(doc) if doc is not None else None

    async def _write(self, ops: Sequence[Create | Change]) -> list[tuple[Job, bool] | Exception]:
        """One transaction for a group of writes (see :mod:`registry.store.postgres_commits`). Two
        registries creating one job id in two batches each may deadlock on each other's new rows; the
        loser's transaction is rolled back whole by PostgreSQL, so it is simply run again."""
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    return await write(conn, ops)
            except self._asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _change(self, job_id: uuid.UUID, apply: Apply, now: datetime) -> tuple[Job, bool]:
        (outcome,) = await self._commits.submit([Change(job_id, apply, now)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def update(self, job_id: uuid.UUID, update: JobUpdate, now: datetime) -> tuple[Job, bool]:
        return await self._change(job_id, _applying(update), now)

    async def update_many(self, updates: list[tuple[uuid.UUID, JobUpdate]], now: datetime) -> list[Outcome]:
        outcomes = await self._commits.submit([Change(job_id, _applying(update), now) for job_id, update in updates])
        return [outcome if isinstance(outcome, tuple | KeyError | TransitionRefused) else _unexpected(outcome)
                for outcome in outcomes]

    async def request_cancel(self, job_id: uuid.UUID, now: datetime) -> tuple[Job, bool]:
        return await self._change(job_id, apply_cancel, now)

    async def redrive(self, job_id: uuid.UUID, extra_attempts: int, now: datetime) -> tuple[Job, bool]:
        if extra_attempts < 1:  # refused here: in a group transaction it would fail the others' writes too
            raise ValueError(f"extra_attempts must be at least 1, not {extra_attempts}")
        return await self._change(job_id, lambda job, at: apply_redrive(job, extra_attempts, at), now)

    async def list(self, *, kind: str | None = None, state: JobState | None = None, owner: str | None = None,
                   updated_before: datetime | None = None, cancel_requested: bool | None = None,
                   limit: int = 100, cursor: str | None = None, created_after: datetime | None = None) -> JobPage:
        if owner is not None and not _may_be_stored(owner):
            return JobPage(items=[], next_cursor=None)  # nobody's: an operator's ?owner= is the client's text
        where: list[str] = []
        args: list[Any] = []
        if kind is not None:
            args.append(str(kind))
            where.append(f"kind = ${len(args)}")
        if state is not None:
            args.append(JobState(state).value)
            where.append(f"state = ${len(args)}")
        if owner is not None:
            args.append(owner)
            where.append(f"owner = ${len(args)}")
        if updated_before is not None:
            args.append(updated_before)
            where.append(f"updated_at < ${len(args)}")
        if cancel_requested is not None:
            where.append(_CANCEL_REQUESTED[bool(cancel_requested)])
        if created_after is not None:
            args.append(created_after)
            where.append(f"created_at >= ${len(args)}")
        if cursor:
            args.extend(decode_cursor(cursor))
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        sql = "SELECT doc::text FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit + 1)
        sql += f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        items = [Job.model_validate_json(row[0]) for row in rows[:limit]]
        more = len(rows) > limit
        return JobPage(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def count_by_state(self, *, kind: str | None = None) -> dict[JobState, int]:
        async with self._connection() as conn:
            if kind is None:
                rows = await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state")
            else:
                rows = await conn.fetch("SELECT state, count(*) FROM jobs WHERE kind = $1 GROUP BY state",
                                        str(kind))
        counts = dict.fromkeys(JobState, 0)
        counts.update((JobState(state), n) for state, n in rows)
        return counts

    async def events(self, *, job_id: uuid.UUID | None = None, after_seq: int = 0, limit: int = 1000,
                     owner: str | None = None, kind: str | None = None) -> list[JobEvent]:
        if owner is not None and not _may_be_stored(owner):
            return []
        where, params = ["seq > $1"], [after_seq]
        for column, value in (("job_id", job_id), ("owner", owner), ("kind", str(kind) if kind else None)):
            if value is not None:
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        params.append(limit)
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(params)}",
                *params)
        return [
            JobEvent(seq=seq, job_id=uuid.UUID(bytes=jid.bytes), owner=owner, kind=kind, type=type_,
                     state=JobState(state), previous_state=JobState(prev) if prev else None, attempt=attempt,
                     at=at, job=orjson.loads(doc))
            for seq, jid, owner, kind, type_, state, prev, attempt, at, doc in rows
        ]

    async def last_seq(self) -> int:
        async with self._connection() as conn:
            # The sequencer's count: every seq up to it is committed (or given back by a rollback).
            return await conn.fetchval("SELECT last FROM event_seq")

    async def create_user(self, user: StoredUser) -> bool:
        async with self._connection() as conn:
            inserted = await conn.fetchval(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT DO NOTHING RETURNING username",
                user.id, user.username, user.password_hash, [role.value for role in user.roles], user.permissions,
                user.created_at, user.updated_at, user.epoch)
        return inserted is not None

    async def get_user(self, username: str) -> StoredUser | None:
        if not _may_be_stored(username):
            return None
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE username = $1", username)
        return _user(row) if row is not None else None

    async def get_user_by_id(self, user_id: uuid.UUID) -> StoredUser | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return _user(row) if row is not None else None

    async def list_users(self) -> list[StoredUser]:
        async with self._connection() as conn:
            # COLLATE "C": code point order, as the other backends; the database's default collation
            # (en_US and the like) would interleave upper and lower case.
            rows = await conn.fetch(f'SELECT {_USER_COLUMNS} FROM users ORDER BY username COLLATE "C"')
        return [_user(row) for row in rows]

    async def count_users(self) -> int:
        async with self._connection() as conn:
            return await conn.fetchval("SELECT count(*) FROM users")

    async def delete_user(self, username: str) -> bool:
        if not _may_be_stored(username):
            return False
        async with self._connection() as conn:
            deleted = await conn.fetchval("DELETE FROM users WHERE username = $1 RETURNING username", username)
        return deleted is not None

    async def set_password(self, username: str, password_hash: str, now: datetime) -> bool:
        if not _may_be_stored(username):
            return False
        async with self._connection() as conn:
            changed = await conn.fetchval(
                "UPDATE users SET password_hash = $2, updated_at = $3, epoch = epoch + 1 WHERE username = $1"
                " RETURNING username", username, password_hash, now)
        return changed is not None

    async def set_roles(self, username: str, roles: list[Role], now: datetime) -> StoredUser | None:
        if not _may_be_stored(username):
            return None
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE users SET roles = $2, updated_at = $3, epoch = epoch + 1 WHERE username = $1"
                f" RETURNING {_USER_COLUMNS}", username, [role.value for role in roles], now)
        return _user(row) if row is not None else None
