"""The part of the registry's store that keeps periodic schedules (:class:`shared.schedules.Schedule`). Every
backend implements it (memory in :mod:`registry.store.memory`, SQLite in :mod:`registry.store.sqlite_schedules`,
PostgreSQL in :mod:`registry.store.postgres_schedules`) and passes
``tests/registry/test_schedule_store_contract.py``.

The store keeps schedules and moves them on; when one is due and what it fires is
:func:`shared.schedules.firing`'s business, so the cron arithmetic lives in one place.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from datetime import datetime

from shared.schedules import Schedule, ScheduleList


class ScheduleStore(ABC):
    """Schedules by id. All datetimes are timezone-aware UTC."""

    @abstractmethod
    async def create_schedule(self, schedule: Schedule) -> bool:
        """Keep a new schedule; False (and nothing written) when its id is taken."""

    @abstractmethod
    async def get_schedule(self, schedule_id: uuid.UUID) -> Schedule | None:
        """The schedule, or None when unknown."""

    @abstractmethod
    async def list_schedules(self, *, owner: str | None = None, limit: int = 100,
                             cursor: str | None = None) -> ScheduleList:
        """Schedules (of ``owner``), newest first (``created_at`` then ``id`` descending), at most ``limit``;
        ``next_cursor`` continues after the last, None when there is no more."""

    @abstractmethod
    async def set_schedule_paused(self, schedule_id: uuid.UUID, paused: bool, next_run_at: datetime | None,
                                  now: datetime) -> Schedule | None:
        """Pause or resume a schedule in one write: ``paused`` set, ``next_run_at`` replaced when given,
        ``updated_at`` set to ``now``. The schedule as changed; None when unknown."""

    @abstractmethod
    async def delete_schedule(self, schedule_id: uuid.UUID) -> bool:
        """Remove a schedule; False when unknown."""

    @abstractmethod
    async def due_schedules(self, now: datetime, limit: int = 100) -> list[Schedule]:
        """The schedules not paused whose ``next_run_at`` is at or before ``now``, earliest due first, at
        most ``limit``."""

    @abstractmethod
    async def advance_schedule(self, schedule_id: uuid.UUID, expected: datetime, due_at: datetime,
                               next_run_at: datetime, now: datetime) -> Schedule | None:
        """The compare-and-set that fires a schedule once: when it is not paused and its ``next_run_at`` is
        still ``expected``, set ``next_run_at``, ``last_fired_at = due_at`` and ``updated_at = now`` in one
        atomic write and return it; otherwise (fired by another already, paused, removed) None and nothing
        written. Of several callers with the same ``expected``, exactly one wins."""
