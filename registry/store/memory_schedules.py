"""Periodic schedules in the in-process registry store (:class:`registry.store.memory.MemoryJobStore` mixes this
in). No method awaits between its reads and writes, so each is atomic on one event loop."""

from __future__ import annotations

import uuid
from datetime import datetime

from registry.store.paging import decode_cursor, encode_cursor
from registry.store.schedules import ScheduleStore
from shared.schedules import Schedule, ScheduleList


class MemorySchedules(ScheduleStore):
    """Schedules in a dict, copied in and out as the other backends' rows are."""

    _schedules: dict[uuid.UUID, Schedule]

    async def create_schedule(self, schedule: Schedule) -> bool:
        if schedule.id in self._schedules:
            return False
        self._schedules[schedule.id] = schedule.model_copy(deep=True)
        return True

    async def get_schedule(self, schedule_id: uuid.UUID) -> Schedule | None:
        schedule = self._schedules.get(schedule_id)
        return schedule.model_copy(deep=True) if schedule is not None else None

    async def list_schedules(self, *, owner: str | None = None, limit: int = 100,
                             cursor: str | None = None) -> ScheduleList:
        after = decode_cursor(cursor) if cursor else None
        matching = sorted((s for s in self._schedules.values()
                           if (owner is None or s.owner == owner) and (after is None or (s.created_at, s.id) < after)),
                          key=lambda s: (s.created_at, s.id), reverse=True)
        items = [s.model_copy(deep=True) for s in matching[:limit]]
        more = len(matching) > limit
        return ScheduleList(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def set_schedule_paused(self, schedule_id: uuid.UUID, paused: bool, next_run_at: datetime | None,
                                  now: datetime) -> Schedule | None:
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return None
        changes = {"paused": paused, "updated_at": now}
        if next_run_at is not None:
            changes["next_run_at"] = next_run_at
        self._schedules[schedule_id] = schedule.model_copy(update=changes)
        return self._schedules[schedule_id].model_copy(deep=True)

    async def delete_schedule(self, schedule_id: uuid.UUID) -> bool:
        return self._schedules.pop(schedule_id, None) is not None

    async def due_schedules(self, now: datetime, limit: int = 100) -> list[Schedule]:
        due = sorted((s for s in self._schedules.values() if not s.paused and s.next_run_at <= now),
                     key=lambda s: (s.next_run_at, s.id))
        return [s.model_copy(deep=True) for s in due[:limit]]

    async def advance_schedule(self, schedule_id: uuid.UUID, expected: datetime, due_at: datetime,
                               next_run_at: datetime, now: datetime) -> Schedule | None:
        schedule = self._schedules.get(schedule_id)
        if schedule is None or schedule.paused or schedule.next_run_at != expected:
            return None
        self._schedules[schedule_id] = schedule.model_copy(
            update={"next_run_at": next_run_at, "last_fired_at": due_at, "updated_at": now})
        return self._schedules[schedule_id].model_copy(deep=True)
