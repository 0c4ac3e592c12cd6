"""Micro-batching: calls made at about the same moment travel as one request.

A handler that dequeued twenty jobs marks twenty jobs ``processing`` at once, and finishes many at once
under load; one request (and one commit) for each group costs a fraction of twenty. Each caller still
awaits its own outcome, so the code that reports a job reads as if it made its own call.

The window follows the load, by Nagle's rule. A call made when no batch is on its way goes on the loop's
next turn, with whatever else came in that turn: with nothing out, waiting buys no company, and only adds
the window to the call (a job's path has four such calls, and the handler's report that a job finished
comes a millisecond after the one that it started). A call made while a batch is out waits up to
``window_s`` for others; while ``max_in_flight`` batches are on their way, a batch whose window is over
waits for one of them to come back and takes everything that arrived meanwhile (as a database's group
commit does): a busy batcher sends fewer, larger requests, since the server takes them one after the other
anyway. A full batch (``max_items``) never waits, and a held one waits ``max_hold_s`` at most.

Calls nobody waits on in a hurry (a handler's acks: the job's outcome is already in the registry) can
give up Nagle's rule (``nagle=False``): every batch then waits its window, so a quiet stack sends one
request for the calls of a window instead of one each. At low load a request costs most: on this
project's two-core machine an aiohttp service spent about 250 µs of CPU per request at 200 requests a
second against 30 µs at full speed (the cost of waking a sleeping process), see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

SendBatch = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    """Collects items for up to ``window_s`` (or ``max_items``) and sends them with ``send``, which returns
    one outcome per item, in order: a result, or an exception for that item alone. If ``send`` itself
    raises, every caller of that batch gets the exception. At most ``max_in_flight`` batches that are not
    full are sent at a time (see the module's docstring); a batch held back goes anyway after
    ``max_hold_s``, so a slow call does not hold the next ones for as long as it takes. A call made when
    no batch is on its way does not wait for the window, unless ``nagle`` is False."""

    def __init__(self, send: SendBatch[T, R], *, max_items: int = 100, window_s: float = 0.002,
                 max_in_flight: int = 1, max_hold_s: float = 0.05, nagle: bool = True) -> None:
        self._send = send
        self.nagle = nagle
        self.max_items = max_items
        self.window_s = window_s
        self.max_in_flight = max(1, max_in_flight)
        self.max_hold_s = max(window_s, max_hold_s)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        #: The window is over but ``max_in_flight`` batches are out: the next one to land sends these (or
        #: the timer, after ``max_hold_s``).
        self._held = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Send ``item`` with the next batch, and its outcome."""
        return await self.put(item)

    def put(self, item: T) -> asyncio.Future[R]:
        """Add ``item`` to the next batch now, and return the future of its outcome: for a caller that does
        not wait on it (its done callbacks see the outcome; :meth:`close` still sends it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_items:
            self._flush()
        elif self._timer is None:  # held ones have their timer: the longest they wait
            self._timer = loop.call_later(self.window_s if self._in_flight or not self.nagle else 0, self._flush)
        return future

    def _flush(self, force: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = False
        if not self._pending:
            return
        if not force and len(self._pending) < self.max_items and len(self._in_flight) >= self.max_in_flight:
            self._held = True
            self._timer = asyncio.get_running_loop().call_later(self.max_hold_s, self._flush, True)
            return
        batch, self._pending = self._pending[:self.max_items], self._pending[self.max_items:]
        task = asyncio.create_task(self._deliver(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._landed)
        if self._pending:
            self._flush(force)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._held:
            self._flush()

    async def _deliver(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            outcomes = await self._send([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def close(self) -> None:
        """Send what is waiting and wait for every batch in flight. Safe twice."""
        self._flush(force=True)
        while self._in_flight:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._in_flight, return_exceptions=True)
