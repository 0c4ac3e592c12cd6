"""The scheduler's HTTP API: enqueue (refused with a 503 past ``max_queue_length``), long-poll dequeue
under a lease, ack/nack/extend/release, remove and cancel, entry states and queue lengths, pausing and
resuming a queue, dead letters, redriving and discarding them, upkeep locks (:mod:`scheduler.locks`), plus the seed system's ``POST /queue`` and
``POST /queue/dequeue`` on the ``default`` queue.
Stores are chosen by ``store_url`` (see :mod:`scheduler.store`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

from aiohttp import web
from loguru import logger

from scheduler import autoscale_reports, locks
from scheduler.api import (
    AckBatch,
    AckBatchAnswer,
    CancelAnswer,
    DeadLetterItem,
    DeadLetters,
    DeadQuery,
    DequeueAnswer,
    DequeueBody,
    EnqueueBatchBody,
    EnqueueBody,
    ExtendAnswer,
    ExtendBody,
    JobIdsBody,
    JobPath,
    LeaseRef,
    LengthsAnswer,
    NackAnswer,
    NackBody,
    QueueDequeueBody,
    QueuePath,
    RequeueBody,
    StatesAnswer,
    StatesBody,
    dead_cursor,
)
from scheduler.dispatch import Dispatcher
from scheduler.metrics import add_queue_metrics
from scheduler.settings import Settings
from scheduler.store import LeaseLost, QueueFull, QueueStats, QueueStore, StoreUnavailable, store_from_url
from shared.contract import Delivery, QueuedJob, utcnow
from shared.errors import Conflict, Unavailable
from shared.web import create_service_app, json_response, parse_model, query_model, read_model

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", QueueStore)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)

#: The queue of the seed system's single-queue routes.
DEFAULT_QUEUE = "default"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
P = TypeVar("P", QueuePath, JobPath)


def create_app(settings: Settings) -> web.Application:
    """The scheduler app; the store is opened and the lease reaper started when the app starts."""
    app = create_service_app("scheduler", settings, health=_health, status=_status, middlewares=[_store_errors],
                             snapshot=_snapshot)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_running)
    app.on_shutdown.append(_release_waiters)
    router = app.router
    router.add_post("/queues/{queue}/jobs", enqueue)
    router.add_post("/queues/batch", enqueue_batch)
    router.add_post("/queues/{queue}/dequeue", dequeue_one_queue)
    router.add_post("/queues/{queue}/pause", pause)
    router.add_post("/queues/{queue}/resume", resume)
    router.add_post("/queues/contains", contains)
    router.add_post("/queues/states", states)
    router.add_get("/queues/lengths", lengths)
    router.add_delete("/queues/jobs/{job_id}", remove)
    router.add_post("/queues/jobs/{job_id}/cancel", cancel)
    router.add_post("/dequeue", dequeue)
    router.add_post("/leases/ack", ack)
    router.add_post("/leases/acks", ack_batch)
    router.add_post("/leases/nack", nack)
    router.add_post("/leases/extend", extend)
    router.add_post("/leases/release", release)
    router.add_get("/dead", dead_letters)
    router.add_post("/dead/requeue", requeue)
    router.add_post("/dead/discard", discard)
    router.add_post("/queue", seed_enqueue)
    router.add_post("/queue/dequeue", seed_dequeue)
    autoscale_reports.add_routes(app)
    locks.add_routes(router, STORE)
    return app


#: The longest each step of the scheduler's stop may take (the reaper's end, the hand-backs).
STOP_STEP_S = 5.0


async def _running(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = store_from_url(settings.store_url)
    await store.open()
    dispatcher = Dispatcher(store)
    app[STORE] = store
    app[DISPATCHER] = dispatcher
    add_queue_metrics(app, store)
    reaper = asyncio.create_task(dispatcher.reap(settings.reap_interval_s))
    # The scheme only: a Redis URL may carry a password.
    logger.info("scheduler store open: {}", settings.store_url.split(":", 1)[0])
    try:
        yield
    finally:
        # Each step is bounded: a store call that never returns must not hold the service's stop.
        reaper.cancel()
        await asyncio.wait({reaper}, timeout=STOP_STEP_S)
        try:
            await asyncio.wait_for(dispatcher.drain(), STOP_STEP_S)
        except TimeoutError:
            logger.warning("jobs whose consumer went away were not handed back within {} s; their leases "
                           "will expire", STOP_STEP_S)
        await store.close()


async def _release_waiters(app: web.Application) -> None:
    # Long polls would otherwise hold the shutdown for up to their wait.
    dispatcher = app.get(DISPATCHER)
    if dispatcher is not None:
        dispatcher.stop_waiting()


def queue_full(exc: QueueFull) -> Unavailable:
    return Unavailable("queue full", [{"field": "queue", "message": (
        f"the {exc.queue} queue holds {exc.length} jobs and may hold {exc.max_length}: "
        "nothing was enqueued; retry later")}])


@web.middleware
async def _store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LeaseLost as exc:
        raise Conflict("lease lost", [{"field": "lease_id", "message": (
            f"job {exc} is not leased under this lease id: it expired and was handed out again, "
            "or the job was acked, removed or dead-lettered")}]) from exc
    except QueueFull as exc:
        logger.info("enqueue refused: {}", exc, queue=exc.queue)
        raise queue_full(exc) from exc
    except StoreUnavailable as exc:
        logger.warning("queue store unavailable: {}", exc)
        raise Unavailable("queue store unavailable") from exc


async def _health(app: web.Application) -> dict[str, Any]:
    try:
        await app[STORE].ping()
    except Exception as exc:
        raise Unavailable(f"queue store unreachable: {exc}") from exc
    return {"store": "ok"}


async def queue_snapshots(store: QueueStore) -> dict[str, dict[str, Any]]:
    """Every queue by name (every queue that held an entry, and every paused one): its entries by state,
    its totals, the age of its oldest ready entry and whether it is ``paused``."""
    stats = await store.stats(utcnow())
    paused = await store.paused_queues()
    for name in paused - stats.keys():
        stats[name] = QueueStats(extra={"expired": 0})
    queues = {}
    for name, queue in sorted(stats.items()):
        fields = asdict(queue)
        extra = fields.pop("extra")
        if fields["oldest_ready_age_s"] is not None:
            fields["oldest_ready_age_s"] = round(fields["oldest_ready_age_s"], 3)
        queues[name] = {**fields, **extra, "paused": name in paused}
    return queues


async def _status(app: web.Application) -> dict[str, Any]:
    queues = await queue_snapshots(app[STORE])
    report: dict[str, Any] = {"queues": queues, "waiting_consumers": app[DISPATCHER].waiting}
    if app[autoscale_reports.REPORTS]:
        report["autoscale"] = autoscale_reports.reports(app)
    return report


def _snapshot(app: web.Application) -> dict[str, Any]:
    """The heartbeat's snapshot: the consumers in a long poll (queue lengths cost the store a round trip)."""
    dispatcher = app.get(DISPATCHER)
    return {"waiting_consumers": dispatcher.waiting if dispatcher is not None else 0}


async def enqueue(request: web.Request) -> web.Response:
    queue = _path(request, QueuePath).queue
    body = await read_model(request, EnqueueBody)
    added = await request.app[STORE].enqueue(queue, body.jobs, utcnow(), request.app[SETTINGS].max_queue_length)
    enqueued = sum(added)
    if enqueued:
        request.app[DISPATCHER].wake(queue, enqueued)
    logger.debug("enqueued {} jobs on {} ({} duplicates)", enqueued, queue, len(added) - enqueued)
    return json_response({"enqueued": enqueued, "duplicates": len(added) - enqueued})


async def enqueue_batch(request: web.Request) -> web.Response:
    """Several queues' jobs in one request (a receptionist's submissions of several kinds that arrive
    together), each queue as its own ``POST /queues/{queue}/jobs``: one result a queue, 200 with
    ``enqueued`` and ``duplicates``, or 503 with the error of a full queue (the others are queued)."""
    body = await read_model(request, EnqueueBatchBody)
    store, settings, results = request.app[STORE], request.app[SETTINGS], {}
    for queue, jobs in body.queues.items():
        try:
            added = await store.enqueue(queue, jobs, utcnow(), settings.max_queue_length)
        except QueueFull as exc:
            logger.info("enqueue refused: {}", exc, queue=exc.queue)
            results[queue] = {"status": 503, **queue_full(exc).body()}
            continue
        enqueued = sum(added)
        if enqueued:
            request.app[DISPATCHER].wake(queue, enqueued)
        results[queue] = {"status": 200, "enqueued": enqueued, "duplicates": len(added) - enqueued}
    return json_response({"results": results})


async def dequeue(request: web.Request) -> web.Response:
    body = await read_model(request, DequeueBody)
    return json_response(DequeueAnswer(deliveries=await _deliver(request, body.queues, body)))


async def dequeue_one_queue(request: web.Request) -> web.Response:
    queue = _path(request, QueuePath).queue
    body = await read_model(request, QueueDequeueBody) if request.body_exists else QueueDequeueBody()
    return json_response(DequeueAnswer(deliveries=await _deliver(request, [queue], body)))


async def ack(request: web.Request) -> web.Response:
    body = await read_model(request, LeaseRef)
    await request.app[STORE].ack(body.job_id, body.lease_id, utcnow())
    logger.debug("acked", job_id=str(body.job_id))
    return json_response({})


async def ack_batch(request: web.Request) -> web.Response:
    """Several acks in one request (and, on SQLite, one commit); a lost lease is reported, not an error."""
    body = await read_model(request, AckBatch)
    acked = await request.app[STORE].ack_many([(item.job_id, item.lease_id) for item in body.items], utcnow())
    answer = AckBatchAnswer(acked=[i.job_id for i, ok in zip(body.items, acked, strict=True) if ok],
                            lost=[i.job_id for i, ok in zip(body.items, acked, strict=True) if not ok])
    return json_response(answer)


async def nack(request: web.Request) -> web.Response:
    body = await read_model(request, NackBody)
    outcome = await request.app[STORE].nack(body.job_id, body.lease_id, utcnow(), body.error, body.delay_s,
                                            retry=body.retry)
    log = logger.bind(job_id=str(body.job_id), attempt=outcome.attempt, error=body.error)
    if outcome.cancelled:
        log.info("nacked a cancelled job: forgotten, not retried")
    elif outcome.dead:
        log.warning("nacked {}: job dead-lettered", "on the last attempt" if body.retry else "without retry")
    else:
        log.info("nacked: retry at {}", outcome.ready_at)
        # The store does not say which queue; one waiter a queue looks again (and sees the new due time).
        request.app[DISPATCHER].wake(None)
    return json_response(NackAnswer(dead=outcome.dead, attempt=outcome.attempt, ready_at=outcome.ready_at,
                                    cancelled=outcome.cancelled))


async def extend(request: web.Request) -> web.Response:
    body = await read_model(request, ExtendBody)
    lease_s = body.lease_s or request.app[SETTINGS].lease_s
    extended = await request.app[STORE].extend(body.job_id, body.lease_id, lease_s, utcnow())
    return json_response(ExtendAnswer(lease_expires_at=extended.lease_expires_at,
                                      cancelled=extended.cancel_requested))


async def release(request: web.Request) -> web.Response:
    body = await read_model(request, LeaseRef)
    await request.app[STORE].release(body.job_id, body.lease_id, utcnow())
    request.app[DISPATCHER].wake(None)
    logger.info("released: job ready again", job_id=str(body.job_id))
    return json_response({})


async def remove(request: web.Request) -> web.Response:
    job_id = _path(request, JobPath).job_id
    removed = await request.app[STORE].remove(job_id)
    if removed:
        logger.info("removed from its queue", job_id=str(job_id))
    return json_response({"removed": removed})


async def cancel(request: web.Request) -> web.Response:
    """Cancel a job's entry: gone when it waits (or is dead), flagged when it is leased."""
    job_id = _path(request, JobPath).job_id
    outcome = await request.app[STORE].cancel(job_id)
    if outcome == "removed":
        logger.info("cancelled: removed from its queue", job_id=str(job_id))
    elif outcome == "flagged":
        logger.info("cancelled while leased: its handler is told at its next extend", job_id=str(job_id))
    return json_response(CancelAnswer(outcome=outcome))


async def states(request: web.Request) -> web.Response:
    """What state each asked job's entry is in, for reconciling the registry with the queues."""
    body = await read_model(request, StatesBody)
    return json_response(StatesAnswer(states=await request.app[STORE].states(body.job_ids, utcnow())))


async def lengths(request: web.Request) -> web.Response:
    """Entries not dead per queue and the limit, so receptionists can refuse work before enqueueing it."""
    return json_response(LengthsAnswer(lengths=await request.app[STORE].lengths(),
                                       max_queue_length=request.app[SETTINGS].max_queue_length))


async def contains(request: web.Request) -> web.Response:
    body = await read_model(request, JobIdsBody)
    held = await request.app[STORE].contains(body.job_ids)
    return json_response({"held": [str(i) for i in dict.fromkeys(body.job_ids) if i in held]})


async def dead_letters(request: web.Request) -> web.Response:
    """Dead letters, oldest death first (ties by job id), a keyset page at a time: ``next_cursor`` names the
    last of a full page, and the next page starts just after it."""
    query = query_model(request, DeadQuery)
    letters = await request.app[STORE].dead_letters(query.queue, query.limit + 1, query.after())
    page = letters[:query.limit]
    return json_response(DeadLetters(items=[
        DeadLetterItem(job=d.job, queue=d.queue, attempt=d.attempt, error=d.error, died_at=d.died_at)
        for d in page
    ], next_cursor=dead_cursor((page[-1].died_at, page[-1].job.id)) if len(letters) > query.limit else None))


async def requeue(request: web.Request) -> web.Response:
    body = await read_model(request, RequeueBody)
    requeued = await request.app[STORE].redrive(body.job_ids, body.queue, utcnow())
    if requeued:
        request.app[DISPATCHER].wake(body.queue, requeued)
    logger.info("requeued {} dead jobs", requeued, queue=body.queue)
    return json_response({"requeued": requeued})


async def pause(request: web.Request) -> web.Response:
    """Pause a queue: it takes jobs but hands none out (leases out go on). Idempotent; answers the queue."""
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    """Resume a paused queue: its ready jobs are handed out again. Idempotent; answers the queue."""
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    queue = _path(request, QueuePath).queue
    store = request.app[STORE]
    changed = await store.set_paused(queue, paused)
    snapshot = (await queue_snapshots(store)).get(queue) or {"paused": paused}
    if changed:
        logger.info("queue {} {}", queue, "paused" if paused else "resumed", queue=queue)
        if not paused and snapshot.get("ready"):
            request.app[DISPATCHER].wake(queue, snapshot["ready"])
    return json_response({"queue": queue, **snapshot})


async def discard(request: web.Request) -> web.Response:
    """Forget dead letters for good: the named ``job_ids``, or ``all`` of them (of ``queue`` when given).
    Answers the ids discarded (named ids that were not dead letters are left out)."""
    body = await read_model(request, RequeueBody)
    discarded = await request.app[STORE].discard(body.job_ids, body.queue)
    logger.info("discarded {} dead jobs", len(discarded), queue=body.queue)
    return json_response({"discarded": [str(i) for i in discarded]})


async def seed_enqueue(request: web.Request) -> web.Response:
    job = await read_model(request, QueuedJob)
    max_length = request.app[SETTINGS].max_queue_length
    (added,) = await request.app[STORE].enqueue(DEFAULT_QUEUE, [job], utcnow(), max_length)
    if added:
        request.app[DISPATCHER].wake(DEFAULT_QUEUE)
    return json_response({"enqueued": added}, status=201)


async def seed_dequeue(request: web.Request) -> web.Response:
    deliveries = await _deliver(request, [DEFAULT_QUEUE], QueueDequeueBody())
    if not deliveries:
        return web.Response(status=204)
    return json_response(deliveries[0])


async def _deliver(request: web.Request, queues: list[str], body: QueueDequeueBody) -> list[Delivery]:
    settings = request.app[SETTINGS]

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    deliveries = await request.app[DISPATCHER].dequeue(
        queues, body.max, body.lease_s or settings.lease_s, min(body.wait_s, settings.max_wait_s), gone)
    for delivery in deliveries:
        logger.debug("delivered", job_id=str(delivery.job.id), queue=delivery.queue, attempt=delivery.attempt)
    return deliveries


def _path(request: web.Request, model: type[P]) -> P:
    return parse_model(model, dict(request.match_info))
