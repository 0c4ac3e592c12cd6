"""The bulk data store's contract, run on every backend: SQLite (a file) and PostgreSQL (a schema of its own)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.datastore import COLUMNS, Condition, DataStore, DataStoreError, fold
from shared.postgres import split_schema


def user(n: int, **changes: Any) -> tuple[Any, ...]:
    """A users row, created on January n + 1."""
    row = {"id": f"u{n}", "email": f"user{n}@example.com", "name": f"User {n}", "role": "reader", "active": 1,
           "created_at": f"2024-01-{n % 28 + 1:02d}T00:00:00+00:00",
           "updated_at": "2024-01-01T00:00:00+00:00"} | changes
    return tuple(row[c] for c in COLUMNS["users"])


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[DataStore]:
    opened = DataStore.from_url(store_url)
    await opened.open()
    yield opened
    await opened.close()


async def rows(store: DataStore, table: str, columns: tuple[str, ...], conditions: list[Condition] | None = None,
               page_rows: int = 5000) -> list[list[tuple[Any, ...]]]:
    async with contextlib.aclosing(store.scan(table, columns, conditions or [], page_rows=page_rows)) as pages:
        return [page async for page in pages]


async def test_upserts_go_by_id_and_a_later_row_of_one_id_wins(store: DataStore) -> None:
    assert await store.upsert("users", [user(1), user(2), user(1, name="Ada")]) == []
    assert await store.count("users") == 2
    assert await store.get("users", "u1") == dict(zip(COLUMNS["users"], user(1, name="Ada"), strict=True))
    assert await store.upsert("users", [user(2, active=0, email="two@example.com"), user(3)]) == []
    assert (await store.get("users", "u2"))["active"] == 0  # type: ignore[index]
    assert await store.count("users") == 3 and await store.get("users", "u9") is None
    assert await store.upsert("users", []) == []


async def test_lookups_by_id_and_by_unique_column(store: DataStore) -> None:
    await store.upsert("users", [user(1), user(2)])
    assert await store.existing("users", ["u1", "u3", "u1"]) == {"u1"}
    assert await store.lookup("users", "email", ["user2@example.com", "nobody@example.com"]) == {
        "user2@example.com": "u2"}
    assert await store.lookup("users", "email", []) == {}
    with pytest.raises(ValueError, match="not a unique column"):
        await store.lookup("users", "name", ["User 1"])


async def test_emails_are_kept_as_sent_and_unique_in_any_case(store: DataStore) -> None:
    """An email is stored as sent; one that differs from another id's only in case is the same email (a
    conflict), and a lookup finds it in any case, answering it in lower case."""
    assert await store.upsert("users", [user(1, email="Ada.L@Example.com"), user(2)]) == []
    assert (await store.get("users", "u1"))["email"] == "Ada.L@Example.com"  # type: ignore[index]
    assert await store.lookup("users", "email", ["ada.l@example.com", "USER2@EXAMPLE.COM"]) == {
        "ada.l@example.com": "u1", "user2@example.com": "u2"}
    refused = await store.upsert("users", [user(3, email="ada.l@example.COM"), user(4)])
    assert [index for index, _ in refused] == [0] and refused[0][1].startswith("conflicts with a stored record: ")
    assert await store.upsert("users", [user(1, email="ada.l@example.com")]) == []  # its own, in another case
    assert (await store.get("users", "u1"))["email"] == "ada.l@example.com"  # type: ignore[index]
    assert sorted(await store.existing("users", ["u1", "u2", "u3", "u4"])) == ["u1", "u2", "u4"]


#: The users table as stores made before emails were unique in any case have it: emails UNIQUE as bytes.
_OLD_USERS = ("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL, "
              "role TEXT NOT NULL, active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)")


async def _make_old_users_table(store_url: str) -> None:
    if store_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
            db.execute(_OLD_USERS)
        return
    import asyncpg

    dsn, schema = split_schema(store_url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(_OLD_USERS.replace("CREATE TABLE users", f'CREATE TABLE "{schema}".users'))
    finally:
        await conn.close()


async def test_a_store_made_before_gets_emails_unique_in_any_case(store_url: str) -> None:
    await _make_old_users_table(store_url)
    async with DataStore.from_url(store_url) as store:
        assert await store.upsert("users", [user(1, email="Ada@Example.com")]) == []
        assert await store.lookup("users", "email", ["ADA@example.com"]) == {"ada@example.com": "u1"}
        refused = await store.upsert("users", [user(2, email="ada@example.com")])
        assert [index for index, _ in refused] == [0] and await store.count("users") == 1


async def test_a_conflict_refuses_only_the_rows_that_break_it(store: DataStore) -> None:
    await store.upsert("users", [user(1)])
    # The same email on another id (a concurrent import got there first), and comments whose article is
    # missing: refused one by one, the rest written in the same call.
    refused = await store.upsert("users", [user(2), user(3, email="user1@example.com"), user(4)])
    assert [index for index, _ in refused] == [1]
    assert refused[0][1].startswith("conflicts with a stored record: ")
    assert sorted(await store.existing("users", ["u1", "u2", "u3", "u4"])) == ["u1", "u2", "u4"]
    await store.upsert("articles", [("a1", "first", "First", "", "u1", "[]", None, "draft")])
    refused = await store.upsert("comments", [("c1", "a1", "u2", "ok", "2024-01-01T00:00:00+00:00"),
                                              ("c2", "a404", "u2", "no article", "2024-01-01T00:00:00+00:00")])
    assert [index for index, _ in refused] == [1] and await store.count("comments") == 1


async def test_scans_go_by_id_a_page_at_a_time_with_conditions(store: DataStore) -> None:
    # Ids that sort differently by bytes and by a language's rules: the order is the bytes' on both.
    ids = ["b", "B", "a-2", "a10", "a2", "Z", "é", "_x"]
    await store.upsert("users", [user(n, id=i, email=f"{i}.{n}@example.com", active=n % 2)
                                 for n, i in enumerate(ids)])
    pages = await rows(store, "users", ("id",), page_rows=3)
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [row[0] for page in pages for row in page] == sorted(ids, key=lambda i: i.encode())
    active = await rows(store, "users", ("email", "active"), [Condition("active", "=", 1)])
    assert active == [[("B.1@example.com", 1), ("Z.5@example.com", 1), ("_x.7@example.com", 1),
                       ("a10.3@example.com", 1)]]
    assert await store.count("users", [Condition("active", "=", 0)]) == 4


async def test_time_bounds_compare_iso_text(store: DataStore) -> None:
    await store.upsert("users", [user(n) for n in range(1, 6)])  # created on Jan 2..6
    between = [Condition("created_at", ">=", "2024-01-03T00:00:00+00:00"),
               Condition("created_at", "<=", "2024-01-05T00:00:00+00:00")]
    assert [r[0] for page in await rows(store, "users", ("id",), between) for r in page] == ["u2", "u3", "u4"]
    assert await store.count("users", between) == 3


async def test_stopping_a_scan_early_lets_go_of_it(store: DataStore) -> None:
    await store.upsert("users", [user(n) for n in range(10)])
    for _ in range(12):  # more than the PostgreSQL pool holds: each abandoned scan must give its connection back
        async with contextlib.aclosing(store.scan("users", ("id",), page_rows=2)) as pages:
            async for page in pages:
                assert len(page) == 2
                break
    assert await store.upsert("users", [user(1, name="after")]) == []


async def test_names_that_are_not_columns_or_tables_are_refused(store: DataStore) -> None:
    with pytest.raises(ValueError, match="no column"):
        await rows(store, "users", ("id", "password"))
    with pytest.raises(ValueError, match="no column"):
        await store.count("users", [Condition("1=1; --", "=", 1)])
    with pytest.raises(ValueError, match="operator"):
        await store.count("users", [Condition("role", "LIKE", "%")])
    with pytest.raises(ValueError, match="no table"):
        await store.count("sqlite_master")


async def test_a_read_only_store_reads_and_never_writes(store: DataStore, store_url: str) -> None:
    await store.upsert("users", [user(1)])
    reader = DataStore.from_url(store_url, read_only=True)
    await reader.open()
    try:
        assert await reader.count("users") == 1 and (await reader.get("users", "u1"))["name"] == "User 1"  # type: ignore[index]
        with pytest.raises(DataStoreError, match="read-only"):
            await reader.upsert("users", [user(2)])
    finally:
        await reader.close()


async def test_reading_a_store_that_is_not_there_yet_fails_and_creates_nothing(store_url: str) -> None:
    reader = DataStore.from_url(store_url, read_only=True)
    with pytest.raises(DataStoreError):
        await reader.open()
    await reader.close()
    writer = DataStore.from_url(store_url)
    await writer.open()  # the tables are made by a writer, and only then can a reader open them
    await writer.close()
    async with DataStore.from_url(store_url, read_only=True) as reader:
        assert await reader.count("comments") == 0


def test_urls_name_the_backend() -> None:
    with pytest.raises(DataStoreError, match="unsupported data store URL"):
        DataStore.from_url("mysql://x/y")
    with pytest.raises(DataStoreError, match="invalid schema name"):
        DataStore.from_url("postgresql://h/db?schema=a;drop")


def test_fold_is_what_lower_makes_in_sqlite() -> None:
    """An email is unique in any case by ``lower(email)`` in the store; the import folds the same way to
    match rows against it: ASCII letters only (SQLite's ``lower()`` without ICU, PostgreSQL's under
    ``COLLATE "C"``), whether the text is ASCII (Python's ``lower()``, the fast way) or not."""
    db = sqlite3.connect(":memory:")
    for text in ("Ada.Lovelace@Example.COM", "a@b.c", "ÉA@Straße.DE", "İI@x", "ǅ@X", "KELVIN\u212a@X"):
        (lowered,) = db.execute("SELECT lower(?)", (text,)).fetchone()
        assert fold(text) == lowered, text
