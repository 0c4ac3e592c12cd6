"""Autoscaled handlers for ``conveyor up --handlers MIN --max-handlers MAX``: the launcher keeps between MIN
and MAX handler processes, from what the scheduler and the handlers report.

The signal, read every ``interval_s``:

- **backlog**: jobs ready now in the handlers' queues per free handler slot (free: a slot of a running
  handler without a job), from the scheduler's ``/status`` and each handler's ``/status``;
- **age**: how long the oldest ready job has waited.

Up: one handler more when the backlog reaches ``up_backlog`` or the age ``up_age_s``, at most one step per
``up_cooldown_s`` (a new handler needs a moment before its slots show). Down: one handler fewer once nothing
was ready and the busy slots would have fitted in one handler fewer for ``quiet_s`` without a break; every
scale-up starts that quiet period again. Up reacts in seconds, down only after a quiet period: the gap
between the two conditions is the hysteresis that keeps the count from flapping.

Scaling down is a graceful stop (SIGTERM): the handler takes no new job, lets its running ones finish within
its grace period and hands the rest back to the scheduler, so none is lost; the launcher does not restart
it. Each decision is logged with its reason (the launcher's log goes to the central log too) and kept, with
the current count, in ``stack.json`` under ``autoscale``; the same report goes to the scheduler after each
step, which shows it in its ``/status`` (and the operators' ``GET /queues``).

On many machines the platform's own autoscaler does this job: the same signal is in the services' metrics
(``conveyor_queue_ready`` and ``conveyor_queue_oldest_ready_age_seconds`` from the scheduler,
``conveyor_handler_slots{state="free"}`` from each handler); see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from loguru import logger


@dataclass(frozen=True)
class Policy:
    """When to scale; the times are real seconds."""

    min_handlers: int
    max_handlers: int
    up_backlog: float = 2.0  # ready jobs per free slot
    up_age_s: float = 5.0  # the oldest ready job's wait
    up_cooldown_s: float = 3.0
    quiet_s: float = 30.0
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_handlers <= self.max_handlers:
            raise ValueError(f"need 1 <= min handlers ({self.min_handlers}) <= max handlers ({self.max_handlers})")


@dataclass(frozen=True)
class Signal:
    """What the scheduler and the running handlers said, at one moment."""

    ready: int  # jobs ready now in the handlers' queues
    oldest_age_s: float  # the oldest ready job's wait (0: none)
    slots: int  # slots of the running handlers
    busy: int  # of which running a job

    @property
    def free(self) -> int:
        return max(self.slots - self.busy, 0)

    @property
    def backlog(self) -> float:
        """Ready jobs per free slot (all of them when no slot is free)."""
        return self.ready / max(self.free, 1)


@dataclass(frozen=True)
class Decision:
    action: Literal["up", "down", "hold"]
    reason: str


@dataclass
class Scaler:
    """The decisions, with the memory they need: when the count last went up, since when it has been
    quiet. :meth:`decide` is pure apart from that memory, for tests."""

    policy: Policy
    last_up: float = float("-inf")
    quiet_since: float | None = None

    def decide(self, active: int, signal: Signal, now: float) -> Decision:
        p = self.policy
        per_handler = signal.slots / active if active else 0
        if active < p.min_handlers:
            return Decision("up", f"{active} handlers running, fewer than the minimum {p.min_handlers}")
        pressed = []
        if signal.ready and signal.backlog >= p.up_backlog:
            pressed.append(f"{signal.ready} jobs ready for {signal.free} free slots "
                           f"({signal.backlog:.1f} a slot >= {p.up_backlog:g})")
        if signal.ready and signal.oldest_age_s >= p.up_age_s:
            pressed.append(f"the oldest ready job has waited {signal.oldest_age_s:.1f}s >= {p.up_age_s:g}s")
        if pressed:
            self.quiet_since = None
            if active >= p.max_handlers:
                return Decision("hold", f"{'; '.join(pressed)}, but already at the maximum {p.max_handlers}")
            if now - self.last_up < p.up_cooldown_s:
                return Decision("hold", f"{'; '.join(pressed)}; waiting for the last handler started to help")
            self.last_up = now
            return Decision("up", "; ".join(pressed))
        fits_in_fewer = signal.ready == 0 and signal.busy <= per_handler * (active - 1)
        if not fits_in_fewer or active <= p.min_handlers:
            self.quiet_since = None
            return Decision("hold", "busy" if not fits_in_fewer else f"at the minimum {p.min_handlers}")
        if self.quiet_since is None:
            self.quiet_since = now
        quiet_for = now - self.quiet_since
        if quiet_for < p.quiet_s:
            return Decision("hold", f"quiet for {quiet_for:.0f}s of {p.quiet_s:g}s")
        self.quiet_since = now  # the next step down needs a quiet period of its own
        return Decision("down", f"nothing ready and {signal.busy} busy slots fit in {active - 1} handlers, "
                                f"quiet for {quiet_for:.0f}s")


async def read_signal(session: aiohttp.ClientSession, scheduler_url: str, handler_urls: Sequence[str],
                      headers: dict[str, str], queues: set[str] | None = None) -> Signal:
    """The signal from the scheduler's and the handlers' ``/status``; a handler that does not answer
    (starting, stopping) counts with no slots. Raises aiohttp errors when the scheduler does not answer."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with session.get(scheduler_url + "/status", headers=headers, timeout=timeout) as resp:
        resp.raise_for_status()
        stats = (await resp.json())["queues"]
    mine = {name: q for name, q in stats.items() if queues is None or name in queues}
    ready = sum(int(q.get("ready", 0)) for q in mine.values())
    oldest = max((float(q["oldest_ready_age_s"] or 0) for q in mine.values() if q.get("oldest_ready_age_s")),
                 default=0.0)

    async def one(url: str) -> tuple[int, int]:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            async with session.get(url + "/status", headers=headers, timeout=timeout) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    return int(body["concurrency"]), len(body["running"])
        return 0, 0

    answers = await asyncio.gather(*(one(url) for url in handler_urls))
    return Signal(ready=ready, oldest_age_s=oldest, slots=sum(a[0] for a in answers),
                  busy=sum(a[1] for a in answers))


def scheduler_link(session: aiohttp.ClientSession, schedulers: str, headers: dict[str, str], name: str,
                   handler_urls: Callable[[], list[str]],
                   ) -> tuple[Callable[[], Awaitable[Signal]], Callable[[dict[str, Any]], Awaitable[None]]]:
    """An autoscaler's ``read`` and ``publish`` for a launcher: the signal from the first of ``schedulers``
    (comma-separated URLs) that answers, and each report to the first that takes it, as ``name``."""
    urls = schedulers.split(",")

    async def read() -> Signal:
        for url in urls[:-1]:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                return await read_signal(session, url, handler_urls(), headers)
        return await read_signal(session, urls[-1], handler_urls(), headers)

    async def publish(report: dict[str, Any]) -> None:
        for url in urls:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.put(f"{url}/autoscale/{quote(name, safe='')}", json=report, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 300:
                        return

    return read, publish


@dataclass
class Autoscaler:
    """Runs :class:`Scaler` against a live stack: ``scale_up()`` starts one more handler, ``scale_down()``
    stops one gracefully; both return when done. The decisions taken (not the holds) are kept, newest
    last, for ``stack.json``."""

    scaler: Scaler
    read: Callable[[], Awaitable[Signal]]
    active: Callable[[], int]
    scale_up: Callable[[str], Awaitable[None]]
    scale_down: Callable[[str], Awaitable[None]]
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))
    last_signal: Signal | None = None
    #: Called with :meth:`report` after each step (the scheduler's ``/status`` shows it); its failures are
    #: only logged.
    publish: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def report(self) -> dict[str, Any]:
        p = self.scaler.policy
        return {"min_handlers": p.min_handlers, "max_handlers": p.max_handlers, "handlers": self.active(),
                "signal": None if self.last_signal is None else {
                    "ready": self.last_signal.ready, "oldest_ready_age_s": round(self.last_signal.oldest_age_s, 3),
                    "slots": self.last_signal.slots, "busy": self.last_signal.busy},
                "decisions": list(self.decisions)}

    async def step(self) -> Decision:
        signal = self.last_signal = await self.read()
        active = self.active()
        decision = self.scaler.decide(active, signal, time.monotonic())
        if decision.action != "hold":
            target = active + (1 if decision.action == "up" else -1)
            logger.bind(action=decision.action, handlers=target, reason=decision.reason).info(
                "autoscale: {} to {} handlers: {}", decision.action, target, decision.reason)
            self.decisions.append({"at": time.time(), "action": decision.action, "handlers": target,
                                   "reason": decision.reason})
            await (self.scale_up if decision.action == "up" else self.scale_down)(decision.reason)
        return decision

    async def run(self, stopping: asyncio.Event) -> None:
        failing = False
        while not stopping.is_set():
            try:
                await self.step()
                failing = False
                if self.publish is not None:
                    await self.publish(self.report())
            except (TimeoutError, aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
                if not failing:
                    logger.warning("autoscale: cannot read the scheduler's status ({!r}); holding", exc)
                failing = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.scaler.policy.interval_s)
