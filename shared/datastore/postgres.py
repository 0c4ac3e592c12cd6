"""The data store for many machines: PostgreSQL through an asyncpg pool
(``postgresql://user@host:5432/db``; ``?schema=NAME`` keeps the tables in that schema, created if missing;
the other query parameters go to asyncpg).

The tables are those of SQLite, text compared byte by byte (``COLLATE "C"``), so ids sort, and ISO times
compare, the same on both (and ``lower()`` folds ASCII letters only, as SQLite's does: emails are unique
in any case alike). An upsert is one transaction a batch: the rows whose id is new are COPYed in,
the others upserted with ``ON CONFLICT (id) DO UPDATE`` from one array a column (see :data:`UPSERT_BY`);
while batches hold only new ids (a fresh import) each is COPYed whole without asking which ids are stored.
A row a concurrent writer stores meanwhile fails the batch, which is then done again row by row with
``ON CONFLICT``, so only the rows that truly conflict are refused. A scan is a server-side cursor in a read-only
repeatable-read transaction: the export is one consistent snapshot, fetched a page at a time. A read-only
store's sessions are read-only too (``default_transaction_read_only``), so a receptionist cannot write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shared.datastore import (
    COLUMNS,
    UNIQUE,
    Condition,
    DataStore,
    DataStoreError,
    check_query,
    key_sql,
    lookup_values,
)
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
CREATE TABLE IF NOT EXISTS users (
    id TEXT COLLATE "C" PRIMARY KEY, email TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL, active INTEGER NOT NULL, created_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
-- An email is unique in any case: lower() under COLLATE "C" folds ASCII letters only, as SQLite's does
-- (a store made before this also keeps its email UNIQUE, which this implies).
CREATE UNIQUE INDEX IF NOT EXISTS users_email_any_case ON users (lower(email));
CREATE TABLE IF NOT EXISTS articles (
    id TEXT COLLATE "C" PRIMARY KEY, slug TEXT COLLATE "C" NOT NULL UNIQUE, title TEXT COLLATE "C" NOT NULL,
    body TEXT COLLATE "C" NOT NULL, author_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
    tags TEXT COLLATE "C" NOT NULL, published_at TEXT COLLATE "C", status TEXT COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS comments (
    id TEXT COLLATE "C" PRIMARY KEY, article_id TEXT COLLATE "C" NOT NULL REFERENCES articles(id),
    user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id), body TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);
"""

#: How a batch is upserted: ``"copy"``, a transaction that looks up which ids are stored, upserts those
#: rows (``INSERT … SELECT unnest … ON CONFLICT``) and COPYs the new ones (binary, no conflict handling), or
#: ``"statement"``, one multi-row statement that does both halves (:func:`_split_sql`, one round trip).
#: Measured on batches of 1,000 new users (upserts alone, three rounds each on a loaded 2-core machine):
#: copy 26k, 37k, 45k rows/s against 16k, 24k, 25k for the statement; about even on rows already stored.
#: A plain ``ON CONFLICT`` for every row costs PostgreSQL about twice a plain insert (a speculative
#: insertion each), which is why new rows are told apart first.
UPSERT_BY = "copy"


#: How the store's sessions name themselves to the server (``pg_stat_activity``).
APPLICATION_NAME = "conveyor-datastore"


def _types(table: str) -> list[str]:
    return ["int" if column == "active" else "text" for column in COLUMNS[table]]


def _upsert_tail(table: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[table][1:])
    return f"ON CONFLICT (id) DO UPDATE SET {updates}"


def _split_sql(table: str) -> str:
    """One statement that upserts the batch in ``$1..$n`` (a column an array): the rows whose id is stored
    with ON CONFLICT DO UPDATE, the others with a plain INSERT, which costs PostgreSQL about half as much a
    row (no speculative insertion). Both halves see the snapshot the statement started with; a row a
    concurrent writer stores meanwhile fails the statement on its id, and the batch is then done again row
    by row with ON CONFLICT."""
    columns = COLUMNS[table]
    names = ", ".join(columns)
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_types(table), 1))
    stored = f"EXISTS (SELECT 1 FROM {table} t WHERE t.id = i.id)"
    return (f"WITH i ({names}) AS (SELECT * FROM unnest({arrays})), "
            f"updated AS (INSERT INTO {table} ({names}) SELECT * FROM i WHERE {stored} {_upsert_tail(table)}) "
            f"INSERT INTO {table} ({names}) SELECT * FROM i WHERE NOT {stored}")


def _where(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    clauses = [f"{c.column} {c.operator} ${n}" for n, c in enumerate(conditions, 1)]
    return (" AND ".join(clauses) or "TRUE"), [c.value for c in conditions]


def _arrays(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The rows as one list a column (the parameters of an ``unnest``)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _last_of_each_id(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """One row an id, the last (an INSERT … ON CONFLICT may not touch a row twice; SQLite, applying rows in
    turn, keeps the last too)."""
    last = {row[0]: i for i, row in enumerate(rows)}
    return [rows[i] for i in sorted(last.values())] if len(last) < len(rows) else list(rows)


class PostgresDataStore(DataStore):
    """The PostgreSQL data store. :meth:`open` before use, :meth:`close` after."""

    def __init__(self, dsn: str, *, schema: str | None = None, read_only: bool = False, pool_min: int = 1,
                 pool_max: int = 8) -> None:
        check_schema(schema, DataStoreError)
        self.dsn = dsn
        self.schema = schema
        self.read_only = read_only
        self.pool_min = pool_min
        self.pool_max = pool_max
        self._pool: asyncpg.Pool | None = None
        #: Whether the last batch upserted into each table had only new ids.
        self._all_new: dict[str, bool] = {}
        self._asyncpg = import_asyncpg("the PostgreSQL data store", DataStoreError)
        pg = self._asyncpg
        # A handler or receptionist may start before the data store's database or role exists: unreachable too.
        self._unreachable = (*unreachable_errors(pg), pg.InvalidAuthorizationSpecificationError,
                             pg.InvalidCatalogNameError)
        n = {table: len(columns) for table, columns in COLUMNS.items()}
        self._upsert_sql = {
            table: (f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest("
                    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_types(table), 1))
                    + f") {_upsert_tail(table)}")
            for table, columns in COLUMNS.items()}
        self._split_sql = {table: _split_sql(table) for table in COLUMNS}
        self._row_sql = {
            table: (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ("
                    + ", ".join(f"${i}" for i in range(1, n[table] + 1)) + f") {_upsert_tail(table)}")
            for table, columns in COLUMNS.items()}

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False) -> PostgresDataStore:
        """A store for ``postgresql://...``; the ``schema`` query parameter is ours, the rest goes to asyncpg."""
        dsn, schema = split_schema(url)
        return cls(dsn, schema=schema, read_only=read_only)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = session_settings(self.schema, application_name=APPLICATION_NAME)
        if self.read_only:
            settings["default_transaction_read_only"] = "on"
        try:
            pool = await self._asyncpg.create_pool(self.dsn, min_size=self.pool_min, max_size=self.pool_max,
                                                   server_settings=settings)
        except self._unreachable as exc:
            raise DataStoreError(f"the data store's database cannot be reached: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                if self.read_only:
                    if await conn.fetchval("SELECT to_regclass('comments')") is None:
                        raise DataStoreError("no data store in this database yet (nothing has been imported)")
                else:
                    await create_tables(conn, self.schema, _DDL, "conveyor.datastore.schema")
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the data store is not open")
        return self._pool

    # -- reads -------------------------------------------------------------------------------------------

    async def lookup(self, table: str, column: str, values: Iterable[str]) -> dict[str, str]:
        if column not in UNIQUE.get(table, ()):
            raise ValueError(f"{table}.{column} is not a unique column")
        wanted = lookup_values(table, column, values)
        if not wanted:
            return {}
        key = key_sql(table, column)  # lower(email): its index's expression, so the index is used
        rows = await self._pool_or_fail().fetch(f"SELECT {key}, id FROM {table} WHERE {key} = ANY($1::text[])", wanted)
        return {row[0]: row[1] for row in rows}

    async def count(self, table: str, conditions: Sequence[Condition] = ()) -> int:
        check_query(table, (), conditions)
        where, params = _where(conditions)
        return int(await self._pool_or_fail().fetchval(f"SELECT COUNT(*) FROM {table} WHERE {where}", *params))

    async def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        check_query(table, (), ())
        row = await self._pool_or_fail().fetchrow(
            f"SELECT {', '.join(COLUMNS[table])} FROM {table} WHERE id = $1", record_id)
        return dict(zip(COLUMNS[table], row, strict=True)) if row is not None else None

    async def scan(self, table: str, columns: Sequence[str], conditions: Sequence[Condition] = (), *,
                   page_rows: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        check_query(table, columns, conditions)
        where, params = _where(conditions)
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY id"
        async with self._pool_or_fail().acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                            readonly=True):
            page: list[tuple[Any, ...]] = []
            async for record in conn.cursor(sql, *params, prefetch=page_rows):
                page.append(tuple(record))
                if len(page) >= page_rows:
                    yield page
                    page = []
            if page:
                yield page

    # -- writes ------------------------------------------------------------------------------------------

    async def _upsert_batch(self, conn: asyncpg.Connection, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if UPSERT_BY == "statement":
            await conn.execute(self._split_sql[table], *_arrays(rows))
            return
        # "copy", in the caller's transaction.
        stored = {record[0] for record in await conn.fetch(
            f"SELECT id FROM {table} WHERE id = ANY($1::text[])", [row[0] for row in rows])}
        self._all_new[table] = not stored
        old = [row for row in rows if row[0] in stored]
        new = [row for row in rows if row[0] not in stored]
        if old:
            await conn.execute(self._upsert_sql[table], *_arrays(old))
        if new:
            await conn.copy_records_to_table(table, records=new, columns=COLUMNS[table])

    async def upsert(self, table: str, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        check_query(table, (), ())
        if self.read_only:
            raise DataStoreError("the data store is open read-only")
        if not rows:
            return []
        pg = self._asyncpg
        batch = _last_of_each_id(rows)
        async with self._pool_or_fail().acquire() as conn:
            try:
                if UPSERT_BY == "statement":  # a transaction of its own, one round trip
                    await self._upsert_batch(conn, table, batch)
                    return []
                if self._all_new.get(table, True):
                    # The batch before had only new ids (a fresh import): COPY this one whole, one atomic
                    # statement, without asking which ids are stored; a stored one fails it, and it is done
                    # the careful way.
                    try:
                        await conn.copy_records_to_table(table, records=batch, columns=COLUMNS[table])
                        return []
                    except pg.UniqueViolationError:
                        self._all_new[table] = False
                async with conn.transaction():
                    await self._upsert_batch(conn, table, batch)
                return []
            except pg.IntegrityConstraintViolationError:
                pass
            refused: list[tuple[int, str]] = []
            async with conn.transaction():
                for index, row in enumerate(rows):
                    try:
                        async with conn.transaction():  # a savepoint: only this row is lost
                            await conn.execute(self._row_sql[table], *row)
                    except pg.IntegrityConstraintViolationError as exc:
                        refused.append((index, f"conflicts with a stored record: {exc}"))
            return refused
