"""The bulk data export API (:mod:`shared.kinds.data_export`): ``POST /v1/exports`` queues an export of
users, articles or comments (it needs the ``exporter`` permission, by ``RECEPTIONIST_KIND_PERMISSIONS``),
``GET /v1/exports/{job_id}`` tells how it goes and, once finished, where to download the file
(``GET /jobs/{job_id}/result``).

``GET /v1/exports?resource=...&format=...&fields=a,b&<filters>`` skips the job: the rows are streamed
straight from the data store (read-only, opened at the first such request: :mod:`receptionist.data_reader`),
a page at a time, so an export of any size takes one page of memory. Its status is sent before the first row; a failure after that cuts
the answer short (a client sees a truncated body, not a 200 that looks whole)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

from aiohttp import web
from loguru import logger

from receptionist import jobs
from receptionist.access import Caller
from receptionist.keys import DATA_READER, SETTINGS
from receptionist.queries import PublicQuery, page_answer, query_texts, read_query
from receptionist.views import export_view
from shared.contract import JobKind
from shared.errors import NotFound, ValidationFailed
from shared.kinds import kind_spec
from shared.kinds.data_export import CONTENT_TYPES, DataExportRequest, Query, Writer
from shared.scheduling import scheduling_of, submission_model
from shared.web import json_response, parse_model, read_model

#: How long a streamed export waits for its client to take the next bytes before it ends the stream: on
#: PostgreSQL a stream holds a pooled connection and its snapshot while it lasts, so clients that stop
#: reading would otherwise keep them for ever (and, as many as the pool, have every later export wait).
STALL_S = 60.0

#: Query parameters that are not filters.
_OPTIONS = ("resource", "format", "fields")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


async def post_export(request: web.Request) -> web.Response:
    """201 with the export's view; a repeated ``Idempotency-Key`` gets the first submission's (200)."""
    caller = jobs.check_submitter(request, JobKind.DATA_EXPORT)
    read_query(request, PublicQuery)
    export = await read_model(request, submission_model(DataExportRequest))
    status, job = await jobs.accept(request, kind_spec(JobKind.DATA_EXPORT), export, caller,
                                    scheduling=scheduling_of(export))
    logger.bind(job_id=job["id"], resource=str(export.resource), format=str(export.format)).info(
        "data export accepted")
    return json_response(export_view(job), status=status)


async def list_exports(request: web.Request) -> web.Response:
    """``GET /v1/exports/jobs``: the caller's export jobs, newest first, as ``GET /v1/exports/{job_id}``
    shows each (``GET /v1/exports`` itself is the streamed export)."""
    items, next_cursor = await jobs.own_jobs(request, JobKind.DATA_EXPORT)
    return page_answer(request, [export_view(job) for job in items], next_cursor)


async def get_export(request: web.Request) -> web.Response:
    """The caller's own export; anyone else's (operators' too) is a 404."""
    read_query(request, PublicQuery)
    job = await jobs.fetch_job(request)
    if job["kind"] != JobKind.DATA_EXPORT or not Caller.of(request).owns(job):
        raise NotFound(f"no export {job['id']}")
    return json_response(export_view(job))


def _query_request(request: web.Request) -> DataExportRequest:
    """The export a query string asks for: ``fields`` comma-separated, every other parameter a filter
    (``active=true``). As on every route, a parameter given twice or blank is a 400 naming it
    (:func:`query_texts`); which names are filters is the resource's to say, so the model refuses the others."""
    query = query_texts(request, dict.fromkeys(request.query, False))
    body: dict[str, Any] = {name: query.pop(name) for name in _OPTIONS if name in query}
    if "fields" in body:
        body["fields"] = [name.strip() for name in body["fields"].split(",") if name.strip()]
    body["filters"] = {name: _BOOLEANS.get(value.lower(), value) if name == "active" else value
                       for name, value in query.items()}
    try:
        return parse_model(DataExportRequest, body)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message, [_as_parameter(detail) for detail in exc.details]) from exc


def _as_parameter(detail: dict[str, str]) -> dict[str, str]:
    """A detail about the body :func:`_query_request` made, about the query parameter it came from: a
    filter's ``filters.role`` is the parameter ``role``."""
    return {"field": detail["field"].removeprefix("filters."), "message": detail["message"]}


def _drain(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


async def stream_export(request: web.Request) -> web.StreamResponse:
    """The matching rows as a file, streamed as they are read; needs the ``exporter`` permission."""
    jobs.check_submitter(request, JobKind.DATA_EXPORT)
    export = _query_request(request)
    query = Query.of(export)
    store = await request.app[DATA_READER].store()
    stalled = False

    async def send(data: bytes) -> None:
        nonlocal stalled
        try:
            async with asyncio.timeout(STALL_S):
                await resp.write(data)
        except TimeoutError:
            stalled = True
            raise

    resp = web.StreamResponse(headers={
        "Content-Type": CONTENT_TYPES[export.format],
        "Content-Disposition": f'attachment; filename="{export.resource}-export.{export.format}"',
    })
    await resp.prepare(request)
    buffer = io.BytesIO()
    writer = Writer(export.format, query.fields, buffer, escape_formulas=request.app[SETTINGS].csv_escape_formulas)
    writer.start()
    try:
        async with contextlib.aclosing(query.pages(store)) as pages:
            async for rows in pages:
                await asyncio.to_thread(writer.page, rows)
                await send(_drain(buffer))
        writer.end()
        await send(_drain(buffer))
    except TimeoutError:
        if not stalled:
            raise
        # The client took nothing for STALL_S: the store's connection is back in the pool (the pages were
        # closed); the connection is cut, so the client sees a body cut short, never one that looks whole.
        logger.bind(resource=str(export.resource), rows=writer.rows, stall_s=STALL_S).warning(
            "data export stream ended: its client took nothing for a while")
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    logger.bind(resource=str(export.resource), format=str(export.format), rows=writer.rows).info(
        "data export streamed")
    return resp


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/exports", stream_export)
    router.add_post("/v1/exports", post_export)
    router.add_get("/v1/exports/jobs", list_exports)
    router.add_get("/v1/exports/{job_id}", get_export)
