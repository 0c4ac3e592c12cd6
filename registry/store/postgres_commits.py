"""Group commit for the PostgreSQL registry store: the writes that arrive while one transaction is in
flight go together in the next one.

Every write with events takes its turn at the event sequencer for the time of its commit (see
:mod:`registry.store.postgres_writes`), so N concurrent single writes of one process would be N commits
one after the other. Instead a process has one write transaction in flight at a time, and whatever arrived
meanwhile, single writes and batches alike, is the next transaction: idle, a write is sent at once (no
window, no added delay); busy, the transactions grow with the load instead of their number. Each write
still gets its own outcome, judged as if alone in the order of arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Op = TypeVar("Op")
Result = TypeVar("Result")


class GroupCommitter(Generic[Op, Result]):
    """Runs ops through ``run`` (one transaction for a list of ops, one outcome each: a result or the
    exception of that op alone), one call at a time, at most ``max_ops`` a call. An exception that
    ``run`` raises reaches every op of that call."""

    def __init__(self, run: Callable[[Sequence[Op]], Awaitable[list[Result | Exception]]], *,
                 max_ops: int = 1000) -> None:
        self._run = run
        self.max_ops = max_ops
        self._pending: list[tuple[Op, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.transactions = 0  # calls of ``run`` made, for /status and tests
        self.ops = 0

    async def submit(self, ops: Sequence[Op]) -> list[Result | Exception]:
        """Run ``ops`` (together, in one call of ``run``, when they fit) and return their outcomes."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in ops]
        self._pending.extend(zip(ops, futures, strict=True))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._pending:
            group, self._pending = self._pending[:self.max_ops], self._pending[self.max_ops:]
            self.transactions += 1
            self.ops += len(group)
            try:
                outcomes = await self._run([op for op, _ in group])
            except BaseException as exc:  # every waiter of the group hears it, a cancellation too
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if not future.done():  # its caller may have gone; the write stands
                    future.set_result(outcome)  # type: ignore[arg-type]  # an op's exception is its result

    async def wait_idle(self) -> None:
        """Wait until the writes submitted so far are done (their outcomes are with their callers)."""
        if self._draining is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._draining)
