"""Reading server-sent events in tests, as a browser's ``EventSource`` would: lines grouped into blocks by
blank lines, ``field: value`` lines (one leading space dropped), ``data`` lines joined by newlines, comment
lines starting with ``:``. Every read has a deadline, so a stream that stays silent fails the test
instead of hanging it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Block:
    """One blank-line-terminated block: an event (when it has data) or only comments (a keep-alive)."""

    id: str | None = None
    event: str = "message"
    data_lines: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def is_event(self) -> bool:
        return bool(self.data_lines)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> Any:
        return orjson.loads(self.data)


class SseReader:
    """The blocks of one ``text/event-stream`` answer, in order."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        self.resp = resp
        self.ended = False

    async def block(self, timeout_s: float = 10.0) -> Block | None:
        """The next block; None once the stream has ended (a block cut off by the end is dropped, as
        ``EventSource`` drops it)."""
        block = Block()
        started = False
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    self.ended = True
                    return None
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if started:
                        return block
                    continue
                started = True
                if line.startswith(":"):
                    block.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    block.data_lines.append(value)
                elif name == "id":
                    block.id = value
                elif name == "event":
                    block.event = value

    async def event(self, timeout_s: float = 10.0) -> Block:
        """The next event, skipping keep-alives; fails at the deadline or at the end of the stream."""
        deadline = time.monotonic() + timeout_s
        while True:
            block = await self.block(max(deadline - time.monotonic(), 0.001))
            assert block is not None, "the stream ended before the next event"
            if block.is_event:
                return block

    async def until(self, done: Callable[[Block], bool], timeout_s: float = 10.0) -> list[Block]:
        """Events up to and including the first one ``done`` accepts."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            seen.append(await self.event(max(deadline - time.monotonic(), 0.001)))
            if done(seen[-1]):
                return seen

    async def rest(self, timeout_s: float = 10.0) -> list[Block]:
        """Every event until the stream ends; fails when it does not end by the deadline."""
        deadline = time.monotonic() + timeout_s
        events = []
        while (block := await self.block(max(deadline - time.monotonic(), 0.001))) is not None:
            if block.is_event:
                events.append(block)
        return events
