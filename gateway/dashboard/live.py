"""``GET /dashboard/live``: the queues and instances, pushed as server-sent events every tick.

One loop per gateway asks a receptionist for ``GET /queues`` (every page) and ``GET /instances`` once a
tick, whatever the number of viewers, and every open stream sends that same snapshot on. It also keeps, in memory, the
last hour of each queue's enqueued and finished (acked) jobs per second, from the differences of the
scheduler's totals between two looks; a stream starts with that history, so a page opened now draws the
last hour at once.

The loop runs as long as the gateway does: every ``tick_s`` while someone watches, every ``sample_s``
(10 s) while nobody does, and then it asks for ``GET /queues`` only and sends nothing. The rates are
differences of cumulative totals the scheduler's store already keeps (``enqueued``, ``acked``), so a
sample every few seconds loses nothing but resolution: the hour is whole whenever a page opens, at the
cost of one small read per gateway every ``sample_s``. Keeping per-minute buckets in the scheduler
instead would need a new table or key in each of its stores, and a write per job, for the same chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from gateway.proxy import PERMISSIONS_HEADER, ROLES_HEADER, USER_HEADER, USERNAME_HEADER, Proxy
from shared.api import Role
from shared.logs import request_id_var
from shared.web import REQUEST_ID_HEADER, SERVICE_TOKEN_HEADER, dumps

#: Seconds of history kept per queue.
HISTORY_S = 3600.0
KEEPALIVE = b": keep-alive\n\n"


class LiveHub:
    """The one loop that fetches snapshots, and the streams that wait on them."""

    def __init__(self, proxy: Proxy, *, tick_s: float, sample_s: float, timeout_s: float) -> None:
        self.proxy = proxy
        self.tick_s = tick_s
        self.sample_s = sample_s
        #: Two looks further apart than this (the upstream did not answer meanwhile) give no rate.
        self.gap_s = 3 * max(tick_s, sample_s)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.viewers = 0
        self.snapshot: dict[str, Any] | None = None
        self.version = 0
        #: queue -> deque of ``[t, enqueued/s, finished/s]``
        self.history: dict[str, deque[list[float]]] = {}
        self._totals: dict[str, tuple[float, int, int]] = {}
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0
        self.samples = 0

    async def _get(self, path: str) -> Any:
        session = self.proxy.session
        assert session is not None, "the gateway's client sessions are opened at startup"
        headers = {USER_HEADER: "system", USERNAME_HEADER: "dashboard", ROLES_HEADER: Role.OPERATOR.value,
                   PERMISSIONS_HEADER: "", REQUEST_ID_HEADER: request_id_var.get() or "dashboard-live"}
        if self.proxy.service_token:
            headers[SERVICE_TOKEN_HEADER] = self.proxy.service_token
        tried = []
        while (upstream := self.proxy.pool.pick(tried)) is not None:
            tried.append(upstream)
            try:
                async with session.get(URL(upstream.url + path), headers=headers, timeout=self.timeout) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{path} answered {resp.status}")
                    return await resp.json()
            except aiohttp.ClientConnectorError:
                self.proxy.pool.refused(upstream)
        raise RuntimeError("no receptionist available")

    async def _queues(self) -> dict[str, Any]:
        """``GET /queues``, every page, as the snapshot shows it: ``queues`` by name, and ``autoscale``
        when a launcher reports."""
        queues: dict[str, dict[str, Any]] = {}
        answer: dict[str, Any] = {"queues": queues}
        path = "/queues?limit=1000"
        while True:
            page = await self._get(path)
            for item in page["items"]:
                fields = dict(item)
                queues[fields.pop("queue")] = fields
            if "autoscale" in page:
                answer["autoscale"] = page["autoscale"]
            if not page.get("next_cursor"):
                return answer
            path = f"/queues?limit=1000&cursor={page['next_cursor']}"

    def _record(self, now: float, queues: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
        rates = {}
        for name, queue in queues.items():
            enqueued, acked = int(queue.get("enqueued", 0)), int(queue.get("acked", 0))
            before = self._totals.get(name)
            self._totals[name] = (now, enqueued, acked)
            if before is None or now - before[0] > self.gap_s:
                continue  # the first look, or after a gap: no rate to tell
            elapsed = max(now - before[0], 1e-3)
            # A total that went down (a scheduler with a fresh memory store) counts as nothing.
            point = [round(now, 3), round(max(enqueued - before[1], 0) / elapsed, 2),
                     round(max(acked - before[2], 0) / elapsed, 2)]
            points = self.history.setdefault(name, deque())
            points.append(point)
            while points[0][0] < now - HISTORY_S:
                points.popleft()
            rates[name] = point
        return rates

    async def _sample(self) -> None:
        """Nobody watches: the queues' totals only, for the history; no snapshot goes out."""
        now = time.time()
        try:
            queues = await self._queues()
        except (RuntimeError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
            logger.debug("dashboard history sample failed: {}", str(exc) or type(exc).__name__)
        else:
            self._record(now, queues["queues"])
        self.samples += 1

    async def _tick(self) -> None:
        now = time.time()
        snapshot: dict[str, Any] = {"t": round(now, 3)}
        try:
            queues, instances = await asyncio.gather(self._queues(), self._get("/instances"))
        except (RuntimeError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
            previous = self.snapshot or {}
            snapshot.update(queues=previous.get("queues", {}), instances=previous.get("instances", []),
                            rates={}, error=str(exc) or type(exc).__name__)
        else:
            snapshot.update(queues=queues["queues"], instances=instances["items"],
                            rates=self._record(now, queues["queues"]))
            if "autoscale" in queues:
                snapshot["autoscale"] = queues["autoscale"]
        self.fetches += 1
        async with self._changed:
            self.snapshot = snapshot
            self.version += 1
            self._changed.notify_all()

    async def _loop(self) -> None:
        started = time.monotonic()  # the first sample waits its interval: the receptionists may be starting
        while True:
            interval = self.tick_s if self.viewers else self.sample_s
            # A first viewer wakes the loop at once (and one who came during the last tick, right after it).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, interval - (time.monotonic() - started)))
            self._wake.clear()
            started = time.monotonic()
            try:
                await (self._tick() if self.viewers else self._sample())
            except Exception:  # an upkeep loop logs and carries on
                logger.exception("dashboard live tick failed")

    def start(self) -> None:
        """Start the loop (with the app: :func:`live_ctx`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="dashboard-live")

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """While a viewer watches, the loop ticks every ``tick_s``."""
        self.viewers += 1
        if self.viewers == 1:
            # What the last viewer saw may be long gone: the first snapshot comes with the next tick.
            self.snapshot = None
            self._wake.set()
        try:
            yield
        finally:
            self.viewers -= 1

    async def stop(self) -> None:
        """Stop the loop; safe twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def next_after(self, version: int, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """The snapshot after ``version``, or ``(version, None)`` when none came within ``timeout_s``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > version), timeout_s)
            if self.version > version:
                return self.version, self.snapshot
            return version, None

    def history_view(self) -> dict[str, list[list[float]]]:
        return {name: list(points) for name, points in self.history.items()}


def frame(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"
