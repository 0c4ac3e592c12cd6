"""Queue stores, chosen by URL: ``memory://``, ``sqlite:///path/scheduler.db``, ``redis://host:port/db``."""

from __future__ import annotations

from scheduler.store.base import (
    CancelOutcome,
    DeadKey,
    DeadLetter,
    EntryState,
    ExpiredLease,
    ExtendResult,
    LeaseLost,
    NackOutcome,
    QueueFull,
    QueueStats,
    QueueStore,
    StoreUnavailable,
    backoff_delay_s,
    dead_key,
    is_last_attempt,
)

__all__ = ["CancelOutcome", "DeadKey", "DeadLetter", "EntryState", "ExpiredLease", "ExtendResult", "LeaseLost", "NackOutcome",
           "QueueFull", "QueueStats", "QueueStore", "StoreUnavailable", "backoff_delay_s", "dead_key", "is_last_attempt",
           "store_from_url"]


def store_from_url(url: str) -> QueueStore:
    """The store a URL names; the backend's module (and its driver) is imported only when chosen."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from scheduler.store.memory import MemoryQueueStore

        return MemoryQueueStore()
    if scheme == "sqlite":
        from scheduler.store.sqlite import SqliteQueueStore

        return SqliteQueueStore.from_url(url)
    if scheme in ("redis", "rediss"):
        from scheduler.store.redis import RedisQueueStore

        return RedisQueueStore.from_url(url)
    raise ValueError(f"unknown scheduler store URL scheme {scheme!r}: use memory://, sqlite:/// or redis://")
