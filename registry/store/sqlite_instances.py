"""Service instances in the SQLite registry store (:class:`registry.store.sqlite.SqliteJobStore` mixes this
in): one row per instance, upserted by each heartbeat, in the same file and connection as the jobs."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import orjson

from registry.store.instances import InstanceStore
from registry.store.paging import utc_iso
from shared.instances import Instance, InstanceKind

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,         -- BINARY collation: code point order
    url TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_s REAL NOT NULL,
    status TEXT NOT NULL,       -- JSON object
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_kind ON instances (kind, name, id);
CREATE INDEX IF NOT EXISTS instances_last_seen ON instances (last_seen);
"""
_COLUMNS = "id, kind, name, url, version, started_at, heartbeat_s, status, last_seen"


def _instance(row: tuple[Any, ...]) -> Instance:
    instance_id, kind, name, url, version, started_at, heartbeat_s, status, last_seen = row
    return Instance(id=uuid.UUID(instance_id), kind=InstanceKind(kind), name=name, url=url, version=version,
                    started_at=datetime.fromisoformat(started_at), heartbeat_s=heartbeat_s,
                    status=orjson.loads(status), last_seen=datetime.fromisoformat(last_seen))


class SqliteInstances(InstanceStore):
    """The instance methods; the store provides ``_db`` (its connection) and ``_write`` (a write
    transaction on it)."""

    _db: sqlite3.Connection
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]

    async def put_instance(self, instance: Instance) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO instances ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, url = excluded.url,"
                " version = excluded.version, started_at = excluded.started_at,"
                " heartbeat_s = excluded.heartbeat_s, status = excluded.status, last_seen = excluded.last_seen",
                (str(instance.id), instance.kind.value, instance.name, instance.url, instance.version,
                 utc_iso(instance.started_at), instance.heartbeat_s, orjson.dumps(instance.status).decode(),
                 utc_iso(instance.last_seen)))

    async def delete_instance(self, instance_id: uuid.UUID) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM instances WHERE id = ?", (str(instance_id),)).rowcount == 1

    async def list_instances(self, *, kind: InstanceKind | None = None) -> list[Instance]:
        where, args = ("WHERE kind = ?", (InstanceKind(kind).value,)) if kind is not None else ("", ())
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM instances {where} ORDER BY kind, name, id",
                                args).fetchall()
        return [_instance(row) for row in rows]

    async def drop_instances(self, seen_before: datetime) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM instances WHERE last_seen < ?", (utc_iso(seen_before),)).rowcount
