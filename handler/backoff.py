"""Waiting out a neighbour that does not answer, so a handler never spins.

:class:`Backoff` is the delay between tries: exponential from a base to a cap, with jitter (each delay is
drawn from its upper half, so handlers that failed together drift apart yet none retries at once).

:class:`Outage` is what the worker does when no registry instance answers: a job it dequeues could be
neither marked ``processing`` nor reported, so it would only be handed back, again and again (a dead
registry once had a handler dequeue and hand back the same jobs 215 times in 3 s). During an outage the
worker takes no jobs; the outage probes the registry's ``/health`` after each backoff delay and ends when
an instance answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger


class Backoff:
    """Delays that double from ``base_s`` up to ``cap_s``, each drawn from ``[d/2, d]``."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = max(cap_s, base_s)
        self.failures = 0

    def next_s(self) -> float:
        delay = min(self.cap_s, self.base_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """Whether the registry answers; while it does not, :meth:`wait_over` holds the worker's dequeues.

    ``probe`` answers True once the registry can be used again. :meth:`begin` is called by whatever found
    it unreachable (a report that could not be made); calling it during an outage changes nothing.
    """

    def __init__(self, probe: Callable[[], Awaitable[bool]], backoff: Backoff) -> None:
        self.probe = probe
        self.backoff = backoff
        self._over = asyncio.Event()
        self._over.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.outages = 0
        self.probes = 0
        self.since: float | None = None  # wall clock, for /status

    @property
    def ongoing(self) -> bool:
        return not self._over.is_set()

    def begin(self, reason: str) -> None:
        if self.ongoing or self._closed:
            return
        self._over.clear()
        self.outages += 1
        self.since = time.time()
        self.backoff.reset()
        logger.warning("registry unreachable ({}): taking no jobs until it answers", reason)
        self._task = asyncio.create_task(self._probe_until_over(), name="handler-registry-probe")

    async def wait_over(self) -> None:
        await self._over.wait()

    async def _probe_until_over(self) -> None:
        started, probes = time.monotonic(), 0
        while True:
            await asyncio.sleep(self.backoff.next_s())
            probes += 1
            self.probes += 1
            if await self.probe():
                break
        self.since = None
        self._over.set()
        logger.info("registry answers again after {:.1f}s ({} probes): taking jobs", time.monotonic() - started,
                    probes)

    async def close(self) -> None:
        """Stop probing (the worker stops); no outage begins after. Safe twice."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"reachable": not self.ongoing, "since": self.since, "outages": self.outages, "probes": self.probes}
