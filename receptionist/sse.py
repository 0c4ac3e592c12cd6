"""Server-sent events on the wire (the ``text/event-stream`` format): how an event and a keep-alive look, the
answer's headers, and the open streams of one receptionist."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson

from shared.errors import Unavailable

CONTENT_TYPE = "text/event-stream"
#: No cache may keep a live stream; ``X-Accel-Buffering`` keeps an nginx in front from holding it back.
HEADERS = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: A comment line: clients ignore it, proxies see bytes flowing.
KEEPALIVE = b": keep-alive\n\n"


def frame(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    """One event: ``id``, ``event`` and one ``data`` line of JSON (orjson writes no newline), then the
    blank line that ends it."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), orjson.dumps(data))


class OpenStreams:
    """The event streams a receptionist serves: how many are open (each holds a connection to the registry,
    so there is a limit), and the signal that ends them all when the app stops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.stopping = asyncio.Event()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count one stream while the block runs; 503 when ``limit`` are open already or the app stops."""
        if self.stopping.is_set():
            raise Unavailable("this receptionist is stopping; reconnect", retry_after_s=1.0)
        if self.open >= self.limit:
            raise Unavailable("too many event streams are open here; try again later",
                              [{"field": "stream", "message": f"at most {self.limit} at once"}], retry_after_s=1.0)
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    def stop(self) -> None:
        """End every stream (each sends what it has and closes cleanly) and refuse new ones."""
        self.stopping.set()
