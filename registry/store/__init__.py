"""Registry stores, chosen by URL: ``memory://``, ``sqlite:///path/registry.db``, ``postgresql://...``."""

from __future__ import annotations

from registry.store.base import JobEvent, JobStore, StoredUser

__all__ = ["JobEvent", "JobStore", "StoredUser", "store_from_url"]


def store_from_url(url: str) -> JobStore:
    """The store a URL names; the backend's module (and its driver) is imported only when chosen."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from registry.store.memory import MemoryJobStore

        return MemoryJobStore()
    if scheme == "sqlite":
        from registry.store.sqlite import SqliteJobStore

        return SqliteJobStore.from_url(url)
    if scheme in ("postgres", "postgresql"):
        from registry.store.postgres import PostgresJobStore

        return PostgresJobStore.from_url(url)
    raise ValueError(f"unknown registry store URL scheme {scheme!r}: use memory://, sqlite:/// or postgresql://")
