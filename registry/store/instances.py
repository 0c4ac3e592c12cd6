"""The part of the registry's store that keeps service instances (:class:`shared.instances.Instance`): one
row per process, by its id, replaced by each heartbeat. Every backend implements it (memory in
:mod:`registry.store.memory`, SQLite in :mod:`registry.store.sqlite_instances`, PostgreSQL in
:mod:`registry.store.postgres_instances`) and passes ``tests/registry/test_instance_store_contract.py``.

The store keeps what instances said and when; whether one is gone is the routes' reading of ``last_seen``
(:mod:`registry.instances`), so the thresholds are settings, not data.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from datetime import datetime

from shared.instances import Instance, InstanceKind


class InstanceStore(ABC):
    """Service instances by id. All datetimes are timezone-aware UTC."""

    @abstractmethod
    async def put_instance(self, instance: Instance) -> None:
        """Insert the instance, or replace every field of the one with its id (a heartbeat)."""

    @abstractmethod
    async def delete_instance(self, instance_id: uuid.UUID) -> bool:
        """Remove an instance (it stopped cleanly); False when unknown."""

    @abstractmethod
    async def list_instances(self, *, kind: InstanceKind | None = None) -> list[Instance]:
        """Every instance (of ``kind``), by kind, then name, then id, in code point order."""

    @abstractmethod
    async def drop_instances(self, seen_before: datetime) -> int:
        """Remove the instances last seen strictly before ``seen_before``; how many went."""
