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
    exception of that op alone), one call at a time. A call takes whole submissions, in their order, up to
    ``max_ops`` (a submission is never split: a batch stays one transaction). An exception that ``run``
    raises reaches every op of that call."""

    def __init__(self, run: Callable[[Sequence[Op]], Awaitable[list[Result | Exception]]], *,
                 max_ops: int = 1000) -> None:
        self._run = run
        self.max_ops = max_ops
        self._pending: list[tuple[Sequence[Op], asyncio.Future[list[Result | Exception]]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, ops: Sequence[Op]) -> list[Result | Exception]:
        """Run ``ops`` (together, in one call of ``run``) and return their outcomes."""
        future: asyncio.Future[list[Result | Exception]] = asyncio.get_running_loop().create_future()
        self._pending.append((ops, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            group = [self._pending.pop(0)]
            size = len(group[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.max_ops:
                group.append(self._pending.pop(0))
                size += len(group[-1][0])
            try:
                outcomes = await self._run([op for ops, _ in group for op in ops])
            except BaseException as exc:  # every waiter of the group hears it, a cancellation too
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            start = 0
            for ops, future in group:
                if not future.done():  # its caller may have gone; the write stands
                    future.set_result(outcomes[start:start + len(ops)])
                start += len(ops)

    async def wait_idle(self) -> None:
        """Wait until the writes submitted so far are done (their outcomes are with their callers)."""
        if self._draining is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._draining)
