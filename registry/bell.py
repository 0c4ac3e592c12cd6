"""The change bell: the registry rings it whenever this process appended job events, so that the long polls
of the event routes answer as soon as there is something new instead of at their next re-check.

Events appended by another process (a second registry on the same database) ring no bell here; the
re-check every ``recheck_s`` finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class ChangeBell:
    """Wakes the long polls of one app. Every ring replaces the event the waiters hold, so a waiter that
    took its event before asking the store cannot miss a ring that came while it asked."""

    def __init__(self, recheck_s: float) -> None:
        self.recheck_s = recheck_s
        self.closed = False
        self.waiting = 0  # long polls waiting right now, for /status
        self._rung = asyncio.Event()

    def ring(self) -> None:
        """Something changed: every waiter asks again."""
        if self.closed:
            return
        self._rung.set()
        self._rung = asyncio.Event()

    def close(self) -> None:
        """The app is stopping: every waiter answers with what it has, now and from now on."""
        self.closed = True
        self._rung.set()

    async def wait_for(self, fetch: Callable[[], Awaitable[list[T]]], wait_s: float) -> list[T]:
        """``await fetch()`` until it finds something, ``wait_s`` passes or the bell closes; asked again at
        every ring and every ``recheck_s``. Returns the last answer (empty when nothing came)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            rung = self._rung
            found = await fetch()
            left = deadline - loop.time()
            if found or left <= 0 or self.closed:
                return found
            self.waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.recheck_s, left)):
                        await rung.wait()
            finally:
                self.waiting -= 1
