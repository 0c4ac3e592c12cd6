"""The ECG API: ``POST /ecgs`` submits an ECG for analysis (zero crossings per lead, :mod:`shared.kinds.ecg`),
``GET /ecgs/{job_id}`` tells its state and, once finished, the counts, ``GET /ecgs`` lists the caller's.

An ECG body may be far larger than other JSON bodies (``max_ecg_bytes``, not ``max_json_bytes``). It is
parsed as it arrives, its samples written to the signals artifact as they are read
(:mod:`receptionist.ecg_body`), so a request holds a few megabytes at most, whatever the ECG's size. The
artifact is complete before the job is registered, so no handler ever runs an ECG whose signals are not
there yet; the job's payload only names it (and its SHA-256).

A submission with an ``Idempotency-Key`` gets a job id derived from the caller and the key, so a repeat
names the same signals artifact, and the registry sees the same payload and answers with the first job;
another ECG under the same key has another digest, so the registry refuses it (409). The artifact of a
repeat is never written again: a handler may be reading it.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger

from receptionist import jobs
from receptionist.access import Caller
from receptionist.ecg_body import EcgBodyReader, read_ecg
from receptionist.keys import ARTIFACTS, SETTINGS
from receptionist.queries import PublicQuery, page_answer, read_query
from receptionist.views import ecg_view
from shared.artifacts import artifact_key
from shared.contract import JobKind
from shared.errors import NotFound
from shared.ids import uuid7
from shared.kinds.ecg import SIGNALS_NAME, EcgPayload
from shared.scheduling import scheduling_of, submission_model
from shared.web import json_response

#: Job ids of submissions with an ``Idempotency-Key`` are uuid5 names in this namespace.
IDEMPOTENT_IDS = uuid.UUID("193111d8-eb30-4749-9f73-099f26fc5f59")


async def post_ecg(request: web.Request) -> web.Response:
    """201 with the ECG as ``GET /ecgs/{job_id}`` shows it (its ``id``, the client's ``label``); a repeated ``Idempotency-Key`` gets the
    first submission's job (200). The body may carry the scheduling fields beside the ECG's
    (:mod:`shared.scheduling`)."""
    app = request.app
    settings = app[SETTINGS]
    caller = jobs.check_submitter(request, JobKind.ECG)
    read_query(request, PublicQuery)
    key = await jobs.admit(request, JobKind.ECG)
    job_id = uuid.uuid5(IDEMPOTENT_IDS, f"{caller.owner}\n{key}") if key is not None else uuid7()
    signals_key = artifact_key(JobKind.ECG, job_id, 0, SIGNALS_NAME)
    store = app[ARTIFACTS]
    # A repeat's signals are read and hashed (its digest goes to the registry, which refuses another ECG
    # under the same key) but never written again: a handler may be reading them.
    written = not await store.exists(signals_key)
    samples = io.BytesIO()  # what the reader wrote of the chunk just fed: moved on to the store at once
    reader = EcgBodyReader(samples, max_head_bytes=settings.max_json_bytes, model=submission_model(EcgPayload))
    if written:
        # A streamed write (on S3, parts go out as they fill), committed only once the whole body was read
        # and validated: nobody ever sees half the signals, and a refused body leaves nothing behind.
        async with store.writer(signals_key) as out:
            ecg = await read_ecg(request, reader, settings.max_ecg_bytes, drain=_drain_into(samples, out.write))
    else:
        ecg = await read_ecg(request, reader, settings.max_ecg_bytes, drain=_drain_into(samples, None))
    payload = {
        "id": ecg.id,
        "date": ecg.date.isoformat(),
        "leads": [{"name": lead.name, "number_of_samples": len(lead.signal)} for lead in ecg.leads],
        "signals": signals_key,
        "signals_sha256": reader.digest.hexdigest(),
    }
    try:
        status, job = await jobs.register(request, JobKind.ECG, payload, caller=caller, job_id=job_id,
                                          idempotency_key=key, scheduling=scheduling_of(ecg))
    except Exception:
        # Refused, or not queued and marked failed: no job will read the signals written here.
        if written:
            await app[ARTIFACTS].delete([signals_key])
        raise
    logger.bind(job_id=job["id"], leads=len(ecg.leads), bytes=reader.size).info("ecg stored")
    return json_response(ecg_view(job), status=status)


def _drain_into(buffer: io.BytesIO, write: Callable[[bytes], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
    """A drain for :func:`read_ecg`: what the reader left in ``buffer`` goes to ``write`` (or nowhere)."""

    async def drain() -> None:
        data = buffer.getvalue()
        if data:
            buffer.seek(0)
            buffer.truncate()
            if write is not None:
                await write(data)

    return drain


async def list_ecgs(request: web.Request) -> web.Response:
    """``GET /ecgs``: the caller's ECGs, newest first, as ``GET /ecgs/{job_id}`` shows each."""
    items, next_cursor = await jobs.own_jobs(request, JobKind.ECG)
    return page_answer(request, [ecg_view(job) for job in items], next_cursor)


async def get_ecg(request: web.Request) -> web.Response:
    read_query(request, PublicQuery)
    job = await jobs.fetch_job(request)
    if job["kind"] != JobKind.ECG:
        raise NotFound(f"no ECG {job['id']}")
    return json_response(ecg_view(job, Caller.of(request).owns(job)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/ecgs", post_ecg)
    router.add_get("/ecgs", list_ecgs)
    router.add_get("/ecgs/{job_id}", get_ecg)
