"""Periodic schedules in the PostgreSQL registry store (:class:`registry.store.postgres.PostgresJobStore` mixes
this in): one row per schedule, the whole schedule as JSONB beside the columns its queries use. Several
registries share the table; firing a schedule is one ``UPDATE ... WHERE next_run_at = <expected>``, which
PostgreSQL applies to the row once: a second such update waits for the first's row lock, then finds the
row changed and matches nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from registry.store.paging import decode_cursor, encode_cursor
from registry.store.schedules import ScheduleStore
from shared.schedules import Schedule, ScheduleList

if TYPE_CHECKING:
    import asyncpg

DDL = """
CREATE TABLE IF NOT EXISTS schedules (
    id UUID PRIMARY KEY,
    owner TEXT NOT NULL,
    paused BOOLEAN NOT NULL,
    next_run_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    doc JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_owner ON schedules (owner, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS schedules_created ON schedules (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at) WHERE NOT paused;
"""
#: A write: the changes ($2, a JSON object) merged into the document, and the columns kept beside it set
#: from them (``doc`` on the right is the row as it was).
_SET = ("SET paused = ((doc || $2::jsonb)->>'paused')::boolean,"
        " next_run_at = ((doc || $2::jsonb)->>'next_run_at')::timestamptz, doc = doc || $2::jsonb")


def _schedule(row: asyncpg.Record) -> Schedule:
    return Schedule.model_validate_json(row[0])


def _doc(changes: dict[str, Any]) -> str:
    return orjson.dumps({key: value.isoformat() if isinstance(value, datetime) else value
                         for key, value in changes.items()}).decode()


class PostgresSchedules(ScheduleStore):
    """The schedule methods; the store provides ``_connection()`` (a pooled connection)."""

    _connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]

    async def create_schedule(self, schedule: Schedule) -> bool:
        async with self._connection() as conn:
            return await conn.fetchval(
                "INSERT INTO schedules (id, owner, paused, next_run_at, created_at, doc)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING RETURNING true",
                schedule.id, schedule.owner, schedule.paused, schedule.next_run_at, schedule.created_at,
                schedule.model_dump_json()) is not None

    async def get_schedule(self, schedule_id: uuid.UUID) -> Schedule | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT doc::text FROM schedules WHERE id = $1", schedule_id)
        return _schedule(row) if row is not None else None

    async def list_schedules(self, *, owner: str | None = None, limit: int = 100,
                             cursor: str | None = None) -> ScheduleList:
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            args.append(owner)
            where.append(f"owner = ${len(args)}")
        if cursor:
            created_at, last_id = decode_cursor(cursor)
            args.extend((created_at, last_id))
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        sql = ("SELECT doc::text FROM schedules" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}")
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        items = [_schedule(row) for row in rows[:limit]]
        more = len(rows) > limit
        return ScheduleList(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def set_schedule_paused(self, schedule_id: uuid.UUID, paused: bool, next_run_at: datetime | None,
                                  now: datetime) -> Schedule | None:
        changes: dict[str, Any] = {"paused": paused, "updated_at": now}
        if next_run_at is not None:
            changes["next_run_at"] = next_run_at
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE schedules {_SET}"
                " WHERE id = $1 RETURNING doc::text", schedule_id, _doc(changes))
        return _schedule(row) if row is not None else None

    async def delete_schedule(self, schedule_id: uuid.UUID) -> bool:
        async with self._connection() as conn:
            return await conn.fetchval("DELETE FROM schedules WHERE id = $1 RETURNING true", schedule_id) is not None

    async def due_schedules(self, now: datetime, limit: int = 100) -> list[Schedule]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT doc::text FROM schedules WHERE NOT paused AND next_run_at <= $1"
                                    " ORDER BY next_run_at, id LIMIT $2", now, limit)
        return [_schedule(row) for row in rows]

    async def advance_schedule(self, schedule_id: uuid.UUID, expected: datetime, due_at: datetime,
                               next_run_at: datetime, now: datetime) -> Schedule | None:
        changes = _doc({"next_run_at": next_run_at, "last_fired_at": due_at, "updated_at": now})
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE schedules {_SET}"
                " WHERE id = $1 AND NOT paused AND next_run_at = $3 RETURNING doc::text",
                schedule_id, changes, expected)
        return _schedule(row) if row is not None else None
