"""Service instances in the PostgreSQL registry store (:class:`registry.store.postgres.PostgresJobStore` mixes
this in): one row per instance, upserted by each heartbeat. Several registries on one database share the
table, so every registry lists every instance, whichever registry it heartbeats to."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING

import orjson

from registry.store.instances import InstanceStore
from shared.instances import Instance, InstanceKind

if TYPE_CHECKING:
    import asyncpg

DDL = """
CREATE TABLE IF NOT EXISTS instances (
    id UUID PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_s DOUBLE PRECISION NOT NULL,
    status JSONB NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_kind ON instances (kind COLLATE "C", name COLLATE "C", id);
CREATE INDEX IF NOT EXISTS instances_last_seen ON instances (last_seen);
"""
_COLUMNS = "id, kind, name, url, version, started_at, heartbeat_s, status::text, last_seen"
# COLLATE "C": code point order, as the other backends; the database's default collation (en_US and the
# like) would interleave upper and lower case.
_ORDER = 'ORDER BY kind COLLATE "C", name COLLATE "C", id'


def _instance(row: asyncpg.Record) -> Instance:
    instance_id, kind, name, url, version, started_at, heartbeat_s, status, last_seen = row
    return Instance(id=uuid.UUID(bytes=instance_id.bytes), kind=InstanceKind(kind), name=name, url=url,
                    version=version, started_at=started_at, heartbeat_s=heartbeat_s, status=orjson.loads(status),
                    last_seen=last_seen)


class PostgresInstances(InstanceStore):
    """The instance methods; the store provides ``_connection()`` (a pooled connection)."""

    _connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]

    async def put_instance(self, instance: Instance) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO instances (id, kind, name, url, version, started_at, heartbeat_s, status, last_seen)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)"
                " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, url = excluded.url,"
                " version = excluded.version, started_at = excluded.started_at,"
                " heartbeat_s = excluded.heartbeat_s, status = excluded.status, last_seen = excluded.last_seen",
                instance.id, instance.kind.value, instance.name, instance.url, instance.version,
                instance.started_at, instance.heartbeat_s, orjson.dumps(instance.status).decode(),
                instance.last_seen)

    async def delete_instance(self, instance_id: uuid.UUID) -> bool:
        async with self._connection() as conn:
            return await conn.fetchval("DELETE FROM instances WHERE id = $1 RETURNING id", instance_id) is not None

    async def list_instances(self, *, kind: InstanceKind | None = None) -> list[Instance]:
        async with self._connection() as conn:
            if kind is None:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM instances {_ORDER}")
            else:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM instances WHERE kind = $1 {_ORDER}",
                                        InstanceKind(kind).value)
        return [_instance(row) for row in rows]

    async def drop_instances(self, seen_before: datetime) -> int:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM instances WHERE last_seen < $1", seen_before)
        return int(status.rsplit(" ", 1)[1])
