"""The scheduler's own gauges in ``/metrics``: per queue, its entries by state and the oldest ready job's
wait, and whether it is paused, read from the store at each scrape. ``conveyor_queue_ready`` and
``conveyor_queue_oldest_ready_age_seconds``, with the handlers' ``conveyor_handler_slots``, are the signal
a platform's autoscaler scales handlers on (see the README)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Gauge

from scheduler.store import QueueStore
from shared.contract import utcnow
from shared.web import METRICS

STATES = ("ready", "delayed", "leased", "dead")


def add_queue_metrics(app: web.Application, store: QueueStore) -> None:
    metrics = app[METRICS]
    by_state = {state: Gauge(f"conveyor_queue_{state}", f"Jobs {state} in the queue", ["queue"],
                             registry=metrics.registry) for state in STATES}
    oldest = Gauge("conveyor_queue_oldest_ready_age_seconds", "How long the oldest ready job has waited",
                   ["queue"], registry=metrics.registry)

    paused = Gauge("conveyor_queue_paused", "1 while the queue is paused (it takes jobs but hands none out)",
                   ["queue"], registry=metrics.registry)

    async def refresh() -> None:
        stopped = await store.paused_queues()
        for name, stats in (await store.stats(utcnow())).items():
            for state, gauge in by_state.items():
                gauge.labels(name).set(getattr(stats, state))
            oldest.labels(name).set(stats.oldest_ready_age_s or 0.0)
            paused.labels(name).set(int(name in stopped))
        for name in stopped:
            paused.labels(name).set(1)

    metrics.before_scrape.append(refresh)
