"""A registry database made before users had ids and token epochs opens with the new code: every user gets
an id and epoch 1, and their jobs (owned by the username until then) and those jobs' events move to that
id. Run on both persistent backends, with the old ``users`` table made by hand as the old code made it."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest

from registry.store import JobStore, store_from_url
from shared.contract import JobCreate, JobKind

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
OLD_USERS_SQLITE = """
DROP TABLE users;
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, roles TEXT NOT NULL,
                    permissions TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
INSERT INTO users VALUES ('alice', 'h-a', '["user"]', '[]', '2030-01-01T00:00:00+00:00',
                          '2030-01-01T00:00:00+00:00');
INSERT INTO users VALUES ('bob', 'h-b', '["user","operator"]', '["export"]', '2030-01-01T00:00:00+00:00',
                          '2030-01-01T00:00:00+00:00');
"""
OLD_USERS_POSTGRES = """
DROP TABLE users;
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, roles TEXT[] NOT NULL,
                    permissions TEXT[] NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL);
INSERT INTO users VALUES ('alice', 'h-a', '{user}', '{}', '2030-01-01T00:00:00Z', '2030-01-01T00:00:00Z');
INSERT INTO users VALUES ('bob', 'h-b', '{user,operator}', '{export}', '2030-01-01T00:00:00Z',
                          '2030-01-01T00:00:00Z');
"""


async def _old_database(url: str, make_old_users: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    """Jobs of alice and of the anonymous caller, made with the current tables; then the users table as
    the old code made it. Returns the two jobs' ids."""
    store = store_from_url(url)
    await store.open()
    try:
        alices, _ = await store.create(JobCreate(kind=JobKind.EXPORT, type="epub", owner="alice"), T0)
        anonymous, _ = await store.create(JobCreate(kind=JobKind.EXPORT, type="pdf", owner="anonymous"), T0)
    finally:
        await store.close()
    await make_old_users()
    return str(alices.id), str(anonymous.id)


async def _check_migrated(url: str, alices: str, anonymous: str) -> None:
    store: JobStore = store_from_url(url)
    await store.open()
    try:
        alice, bob = await store.get_user("alice"), await store.get_user("bob")
        assert alice is not None and bob is not None
        assert alice.id != bob.id and (alice.epoch, bob.epoch) == (1, 1)
        assert (bob.roles, bob.permissions, bob.password_hash) == (["user", "operator"], ["export"], "h-b")
        assert (await store.get_user_by_id(alice.id)).username == "alice"
        owner = str(alice.id)
        assert [str(job.id) for job in (await store.list(owner=owner)).items] == [alices]
        assert (await store.get(uuid.UUID(alices))).owner == owner
        assert [event.job["owner"] for event in await store.events(owner=owner)] == [owner]
        assert await store.events(owner="alice") == []
        # A caller who never was a user keeps what they had.
        assert [str(job.id) for job in (await store.list(owner="anonymous")).items] == [anonymous]
        assert await store.set_password("alice", "new", T0)
    finally:
        await store.close()
    # Opening again finds nothing left to migrate: ids and epochs stay as they are.
    again: JobStore = store_from_url(url)
    await again.open()
    try:
        kept = await again.get_user("alice")
        assert kept is not None and (kept.id, kept.epoch) == (alice.id, 2)
        assert [str(job.id) for job in (await again.list(owner=owner)).items] == [alices]
    finally:
        await again.close()


async def test_an_old_sqlite_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    url = f"sqlite:///{path}"

    async def make_old_users() -> None:
        conn = sqlite3.connect(path)
        try:
            conn.executescript(OLD_USERS_SQLITE)
        finally:
            conn.close()

    alices, anonymous = await _old_database(url, make_old_users)
    await _check_migrated(url, alices, anonymous)


async def test_an_old_postgres_database_is_migrated(postgres_url: str) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    dsn = postgres_url.split("?", 1)[0]

    async def make_old_users() -> None:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            await conn.execute(OLD_USERS_POSTGRES)
        finally:
            await conn.close()

    alices, anonymous = await _old_database(postgres_url, make_old_users)
    await _check_migrated(postgres_url, alices, anonymous)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_reopened_database_keeps_ids_and_epochs(backend: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path}/r.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    from tests.registry.test_user_store_contract import user

    alice = user("alice")
    store = store_from_url(url)
    await store.open()
    assert await store.create_user(alice)
    assert await store.set_password("alice", "changed", T0)
    await store.close()
    again = store_from_url(url)
    await again.open()
    try:
        kept = await again.get_user_by_id(alice.id)
        assert kept is not None and (kept.id, kept.epoch) == (alice.id, 2)
    finally:
        await again.close()
