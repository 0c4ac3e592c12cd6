"""Periodic schedules in the SQLite registry store (:class:`registry.store.sqlite.SqliteJobStore` mixes this
in): one row per schedule, the whole schedule as JSON beside the columns its queries use. Firing one is a
single ``UPDATE ... WHERE next_run_at = <expected>``: SQLite writes one transaction at a time, across the
processes sharing the file too, so of two firers with the same expected time one changes the row."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from registry.store.paging import decode_cursor, encode_cursor, utc_iso
from registry.store.schedules import ScheduleStore
from shared.schedules import Schedule, ScheduleList

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    paused INTEGER NOT NULL,
    next_run_at TEXT NOT NULL,  -- utc_iso: text order is time order
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_owner ON schedules (owner, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS schedules_created ON schedules (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at) WHERE paused = 0;
"""


def _schedule(row: tuple[Any, ...]) -> Schedule:
    return Schedule.model_validate_json(row[0])


class SqliteSchedules(ScheduleStore):
    """The schedule methods; the store provides ``_db`` (its connection) and ``_write`` (a write
    transaction on it)."""

    _db: sqlite3.Connection
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]

    @staticmethod
    def _put(db: sqlite3.Connection, schedule: Schedule) -> None:
        db.execute("UPDATE schedules SET paused = ?, next_run_at = ?, doc = ? WHERE id = ?",
                   (int(schedule.paused), utc_iso(schedule.next_run_at), schedule.model_dump_json(), str(schedule.id)))

    async def create_schedule(self, schedule: Schedule) -> bool:
        with self._write() as db:
            return db.execute(
                "INSERT INTO schedules (id, owner, paused, next_run_at, created_at, doc) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (str(schedule.id), schedule.owner, int(schedule.paused), utc_iso(schedule.next_run_at),
                 utc_iso(schedule.created_at), schedule.model_dump_json())).rowcount == 1

    async def get_schedule(self, schedule_id: uuid.UUID) -> Schedule | None:
        row = self._db.execute("SELECT doc FROM schedules WHERE id = ?", (str(schedule_id),)).fetchone()
        return _schedule(row) if row is not None else None

    async def list_schedules(self, *, owner: str | None = None, limit: int = 100,
                             cursor: str | None = None) -> ScheduleList:
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if cursor:
            created_at, last_id = decode_cursor(cursor)
            where.append("(created_at, id) < (?, ?)")
            args.extend((utc_iso(created_at), str(last_id)))
        sql = "SELECT doc FROM schedules" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        items = [_schedule(row) for row in rows[:limit]]
        more = len(rows) > limit
        return ScheduleList(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def set_schedule_paused(self, schedule_id: uuid.UUID, paused: bool, next_run_at: datetime | None,
                                  now: datetime) -> Schedule | None:
        with self._write() as db:
            row = db.execute("SELECT doc FROM schedules WHERE id = ?", (str(schedule_id),)).fetchone()
            if row is None:
                return None
            changes: dict[str, Any] = {"paused": paused, "updated_at": now}
            if next_run_at is not None:
                changes["next_run_at"] = next_run_at
            schedule = _schedule(row).model_copy(update=changes)
            self._put(db, schedule)
        return schedule

    async def delete_schedule(self, schedule_id: uuid.UUID) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM schedules WHERE id = ?", (str(schedule_id),)).rowcount == 1

    async def due_schedules(self, now: datetime, limit: int = 100) -> list[Schedule]:
        rows = self._db.execute("SELECT doc FROM schedules WHERE paused = 0 AND next_run_at <= ?"
                                " ORDER BY next_run_at, id LIMIT ?", (utc_iso(now), limit)).fetchall()
        return [_schedule(row) for row in rows]

    async def advance_schedule(self, schedule_id: uuid.UUID, expected: datetime, due_at: datetime,
                               next_run_at: datetime, now: datetime) -> Schedule | None:
        with self._write() as db:
            row = db.execute("SELECT doc FROM schedules WHERE id = ? AND paused = 0 AND next_run_at = ?",
                             (str(schedule_id), utc_iso(expected))).fetchone()
            if row is None:
                return None
            schedule = _schedule(row).model_copy(
                update={"next_run_at": next_run_at, "last_fired_at": due_at, "updated_at": now})
            self._put(db, schedule)
        return schedule
