"""The bulk data store: users, articles and comments, written by the data import kind and read by the data
export kind (handlers) and the streamed ``GET /v1/exports`` (receptionists, read-only).

Chosen by URL like the other stores: ``sqlite:///var/data.db`` (the embedded default, :mod:`.sqlite`) or
``postgresql://user@host:5432/db?schema=NAME`` (many machines, :mod:`.postgres`). Both backends keep the
same tables (every column text but ``active``, an integer 0 or 1; text compared byte by byte, but an
email is unique in any case: :data:`ANY_CASE`), take the same rows and answer the same, which
``tests/shared/test_datastore_contract.py`` checks on each.

The interface is asynchronous: the PostgreSQL backend talks asyncpg on the event loop, the SQLite one runs
its work in a worker thread. :meth:`DataStore.from_url` does no I/O; :meth:`DataStore.open` connects (and,
unless read-only, creates the tables), :meth:`DataStore.close` lets go. Every write is an upsert by ``id``:
importing a file twice leaves the store as importing it once.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NamedTuple

#: Columns of each table, ``id`` first: the order of the rows :meth:`DataStore.upsert` takes.
COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "name", "role", "active", "created_at", "updated_at"),
    "articles": ("id", "slug", "title", "body", "author_id", "tags", "published_at", "status"),
    "comments": ("id", "article_id", "user_id", "body", "created_at"),
}

#: The unique columns a :meth:`DataStore.lookup` may go by, besides ``id``.
UNIQUE: dict[str, tuple[str, ...]] = {"users": ("id", "email"), "articles": ("id", "slug"), "comments": ("id",)}

#: Unique columns whose values are one in any case (an email: ``Ada@Example.com`` is ``ada@example.com``).
#: They are stored as sent; each backend holds them unique by ``lower(column)``, which under byte-wise
#: comparison folds ASCII letters only, as :func:`fold` does (an email is ASCII).
ANY_CASE: dict[str, tuple[str, ...]] = {"users": ("email",)}

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(value: str) -> str:
    """``value`` as ``lower()`` makes it in SQLite and in PostgreSQL under ``COLLATE "C"``: ASCII letters in
    lower case, nothing else changed. On ASCII text that is Python's own ``lower()``, which costs a tenth of
    a translation (it runs twice a record of an import)."""
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


def key_sql(table: str, column: str) -> str:
    """What a unique column is compared by in SQL: ``lower(email)`` for an :data:`ANY_CASE` column."""
    return f"lower({column})" if column in ANY_CASE.get(table, ()) else column


def lookup_values(table: str, column: str, values: Iterable[str]) -> list[str]:
    """The distinct values a lookup asks for, folded for an :data:`ANY_CASE` column."""
    if column in ANY_CASE.get(table, ()):
        values = map(fold, values)
    return list(dict.fromkeys(values))

#: Comparisons a :class:`Condition` may make.
OPERATORS = frozenset({"=", ">=", "<="})


class DataStoreError(Exception):
    """The data store cannot be used: a bad URL, a server that cannot be reached, or (read-only) no store
    there yet."""


class Condition(NamedTuple):
    """``column operator value``: one filter of a count or a scan (all of them must hold)."""

    column: str
    operator: str
    value: Any


def check_query(table: str, columns: Iterable[str], conditions: Iterable[Condition]) -> None:
    """A :class:`ValueError` for a table, column or operator the store does not know: names reach SQL."""
    known = COLUMNS.get(table)
    if known is None:
        raise ValueError(f"no table {table!r}")
    unknown = sorted({*columns, *(c.column for c in conditions)} - set(known))
    if unknown:
        raise ValueError(f"{table} has no column {', '.join(unknown)}")
    bad = sorted({c.operator for c in conditions} - OPERATORS)
    if bad:
        raise ValueError(f"unsupported operator {', '.join(bad)}")


class DataStore(ABC):
    """What the data kinds and the streamed export use; one backend a module."""

    read_only: bool

    @staticmethod
    def from_url(url: str, *, read_only: bool = False) -> DataStore:
        """The store a URL names, not yet open: ``sqlite:///relative/path.db``, ``sqlite:////absolute.db``
        or ``postgresql://…`` (``?schema=NAME`` keeps its tables in that schema). ``read_only`` never
        creates, migrates or writes; opening it is a :class:`DataStoreError` when there is no store yet."""
        if url.startswith("sqlite:///"):
            from shared.datastore.sqlite import SqliteDataStore

            return SqliteDataStore(url.removeprefix("sqlite:///"), read_only=read_only)
        if url.startswith(("postgresql://", "postgres://")):
            from shared.datastore.postgres import PostgresDataStore

            return PostgresDataStore.from_url(url, read_only=read_only)
        raise DataStoreError(f"unsupported data store URL {url!r} (expected sqlite:///path or postgresql://…)")

    @abstractmethod
    async def open(self) -> None:
        """Connect; create the tables unless read-only. A :class:`DataStoreError` when it cannot."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of the connections; safe twice."""

    async def __aenter__(self) -> DataStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def existing(self, table: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the table holds."""
        return set(await self.lookup(table, "id", ids))

    @abstractmethod
    async def lookup(self, table: str, column: str, values: Iterable[str]) -> dict[str, str]:
        """``{value: id}`` of the rows whose ``column`` (one of :data:`UNIQUE`) is one of ``values``; for an
        :data:`ANY_CASE` column, in any case, the values (the answer's keys) :func:`fold`-ed."""

    @abstractmethod
    async def upsert(self, table: str, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        """Insert or replace ``rows`` (in :data:`COLUMNS` order) by id, in one transaction; a later row of
        the same id wins. Returns the rows the store refused, as ``(index in rows, reason)``: none, unless a
        constraint the caller did not foresee fails (a concurrent import took an email), in which case the
        rows go one by one so only the bad ones are lost."""

    @abstractmethod
    async def count(self, table: str, conditions: Sequence[Condition] = ()) -> int:
        """Rows matching every condition."""

    @abstractmethod
    async def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        """One row as a dict (for tests and support), or None."""

    @abstractmethod
    def scan(self, table: str, columns: Sequence[str], conditions: Sequence[Condition] = (), *,
             page_rows: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The matching rows' ``columns`` by id, ``page_rows`` at a time, read as they are consumed (close
        the iterator, e.g. with :func:`contextlib.aclosing`, to stop early)."""


__all__ = ["ANY_CASE", "COLUMNS", "OPERATORS", "UNIQUE", "Condition", "DataStore", "DataStoreError", "check_query",
           "fold", "key_sql", "lookup_values"]
