"""What every log store is: :class:`LogStore`, the :class:`LogFilter` of a query, and the timestamp and
meta helpers the backends share.

A store keeps :class:`shared.contract.LogRecord` lines and answers filtered queries newest first
(timestamp, then arrival, descending). Timestamps come back in UTC, microsecond precision; a naive one
is taken as UTC. ``meta.job_id`` and ``meta.request_id`` are filterable: the database stores keep them in
indexed columns of their own. Retention is two calls a sweep makes: :meth:`LogStore.delete_before` (by
age) and :meth:`LogStore.keep_newest` (by rows).

Each stored line also gets a sequence number as it arrives: 1, 2, 3..., in the order the lines became
readable, never given twice (not even after retention deleted the newest). :meth:`LogStore.arrivals` reads
the lines after a sequence number, so a follower resumes exactly where it was, whatever the lines' times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.contract import LogRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)

#: Rows one retention statement deletes at most, so a large sweep never holds a lock (or the event loop)
#: for long; a store's ``delete_chunk`` starts at this.
DELETE_CHUNK = 10_000


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the epoch."""
    return _EPOCH + us * _US


def meta_id(meta: dict[str, Any], key: str) -> str | None:
    """``meta[key]`` as the string a filter compares with (a job id may be logged as a UUID or an int)."""
    value = meta.get(key)
    return None if value is None else str(value)


NUL = "must not contain a NUL character"
OUT_OF_CALENDAR = "must fall between 0001-01-01 and 9999-12-31 once in UTC"


def in_calendar(ts: datetime) -> bool:
    """Whether ``ts`` in UTC is still a :class:`datetime` (``9999-12-31T23:00-05:00`` is not)."""
    try:
        from_us(to_us(ts))
    except OverflowError:
        return False
    return True


def like_pattern(text: str) -> str:
    """``%text%`` for ``LIKE ... ESCAPE '\\'``, with ``\\``, ``%`` and ``_`` in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def faults(record: LogRecord) -> list[tuple[str, str]]:
    """``(field, reason)`` for each value of ``record`` that no store can keep as it is: a timestamp outside
    the calendar once in UTC, and a NUL character where a database column would hold it (service, level,
    message, ``meta.job_id``, ``meta.request_id``; PostgreSQL text cannot). Other meta values are stored
    as JSON text, where a NUL is escaped, so they may hold one."""
    found = [] if in_calendar(record.timestamp) else [("timestamp", OUT_OF_CALENDAR)]
    values = {"service": record.service, "level": record.level, "message": record.message,
              "meta.job_id": meta_id(record.meta, "job_id"), "meta.request_id": meta_id(record.meta, "request_id")}
    found += [(field, NUL) for field, value in values.items() if value is not None and "\x00" in value]
    return found


@dataclass(frozen=True)
class Arrivals:
    """What :meth:`LogStore.arrivals` answers: ``(seq, record)`` pairs, newest arrival first, and the greatest
    sequence number given so far (0: none yet), read before the records: every line up to it is readable."""

    records: list[tuple[int, LogRecord]]
    last_seq: int


@dataclass(frozen=True)
class LogFilter:
    """What a query asks for; every field given must match. ``since`` is inclusive, ``until`` exclusive."""

    service: str | None = None
    levels: frozenset[str] | None = None  # any of these; None: any level
    job_id: str | None = None
    request_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # a substring of the message, in any case
    limit: int = 100


class LogStore(ABC):
    """The logging service's storage; every backend passes ``tests/logging_service/test_log_store.py``."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing. Called once before any other method."""

    @abstractmethod
    async def close(self) -> None:
        """Release what :meth:`open` acquired. Safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """A real round trip to the backend; raises :class:`shared.errors.Unavailable` if it is not usable."""

    @abstractmethod
    async def append(self, records: Sequence[LogRecord]) -> None:
        """Store a batch, all or nothing."""

    @abstractmethod
    async def query(self, where: LogFilter) -> list[LogRecord]:
        """Records matching ``where``, newest first, at most ``where.limit``."""

    @abstractmethod
    async def arrivals(self, where: LogFilter, after_seq: int) -> Arrivals:
        """Records matching ``where`` whose sequence number is above ``after_seq``, newest arrival first, at
        most ``where.limit``; see :class:`Arrivals`."""

    @abstractmethod
    async def count(self) -> int:
        """Records stored."""

    @abstractmethod
    async def delete_before(self, cutoff: datetime) -> int:
        """Delete records whose timestamp is before ``cutoff``; returns how many."""

    @abstractmethod
    async def keep_newest(self, rows: int) -> int:
        """Delete all but the ``rows`` newest records (in query order: timestamp, then arrival); returns how
        many were deleted."""
