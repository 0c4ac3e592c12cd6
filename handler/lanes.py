"""A handler's lanes: slots for the jobs of some queues, each lane filled by a poll loop of its own
(:class:`handler.worker.Worker`). Kinds without a concurrency limit share one lane of ``HANDLER_CONCURRENCY``
slots; a kind with a limit has a lane of its own, its limit in slots (per handler process), for its queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from handler.settings import Settings
from shared.kinds import KINDS, KindRegistry


@dataclass
class Lane:
    """Slots for the jobs of some queues, and the poll loop that fills them."""

    name: str
    queues: list[str]
    slots: int
    running: set[str] = field(default_factory=set)
    #: Jobs whose run is over and whose outcome is being reported and acked: their slot is free again, but
    #: more of them than ``slots`` hold the lane back (a registry slower than the work does not pile them up).
    settling: set[str] = field(default_factory=set)
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def free(self) -> int:
        return self.slots - len(self.running) - max(0, len(self.settling) - self.slots)


def queues_of(settings: Settings, kinds: KindRegistry = KINDS) -> list[str]:
    """The queues a handler takes jobs from: ``HANDLER_QUEUES``, else every registered kind's."""
    return list(dict.fromkeys(settings.queues)) if settings.queues else kinds.queues()


def lanes_of(queues: list[str], concurrency: int, kinds: KindRegistry = KINDS) -> list[Lane]:
    """One lane per kind with a concurrency limit whose queue is taken here (its limit, at most
    ``concurrency``), and one lane of ``concurrency`` slots for the other queues."""
    limited = {spec.queue: spec for spec in kinds.specs() if spec.concurrency is not None and spec.queue in queues}
    lanes = [Lane(spec.kind, [queue], min(spec.concurrency or 1, concurrency)) for queue, spec in limited.items()]
    shared = [queue for queue in queues if queue not in limited]
    return ([Lane("shared", shared, concurrency)] if shared else []) + lanes
