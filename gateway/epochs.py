"""Which tokens still count: each user's current token epoch, asked of the registry and kept a few seconds.

A token names the user's id and the epoch it was issued at. The registry adds one to a user's epoch when
their password or roles change, and forgets the id when the user is removed; a token whose epoch is not
the current one is refused. Asking the registry on every request would put it on the hot path of every
call, so the gateway keeps each user's answer for ``ttl_s`` seconds: a change takes effect at most that
long after it was made. The clock of an entry starts when its fetch starts, not when it ends, so a slow
answer does not stretch that bound.

The cache is bounded (the least recently used user goes first), and concurrent requests of one user whose
entry is stale share one fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

#: Asks the registry for a user's current epoch; None when no user has that id.
Fetch = Callable[[str], Awaitable[int | None]]


class EpochCache:
    """Users' current token epochs, each kept ``ttl_s`` seconds (0: asked on every request), at most
    ``max_users`` of them. ``fetch`` is set once the gateway's registry client exists."""

    def __init__(self, ttl_s: float, max_users: int, fetch: Fetch | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_users = max_users
        self.fetch = fetch
        self._entries: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[int | None]] = {}
        self.hits = 0
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, float | int]:
        return {"ttl_s": self.ttl_s, "users": len(self._entries), "hits": self.hits, "fetches": self.fetches}

    def remember(self, user_id: str, epoch: int | None, since: float | None = None) -> None:
        """Keep ``epoch`` as ``user_id``'s, learned from a registry answer asked for at ``since``
        (monotonic; default now)."""
        self._entries[user_id] = (time.monotonic() if since is None else since, epoch)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    async def current(self, user_id: str) -> int | None:
        """``user_id``'s epoch as the registry said at most ``ttl_s`` ago; None when the user is gone.
        Raises what ``fetch`` raises when the registry cannot say (the caller is refused, never let in)."""
        entry = self._entries.get(user_id)
        if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
            self.hits += 1
            self._entries.move_to_end(user_id)
            return entry[1]
        pending = self._pending.get(user_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(user_id))
            self._pending[user_id] = pending
            pending.add_done_callback(lambda done: self._settled(user_id, done))
        # Shielded: one caller going away must not cancel the fetch the others wait for.
        return await asyncio.shield(pending)

    async def _load(self, user_id: str) -> int | None:
        if self.fetch is None:
            raise RuntimeError("the epoch cache has no registry to ask yet")
        since = time.monotonic()
        self.fetches += 1
        epoch = await self.fetch(user_id)
        self.remember(user_id, epoch, since)
        return epoch

    def _settled(self, user_id: str, done: asyncio.Future[int | None]) -> None:
        if self._pending.get(user_id) is done:
            del self._pending[user_id]
        if not done.cancelled():
            done.exception()  # retrieved: a failure every waiter already saw is not "never retrieved"
