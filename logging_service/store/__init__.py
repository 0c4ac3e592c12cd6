"""Log stores, chosen by URL in :func:`store_from_url`: ``sqlite:///path/logs.db`` (the default),
``postgresql://...`` (for many machines) and ``memory://`` (a bounded list, for tests). All pass
``tests/logging_service/test_log_store.py``; :mod:`logging_service.store.base` says what a store is.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from logging_service.store.base import (
    NUL,
    OUT_OF_CALENDAR,
    Arrivals,
    LogFilter,
    LogStore,
    faults,
    from_us,
    in_calendar,
    meta_id,
    to_us,
)
from logging_service.store.memory import MemoryLogStore

__all__ = ["NUL", "OUT_OF_CALENDAR", "Arrivals", "LogFilter", "LogStore", "MemoryLogStore", "faults", "from_us", "in_calendar",
           "meta_id", "store_from_url", "to_us"]


def store_from_url(url: str) -> LogStore:
    """The store a URL names: ``memory://[?capacity=N]``, ``sqlite:///relative/logs.db`` (four slashes for
    an absolute path) or ``postgresql://user@host/db[?schema=NAME]``. A database backend's module (and its
    driver) is imported only when chosen."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        capacity = parse_qs(urlsplit(url).query).get("capacity", ["100000"])[0]
        try:
            return MemoryLogStore(capacity=int(capacity))
        except ValueError as exc:
            raise ValueError(f"invalid capacity {capacity!r} in {url!r}: a whole number") from exc
    if scheme == "sqlite":
        from logging_service.store.sqlite import SqliteLogStore

        return SqliteLogStore.from_url(url)
    if scheme in ("postgres", "postgresql"):
        from logging_service.store.postgres import PostgresLogStore

        return PostgresLogStore.from_url(url)
    raise ValueError(f"unknown log store URL scheme {scheme!r}: use sqlite:///, postgresql:// or memory://")
