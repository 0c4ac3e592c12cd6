"""The log store for many machines: PostgreSQL through an asyncpg pool
(``postgresql://user@host:5432/db``; ``?schema=NAME`` keeps the table in that schema, created if missing).

A batch is one ``COPY`` in one transaction: all of it is stored, or none. ``meta`` is kept as ``json``
(the exact text, where a NUL is escaped); the filterable fields are columns with an index each, ordered
by ``(ts, id)`` so a filtered query reads its newest rows straight off the index. Retention deletes
``delete_chunk`` rows a statement, so a large sweep never holds long locks. Several logging services may
share one database: schema creation takes an advisory lock, and a sweep that races another one deletes
each row once.

A line's sequence number (:meth:`~logging_service.store.base.LogStore.arrivals`) is its identity ``id``. A
sequence hands out numbers as transactions ask, not as they commit, so a batch takes an advisory lock
(one per schema) before its ``COPY``: batches commit in the order of their ids, and a reader that sees one
id sees every smaller one. Tables from before sequences need nothing: the ``id`` was there.

The text filter (``q``, ``ILIKE``) is indexed by a ``pg_trgm`` GIN index on the messages, made on open
(``CREATE EXTENSION IF NOT EXISTS pg_trgm``, in ``public`` unless it is in the database already; a table
from before it is indexed then, once). A ``q`` of three characters or more uses it where the planner finds
it cheaper than reading the newest lines. Where the extension cannot be made (no privilege, not
installed), ``q`` stays an unindexed ``ILIKE`` and the log says so once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from logging_service.store.base import (
    DELETE_CHUNK,
    Arrivals,
    LogFilter,
    LogStore,
    from_us,
    like_pattern,
    meta_id,
    to_us,
)
from shared.contract import LogRecord
from shared.errors import Unavailable
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


_DDL = """
CREATE TABLE IF NOT EXISTS logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    service TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    meta JSON NOT NULL,
    job_id TEXT,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts, id);
CREATE INDEX IF NOT EXISTS logs_service ON logs (service, ts, id);
CREATE INDEX IF NOT EXISTS logs_level ON logs (level, ts, id);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, ts, id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id, ts, id) WHERE request_id IS NOT NULL;
"""

_COLUMNS = ["ts", "service", "level", "message", "meta", "job_id", "request_id"]


class PostgresLogStore(LogStore):
    """Log records in one PostgreSQL table; see the module docstring for what a batch and a sweep do."""

    def __init__(self, dsn: str, *, schema: str | None = None, pool_min: int = 1, pool_max: int = 5,
                 acquire_timeout_s: float = 10.0) -> None:
        check_schema(schema)
        self.dsn = dsn
        self.schema = schema
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.acquire_timeout_s = acquire_timeout_s
        self.delete_chunk = DELETE_CHUNK
        self._pool: asyncpg.Pool | None = None
        self._append_lock = f"conveyor.logging.append:{schema or ''}"
        #: Whether ``q`` has the trigram index (see the module's docstring).
        self.text_indexed = False
        self._asyncpg = import_asyncpg("the PostgreSQL log store")
        # What "the database is not reachable right now" looks like; anything else is a bug to surface.
        self._unavailable = unreachable_errors(self._asyncpg)

    @classmethod
    def from_url(cls, url: str) -> PostgresLogStore:
        """A store for ``postgresql://...``; the ``schema`` query parameter is ours, the rest goes to asyncpg."""
        dsn, schema = split_schema(url)
        return cls(dsn, schema=schema)

    async def open(self) -> None:
        try:
            pool = await self._asyncpg.create_pool(self.dsn, min_size=self.pool_min, max_size=self.pool_max,
                                                   server_settings=session_settings(self.schema))
        except self._unavailable as exc:
            raise Unavailable(f"the log database is unreachable: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await create_tables(conn, self.schema, _DDL, "conveyor.logging.schema")
                self.text_indexed = await self._index_text(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _index_text(self, conn: asyncpg.Connection) -> bool:
        """Make the messages' trigram index when missing; False (said in the log) when it cannot be made."""
        try:
            async with conn.transaction():
                # One database-wide lock: an extension is the database's, whatever the schema.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('conveyor.pg_trgm'))")
                where = await conn.fetchval("SELECT extnamespace::regnamespace::text FROM pg_extension"
                                            " WHERE extname = 'pg_trgm'")
                if where is None:
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
                    where = "public"
                await conn.execute(f"CREATE INDEX IF NOT EXISTS logs_message_trgm ON logs"
                                   f" USING gin (message {where}.gin_trgm_ops)")
        except self._asyncpg.PostgresError as exc:
            logger.warning("log text search is not indexed (q reads the lines one by one): pg_trgm: {}", exc)
            return False
        return True

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise Unavailable("log store is closed")
        try:
            async with self._pool.acquire(timeout=self.acquire_timeout_s) as conn:
                yield conn
        except self._unavailable as exc:
            raise Unavailable(f"the log database is unreachable: {exc}") from exc

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def append(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        rows = [
            (from_us(to_us(r.timestamp)), r.service, r.level, r.message, orjson.dumps(r.meta).decode(),
             meta_id(r.meta, "job_id"), meta_id(r.meta, "request_id"))
            for r in records
        ]
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._append_lock)
                await conn.copy_records_to_table("logs", records=rows, columns=_COLUMNS, schema_name=self.schema)
        except self._asyncpg.DataError as exc:  # a value PostgreSQL cannot keep (a NUL in text): none stored
            raise ValueError(f"batch refused by PostgreSQL: {exc}") from exc

    @staticmethod
    def _where(where: LogFilter, params: list[Any]) -> list[str]:
        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        clauses: list[str] = []
        for column, value in (("service", where.service), ("job_id", where.job_id),
                              ("request_id", where.request_id)):
            if value is not None:
                clauses.append(f"{column} = {param(value)}")
        if where.levels is not None:
            clauses.append(f"level = ANY({param(sorted(where.levels))}::text[])")
        if where.since is not None:
            clauses.append(f"ts >= {param(from_us(to_us(where.since)))}")
        if where.until is not None:
            clauses.append(f"ts < {param(from_us(to_us(where.until)))}")
        if where.text is not None:
            clauses.append(f"message ILIKE {param(like_pattern(where.text))} ESCAPE '\\'")
        return clauses

    @staticmethod
    def _record(row: Any) -> LogRecord:
        return LogRecord(timestamp=row["ts"], service=row["service"], level=row["level"], message=row["message"],
                         meta=orjson.loads(row["meta"]))

    async def query(self, where: LogFilter) -> list[LogRecord]:
        if where.levels is not None and not where.levels:
            return []
        params: list[Any] = []
        clauses = self._where(where, params)
        sql = "SELECT ts, service, level, message, meta FROM logs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        params.append(where.limit)
        sql += f" ORDER BY ts DESC, id DESC LIMIT ${len(params)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *params)
        return [self._record(row) for row in rows]

    async def arrivals(self, where: LogFilter, after_seq: int) -> Arrivals:
        params: list[Any] = [after_seq]
        clauses = ["id > $1", *self._where(where, params)]
        params.append(where.limit)
        sql = ("SELECT id, ts, service, level, message, meta FROM logs WHERE " + " AND ".join(clauses)
               + f" ORDER BY id DESC LIMIT ${len(params)}")
        async with self._connection() as conn:
            last = await conn.fetchval("SELECT coalesce(max(id), 0) FROM logs")  # first: see Arrivals
            if where.levels is not None and not where.levels:
                return Arrivals([], last)
            rows = await conn.fetch(sql, *params)
        return Arrivals([(row["id"], self._record(row)) for row in rows], last)

    async def count(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM logs"))

    async def delete_before(self, cutoff: datetime) -> int:
        return await self._delete_chunks("ts < $1", from_us(to_us(cutoff)))

    async def keep_newest(self, rows: int) -> int:
        async with self._connection() as conn:
            # The newest record to delete; it and everything older in query order go.
            first = await conn.fetchrow("SELECT ts, id FROM logs ORDER BY ts DESC, id DESC OFFSET $1 LIMIT 1", rows)
        if first is None:
            return 0
        return await self._delete_chunks("(ts, id) <= ($1, $2)", first["ts"], first["id"])

    async def _delete_chunks(self, condition: str, *params: Any) -> int:
        deleted = 0
        chunk = f"${len(params) + 1}"
        while True:
            async with self._connection() as conn:
                status = await conn.execute(
                    f"DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE {condition} LIMIT {chunk})",
                    *params, self.delete_chunk)
            n = int(status.split()[-1])  # "DELETE n"
            deleted += n
            if n < self.delete_chunk:
                return deleted
