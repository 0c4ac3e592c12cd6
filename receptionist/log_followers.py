"""The followers behind ``GET /logs/stream`` (:mod:`receptionist.log_stream`): one per filter, asking the
logging service, which has no push, for new lines once a tick for every stream of that filter.

A follower asks for the lines since ``lookback_s`` before the newest it has seen: services ship their lines
in batches, so a line may arrive after a later one from another service. A line it has not sent yet goes to
every stream of the filter, however many watch. A tick reads ``lines`` lines at most: when every one of
them is new, older new lines may have been passed over, and the tick says so (a ``skipped`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from loguru import logger

from shared.errors import UpstreamError
from shared.http import ServiceClient

#: Ticks of lines a stream may have waiting for its client; past that the client is too slow: it ends.
QUEUED_TICKS = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Line = dict[str, Any]
#: What one tick hands each stream: new lines, oldest first, and the time before which lines were passed
#: over (None: none were).
Batch = tuple[list[Line], str | None]


def time_us(timestamp: str) -> int:
    """Microseconds since 1970 of an ISO time (a naive one is UTC)."""
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def line_key(line: Line) -> bytes:
    """What tells two lines apart (a line read twice has the same key)."""
    return orjson.dumps(line, option=orjson.OPT_SORT_KEYS)


async def fetch_lines(logs: ServiceClient, filters: dict[str, str], since_us: int, limit: int) -> list[Line]:
    """The lines matching ``filters`` at or after ``since_us``, oldest first (the newest ``limit``)."""
    _, page = await logs.get("/logs", params={**filters, "since": _time(since_us), "limit": str(limit)})
    return list(reversed(page["items"]))


class _Follower:
    """The lines of one filter, read once a tick for every stream that watches it."""

    def __init__(self, logs: ServiceClient, filters: dict[str, str], *, tick_s: float, lookback_s: float,
                 lines: int) -> None:
        self.logs, self.filters = logs, filters
        self.tick_s, self.lines = tick_s, lines
        self.lookback_us = int(lookback_s * 1_000_000)
        self.queues: set[asyncio.Queue[Batch | None]] = set()
        self.newest_us = time_us(datetime.now(timezone.utc).isoformat())
        #: Lines sent, by key, to the time they tell of: forgotten once older than the lookback.
        self.sent: dict[bytes, int] = {}
        self.failing = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.queues:
            await self.tick()
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        since_us = self.newest_us - self.lookback_us
        try:
            lines = await fetch_lines(self.logs, self.filters, since_us, self.lines)
        except UpstreamError as exc:
            if not self.failing:
                logger.warning("log stream: the logging service failed: {}", exc)
            self.failing = True
            return
        self.failing = False
        new = []
        for line in lines:
            key = line_key(line)
            if key not in self.sent:
                us = time_us(line["timestamp"])
                self.sent[key] = us
                self.newest_us = max(self.newest_us, us)
                new.append(line)
        skipped = _time(time_us(lines[0]["timestamp"])) if len(lines) >= self.lines and len(new) == len(lines) else None
        horizon = self.newest_us - self.lookback_us
        self.sent = {key: us for key, us in self.sent.items() if us >= horizon}
        if new or skipped:
            for queue in list(self.queues):
                try:
                    queue.put_nowait((new, skipped))
                except asyncio.QueueFull:  # too slow a client: its stream ends, the others go on
                    self.queues.discard(queue)
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    queue.put_nowait(None)


class LogFollowers:
    """The followers of a receptionist's log streams, one per filter, each running while someone watches."""

    def __init__(self) -> None:
        self._by_filter: dict[tuple[tuple[str, str], ...], _Follower] = {}

    @contextlib.contextmanager
    def watch(self, logs: ServiceClient, filters: dict[str, str], *, tick_s: float, lookback_s: float,
              lines: int) -> Iterator[asyncio.Queue[Batch | None]]:
        """A queue of the new lines of ``filters`` while the block runs (None in it: the stream must end)."""
        key = tuple(sorted(filters.items()))
        follower = self._by_filter.get(key)
        if follower is None:
            follower = self._by_filter[key] = _Follower(logs, filters, tick_s=tick_s, lookback_s=lookback_s,
                                                        lines=lines)
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=QUEUED_TICKS)
        follower.queues.add(queue)
        if follower.task is None or follower.task.done():
            follower.task = asyncio.create_task(follower.run(), name="log-follower")
        try:
            yield queue
        finally:
            follower.queues.discard(queue)
            if not follower.queues:
                follower.task.cancel()
                if self._by_filter.get(key) is follower:
                    del self._by_filter[key]

    def __len__(self) -> int:
        return len(self._by_filter)
