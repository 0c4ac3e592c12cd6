"""Handing out work: dequeue long polls that wait in-process for jobs, and the lease reaper.

A consumer that finds nothing waits on a future registered under each queue it asked for. Whatever makes
jobs ready in this process (an enqueue, a nack, a release, a redrive, an expired lease) calls
:meth:`Dispatcher.wake`, which resolves as many waiters of that queue as there are new jobs, the longest
waiting first. A waiter also wakes when the earliest delayed job of its queues falls due, and at least
every ``recheck_s``, because another scheduler sharing a Redis store can enqueue without telling us.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable

from loguru import logger

from scheduler.store import LeaseLost, QueueStore
from shared.contract import Delivery, utcnow


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Dispatcher:
    """Dequeues from a :class:`QueueStore` on behalf of consumers that may wait for work."""

    def __init__(self, store: QueueStore, recheck_s: float = 0.5) -> None:
        self.store = store
        self.recheck_s = recheck_s
        #: Consumers waiting for work right now.
        self.waiting = 0
        self._waiters: dict[str, dict[asyncio.Future[None], None]] = {}
        self._hand_backs: set[asyncio.Task[None]] = set()
        self._closing = False

    def wake(self, queue: str | None, count: int = 1) -> None:
        """``count`` jobs became ready in ``queue`` (in every queue when None): wake that many waiters."""
        queues = self._waiters.values() if queue is None else [self._waiters.get(queue, {})]
        for waiters in queues:
            left = count
            for waiter in waiters:
                if left <= 0:
                    break
                if not waiter.done():
                    waiter.set_result(None)
                    left -= 1

    def stop_waiting(self) -> None:
        """The service is stopping: every waiting consumer returns at once, empty-handed."""
        self._closing = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                _resolve(waiter)

    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, wait_s: float,
                      gone: Callable[[], bool] = lambda: False) -> list[Delivery]:
        """Lease up to ``max_jobs`` ready jobs of ``queues``, waiting up to ``wait_s`` for the first.

        ``gone`` tells whether the consumer hung up; it is asked after each wait and before answering,
        and jobs leased for a consumer that is gone are released, so a dropped long poll leases nothing.
        The same holds when the caller is cancelled while the store is leasing.
        """
        queues = list(dict.fromkeys(queues))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            # Registered before looking, so a job that arrives between the look and the wait wakes us.
            self._register(queues, waiter)
            try:
                deliveries = await self._take(queues, max_jobs, lease_s)
                if deliveries:
                    if gone():
                        await self._hand_back(deliveries)
                        return []
                    return deliveries
                timeout_s = min(deadline - loop.time(), self.recheck_s)
                if timeout_s <= 0 or self._closing:
                    return []
                due = await self.store.next_ready_at(queues)
                if due is not None:
                    timeout_s = min(timeout_s, (due - utcnow()).total_seconds())
                await self._sleep(waiter, timeout_s)
            finally:
                self._unregister(queues, waiter)
            if gone() or self._closing:
                return []

    async def drain(self) -> None:
        """Wait for the releases of deliveries whose consumer went away mid-dequeue."""
        while self._hand_backs:
            await asyncio.gather(*self._hand_backs, return_exceptions=True)

    async def reap(self, interval_s: float) -> None:
        """Every ``interval_s``, return expired leases to their queues (or the dead letters, or nowhere for
        a cancelled job); runs until cancelled, and a failing store is logged and tried again at the next
        tick. Every scheduler on a shared store reaps, and each expired lease is moved by one of them only:
        :meth:`QueueStore.expire_leases` takes it off the leased set in the same atomic step (one Lua
        script on Redis) that moves it, so a second reaper no longer finds it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                expired = await self.store.expire_leases(utcnow())
            except Exception:
                logger.exception("lease reaper: the store failed; trying again in {} s", interval_s)
                continue
            ready: Counter[str] = Counter()
            for lease in expired:
                log = logger.bind(job_id=str(lease.job_id), queue=lease.queue, attempt=lease.attempt)
                if lease.cancelled:
                    log.info("lease expired on a cancelled job: forgotten")
                elif lease.dead:
                    log.warning("lease expired on the last attempt: job dead-lettered")
                else:
                    log.warning("lease expired: job ready again")
                    ready[lease.queue] += 1
            for queue, count in ready.items():
                self.wake(queue, count)

    async def _take(self, queues: list[str], max_jobs: int, lease_s: float) -> list[Delivery]:
        task = asyncio.ensure_future(self.store.dequeue(queues, max_jobs, lease_s, utcnow()))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The store may lease the jobs after we stopped listening: give them back when it does.
            task.add_done_callback(self._hand_back_later)
            raise

    def _hand_back_later(self, task: asyncio.Future[list[Delivery]]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            return
        release = asyncio.ensure_future(self._hand_back(task.result()))
        self._hand_backs.add(release)
        release.add_done_callback(self._hand_backs.discard)

    async def _hand_back(self, deliveries: Iterable[Delivery]) -> None:
        ready: Counter[str] = Counter()
        for delivery in deliveries:
            try:
                await self.store.release(delivery.job.id, delivery.lease_id, utcnow())
            except LeaseLost:
                continue
            except Exception:
                logger.bind(job_id=str(delivery.job.id)).exception(
                    "could not hand back a job whose consumer went away; its lease will expire")
                continue
            ready[delivery.queue] += 1
            logger.bind(job_id=str(delivery.job.id), queue=delivery.queue).info(
                "consumer went away before its delivery: job handed back")
        for queue, count in ready.items():
            self.wake(queue, count)

    async def _sleep(self, waiter: asyncio.Future[None], timeout_s: float) -> None:
        if timeout_s <= 0:
            return
        timer = asyncio.get_running_loop().call_later(timeout_s, _resolve, waiter)
        self.waiting += 1
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiting -= 1

    def _register(self, queues: list[str], waiter: asyncio.Future[None]) -> None:
        for queue in queues:
            self._waiters.setdefault(queue, {})[waiter] = None

    def _unregister(self, queues: list[str], waiter: asyncio.Future[None]) -> None:
        for queue in queues:
            waiters = self._waiters.get(queue)
            if waiters is not None:
                waiters.pop(waiter, None)
                if not waiters:
                    del self._waiters[queue]
