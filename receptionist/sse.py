"""Server-sent events on the wire (the ``text/event-stream`` format): how an event and a keep-alive look, the
answer's headers, and the open streams of one receptionist."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson

from shared.errors import TooManyRequests, Unavailable

CONTENT_TYPE = "text/event-stream"
#: No cache may keep a live stream; ``X-Accel-Buffering`` keeps an nginx in front from holding it back.
HEADERS = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: A comment line: clients ignore it, proxies see bytes flowing.
KEEPALIVE = b": keep-alive\n\n"


def frame(event_id: str, event: str, data: dict[str, Any]) -> bytes:
    """One event: ``id``, ``event`` and one ``data`` line of JSON (orjson writes no newline), then the
    blank line that ends it."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.encode(), orjson.dumps(data))


class OpenStreams:
    """The event streams a receptionist serves: how many are open (each holds a connection to the registry,
    so there is a limit), how many each identity holds (so that one cannot take every slot), and the signal
    that ends them all when the app stops."""

    def __init__(self, limit: int, per_identity: int) -> None:
        self.limit = limit
        self.per_identity = per_identity
        self.open = 0
        #: Open streams by identity; an identity with none is not kept.
        self.by_identity: dict[str, int] = {}
        self.refused = 0
        self.stopping = asyncio.Event()

    @contextlib.contextmanager
    def hold(self, identity: str) -> Iterator[None]:
        """Count one stream of ``identity`` while the block runs: 429 when it holds ``per_identity`` already,
        503 when ``limit`` are open or the app stops."""
        if self.stopping.is_set():
            raise Unavailable("this receptionist is stopping; reconnect", retry_after_s=1.0)
        held = self.by_identity.get(identity, 0)
        if held >= self.per_identity:
            self.refused += 1
            error = TooManyRequests("too many event streams of yours are open; close one first", retry_after_s=1.0)
            error.details = [{"field": "stream", "message": f"at most {self.per_identity} at once per caller"}]
            raise error
        if self.open >= self.limit:
            self.refused += 1
            raise Unavailable("too many event streams are open here; try again later",
                              [{"field": "stream", "message": f"at most {self.limit} at once"}], retry_after_s=1.0)
        self.open += 1
        self.by_identity[identity] = held + 1
        try:
            yield
        finally:
            self.open -= 1
            left = self.by_identity[identity] - 1
            if left:
                self.by_identity[identity] = left
            else:
                del self.by_identity[identity]

    def stop(self) -> None:
        """End every stream (each sends what it has and closes cleanly) and refuse new ones."""
        self.stopping.set()
