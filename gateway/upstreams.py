"""The receptionist pool: round-robin over the receptionists that are up.

A receptionist is down when it refused a connection (for ``cooloff_s``, or until a health probe finds
it back) or when its last health probe failed (until one succeeds). The health loop probes every
receptionist's ``GET /health`` every ``health_interval_s``.

The pool is the configured receptionists (the seeds, ``GATEWAY_RECEPTIONISTS``), which always stay, and
those the registry knows are alive (:meth:`UpstreamPool.merge`, called by the gateway's discovery loop): one
started by hand joins within a discovery interval and a probe, and one the registry lists gone (or no
more) leaves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from loguru import logger


class Upstream:
    """One receptionist and its counters."""

    __slots__ = ("down_until", "failures", "in_flight", "requests", "up", "url")

    def __init__(self, url: str, *, up: bool = True) -> None:
        self.url = url
        #: What the last event (probe or refusal) said.
        self.up = up
        #: When a down receptionist may be tried again without a probe (``inf``: only after a probe).
        self.down_until = 0.0 if up else math.inf
        self.requests = 0
        self.failures = 0
        self.in_flight = 0

    def available(self, now: float) -> bool:
        return self.up or now >= self.down_until

    def report(self, now: float) -> dict[str, Any]:
        return {"url": self.url, "up": self.available(now), "requests": self.requests,
                "failures": self.failures, "in_flight": self.in_flight}


class UpstreamPool:
    """The receptionists, picked in turn among those available."""

    def __init__(self, urls: list[str], *, cooloff_s: float = 5.0, health_interval_s: float = 2.0,
                 health_timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("at least one upstream is required")
        self.upstreams = [Upstream(url) for url in urls]
        #: The configured receptionists: they stay in the pool whatever the registry says.
        self.seeds = tuple(urls)
        self.cooloff_s = cooloff_s
        self.health_interval_s = health_interval_s
        self.health_timeout = aiohttp.ClientTimeout(total=health_timeout_s)
        self.clock = clock
        self._next = 0

    def pick(self, exclude: Sequence[Upstream] = ()) -> Upstream | None:
        """The next available upstream in turn, not one of ``exclude``; None when there is none."""
        now = self.clock()
        upstreams = self.upstreams
        n = len(upstreams)
        start = self._next
        for i in range(n):
            upstream = upstreams[(start + i) % n]
            if upstream.available(now) and upstream not in exclude:
                self._next = (start + i + 1) % n
                return upstream
        return None

    def any_available(self, exclude: Sequence[Upstream] = ()) -> bool:
        now = self.clock()
        return any(upstream.available(now) and upstream not in exclude for upstream in self.upstreams)

    def retry_after_s(self) -> float:
        """When asking again may find an upstream: the end of the nearest cool-off, or the next probe."""
        now = self.clock()
        waits = [u.down_until - now for u in self.upstreams if not u.up and math.isfinite(u.down_until)]
        return max(0.0, min([self.health_interval_s, *waits]))

    def refused(self, upstream: Upstream) -> None:
        """``upstream`` refused a connection: skip it for the cool-off."""
        upstream.failures += 1
        if upstream.up:
            logger.warning("receptionist {} refused a connection; skipped for {}s", upstream.url, self.cooloff_s)
        upstream.up = False
        upstream.down_until = self.clock() + self.cooloff_s

    def probed(self, upstream: Upstream, ok: bool, reason: str = "") -> None:
        """Record a health probe: up as soon as one succeeds, down until one does."""
        if ok:
            if not upstream.up:
                logger.info("receptionist {} is up", upstream.url)
            upstream.up = True
            upstream.down_until = 0.0
        else:
            if upstream.up:
                logger.warning("receptionist {} is down: {}", upstream.url, reason)
            upstream.up = False
            upstream.down_until = math.inf

    async def probe(self, session: aiohttp.ClientSession, upstream: Upstream) -> None:
        try:
            async with session.get(upstream.url + "/health", timeout=self.health_timeout,
                                   allow_redirects=False) as resp:
                await resp.read()
                self.probed(upstream, resp.status == 200, f"/health answered {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.probed(upstream, False, f"/health failed: {type(exc).__name__}")

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self.probe(session, upstream) for upstream in self.upstreams))

    async def health_loop(self, session: aiohttp.ClientSession) -> None:
        """Probe every upstream every ``health_interval_s``, until cancelled."""
        while True:
            try:
                await self.probe_all(session)
            except Exception:
                logger.exception("health probes failed")
            await asyncio.sleep(self.health_interval_s)

    def merge(self, alive: Sequence[str]) -> tuple[list[Upstream], list[Upstream]]:
        """Make the pool the seeds and the receptionists in ``alive`` (the registry's alive ones): those
        already in it keep their state and their turn, a new one joins down until its first probe, and one
        neither a seed nor alive leaves (a request it is answering finishes). Returns ``(joined, left)``."""
        wanted = set(self.seeds) | set(alive)
        known = {upstream.url for upstream in self.upstreams}
        left = [upstream for upstream in self.upstreams if upstream.url not in wanted]
        joined = [Upstream(url, up=False) for url in dict.fromkeys(alive) if url not in known]
        if left or joined:
            self.upstreams = [u for u in self.upstreams if u.url in wanted] + joined
            self._next %= len(self.upstreams)
        return joined, left

    def report(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [upstream.report(now) for upstream in self.upstreams]

