"""The receptionist's read-only handle on the bulk data store, for streamed exports (``GET /v1/exports``).

Opened at the first export that needs it rather than at start-up, so a receptionist starts before the
first import has made the store (a SQLite file, PostgreSQL tables), and keeps answering 503 until then;
once open, every stream shares it (a PostgreSQL pool, or SQLite's one connection)."""

from __future__ import annotations

import asyncio

from shared.datastore import DataStore, DataStoreError
from shared.errors import Unavailable


class DataReader:
    """One read-only :class:`DataStore`, opened on first use; :meth:`close` when the app stops."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: DataStore | None = None
        self._lock = asyncio.Lock()

    async def store(self) -> DataStore:
        """The open store; :class:`Unavailable` (503) while there is none to read."""
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                store = DataStore.from_url(self.url, read_only=True)
                try:
                    await store.open()
                except DataStoreError as exc:
                    raise Unavailable(f"the data store cannot be read ({exc}); nothing has been imported yet?"
                                      ) from exc
                self._store = store
            return self._store

    async def close(self) -> None:
        async with self._lock:
            store, self._store = self._store, None
        if store is not None:
            await store.close()
