"""The followers behind ``GET /logs/stream`` (:mod:`receptionist.log_stream`): one per filter, asking the
logging service, which has no push, for new lines once a tick for every stream of that filter.

The logging service numbers the lines as they arrive (``seq``), so a follower asks for the lines after the
greatest number it has seen: a line shipped late, or with the same time as another, is read once, never
passed over. A tick reads ``lines`` lines at most: when more arrived, the older ones are passed over and
the tick says so (a ``skipped`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from loguru import logger

from shared.errors import UpstreamError
from shared.http import ServiceClient

#: Ticks of lines a stream may have waiting for its client; past that the client is too slow: it ends.
QUEUED_TICKS = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: A log line as the logging service answers ``GET /logs?after_seq=``: with its ``seq``.
Line = dict[str, Any]
#: What one tick hands each stream: new lines, oldest arrival first, whether older ones were passed over,
#: and whether the logging service numbers its lines afresh (its memory store restarted).
Batch = tuple[list[Line], bool, bool]


def time_us(timestamp: str) -> int:
    """Microseconds since 1970 of an ISO time (a naive one is UTC)."""
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


@dataclass
class Arrived:
    """Lines read after a sequence number: oldest arrival first, whether older ones were passed over, and
    the greatest sequence number the logging service had given (every line up to it was read)."""

    lines: list[Line]
    skipped: bool
    last_seq: int


async def fetch_lines(logs: ServiceClient, filters: dict[str, str], after_seq: int, limit: int, *,
                      since_us: int | None = None) -> Arrived:
    """The lines matching ``filters`` (and at or after ``since_us``) that arrived after ``after_seq``: the
    newest ``limit`` of them."""
    params = {**filters, "after_seq": str(after_seq), "limit": str(limit + 1)}
    if since_us is not None:
        params["since"] = _time(since_us)
    _, page = await logs.get("/logs", params=params)
    items = page["items"]
    return Arrived(list(reversed(items[:limit])), len(items) > limit, int(page["last_seq"]))


class _Follower:
    """The lines of one filter, read once a tick for every stream that watches it."""

    def __init__(self, logs: ServiceClient, filters: dict[str, str], *, tick_s: float, lines: int) -> None:
        self.logs, self.filters = logs, filters
        self.tick_s, self.lines = tick_s, lines
        self.queues: set[asyncio.Queue[Batch | None]] = set()
        #: The greatest sequence number read; None until its first stream says where to start.
        self.after_seq: int | None = None
        self.failing = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.queues:
            if self.after_seq is not None:
                await self.tick(self.after_seq)
            await asyncio.sleep(self.tick_s)

    async def tick(self, after_seq: int) -> None:
        try:
            got = await fetch_lines(self.logs, self.filters, after_seq, self.lines)
            restarted = got.last_seq < after_seq
            if restarted:  # the logging service numbers afresh (a memory store, restarted): all is new
                got = await fetch_lines(self.logs, self.filters, 0, self.lines)
        except UpstreamError as exc:
            if not self.failing:
                logger.warning("log stream: the logging service failed: {}", exc)
            self.failing = True
            return
        self.failing = False
        self.after_seq = max(0 if restarted else after_seq, got.last_seq, *(line["seq"] for line in got.lines))
        if got.lines or restarted:
            for queue in list(self.queues):
                try:
                    queue.put_nowait((got.lines, got.skipped, restarted))
                except asyncio.QueueFull:  # too slow a client: its stream ends, the others go on
                    self.queues.discard(queue)
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    queue.put_nowait(None)


@dataclass
class Watch:
    """One stream's hold on its filter's follower: the ``queue`` of what each tick read, and
    :meth:`start`."""

    queue: asyncio.Queue[Batch | None]
    _follower: _Follower

    def start(self, last_seq: int) -> int:
        """Say that this stream has read every line up to ``last_seq``; a new follower reads on from there.
        Returns where the follower reads on from: every line after it comes in the queue, so a stream must
        read the lines up to it itself when that is later than ``last_seq``."""
        if self._follower.after_seq is None:
            self._follower.after_seq = last_seq
        return self._follower.after_seq


class LogFollowers:
    """The followers of a receptionist's log streams, one per filter, each running while someone watches."""

    def __init__(self) -> None:
        self._by_filter: dict[tuple[tuple[str, str], ...], _Follower] = {}

    @contextlib.contextmanager
    def watch(self, logs: ServiceClient, filters: dict[str, str], *, tick_s: float,
              lines: int) -> Iterator[Watch]:
        """The new lines of ``filters`` while the block runs, once the stream said where it starts
        (:meth:`Watch.start`); a None in the queue: the stream must end."""
        key = tuple(sorted(filters.items()))
        follower = self._by_filter.get(key)
        if follower is None:
            follower = self._by_filter[key] = _Follower(logs, filters, tick_s=tick_s, lines=lines)
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=QUEUED_TICKS)
        follower.queues.add(queue)
        if follower.task is None or follower.task.done():
            follower.task = asyncio.create_task(follower.run(), name="log-follower")
        try:
            yield Watch(queue, follower)
        finally:
            follower.queues.discard(queue)
            if not follower.queues:
                follower.task.cancel()
                if self._by_filter.get(key) is follower:
                    del self._by_filter[key]

    def __len__(self) -> int:
        return len(self._by_filter)
