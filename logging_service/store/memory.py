"""The log store of tests and throwaway runs: records in a bounded list, gone when the process ends."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

from logging_service.store.base import Arrivals, LogFilter, LogStore, from_us, meta_id, to_us
from shared.contract import LogRecord
from shared.errors import Unavailable


class MemoryLogStore(LogStore):
    """Records in a list bounded to ``capacity``: past it, the oldest arrivals are dropped."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._items: deque[tuple[int, int, LogRecord]] = deque(maxlen=capacity)  # (ts_us, seq, record)
        self._seq = 0
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        if not self._open:
            raise Unavailable("log store is closed")

    async def append(self, records: Sequence[LogRecord]) -> None:
        for record in records:
            us = to_us(record.timestamp)
            self._seq += 1
            self._items.append((us, self._seq, record.model_copy(update={"timestamp": from_us(us)})))

    def _matching(self, where: LogFilter) -> list[tuple[int, int, LogRecord]]:
        since = None if where.since is None else to_us(where.since)
        until = None if where.until is None else to_us(where.until)
        text = None if where.text is None else where.text.lower()
        return [
            (us, seq, record) for us, seq, record in self._items
            if (where.service is None or record.service == where.service)
            and (where.levels is None or record.level in where.levels)
            and (where.job_id is None or meta_id(record.meta, "job_id") == where.job_id)
            and (where.request_id is None or meta_id(record.meta, "request_id") == where.request_id)
            and (since is None or us >= since)
            and (until is None or us < until)
            and (text is None or text in record.message.lower())
        ]

    async def query(self, where: LogFilter) -> list[LogRecord]:
        found = self._matching(where)
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [record for _, _, record in found[: where.limit]]

    async def arrivals(self, where: LogFilter, after_seq: int) -> Arrivals:
        found = [(seq, record) for _, seq, record in reversed(self._matching(where)) if seq > after_seq]
        return Arrivals(found[: where.limit], self._seq)

    async def count(self) -> int:
        return len(self._items)

    async def delete_before(self, cutoff: datetime) -> int:
        limit = to_us(cutoff)
        return self._keep(lambda item: item[0] >= limit)

    async def keep_newest(self, rows: int) -> int:
        if len(self._items) <= rows:
            return 0
        kept = {seq for _, seq, _ in sorted(self._items, key=lambda item: (item[0], item[1]), reverse=True)[:rows]}
        return self._keep(lambda item: item[1] in kept)

    def _keep(self, keep: Callable[[tuple[int, int, LogRecord]], bool]) -> int:
        before = len(self._items)
        self._items = deque((item for item in self._items if keep(item)), maxlen=self._items.maxlen)
        return before - len(self._items)
