"""The bulk data import API (:mod:`shared.kinds.data_import`): ``POST /v1/imports?resource=...`` takes a CSV
or NDJSON file, ``GET /v1/imports/{job_id}`` tells how the import goes, ``GET /v1/imports/{job_id}/errors``
streams its error report. Importing needs the ``importer`` permission (by ``RECEPTIONIST_KIND_PERMISSIONS``):
records keep no owner, so an import may overwrite anyone's.

``priority``, ``run_at`` and ``delay_s`` (:mod:`shared.scheduling`) are query parameters, as ``resource`` is.

A file comes as the ``file`` part of a multipart body and goes to the artifact store as it arrives (a
gigabyte is never held in memory: aiohttp's multipart reader reads the request stream, so the app's
``client_max_size`` does not apply to it; ``max_upload_bytes`` does). It is a streamed write of the
store (a partial file renamed once whole, or an S3 multipart upload completed once whole), committed
before the job is registered, so no handler reads half a file. Or the body
is JSON ``{"url": ...}`` and the handler fetches the file itself.

With an ``Idempotency-Key`` the job id is derived from the caller and the key (as for ECGs): a repeat names
the same upload and the same payload, and gets the first job; another file under the same key has
another SHA-256, which the registry refuses (409).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger
from pydantic import ConfigDict

from receptionist import jobs
from receptionist.access import Caller
from receptionist.downloads import send_artifact
from receptionist.expiry import expired
from receptionist.keys import ARTIFACTS, SETTINGS
from receptionist.queries import PublicQuery, page_answer, read_query
from receptionist.views import import_view
from shared.artifacts import ArtifactWriter, artifact_key
from shared.contract import JobKind, JobState
from shared.errors import BadRequest, Gone, NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.fetching import require_fetchable
from shared.ids import uuid7
from shared.kinds.data_import import FileFormat, Resource, UrlImport, format_of
from shared.scheduling import SchedulingQuery
from shared.web import json_response, read_model

#: Job ids of submissions with an ``Idempotency-Key`` are uuid5 names in this namespace.
IDEMPOTENT_IDS = uuid.UUID("0d6f3f63-58f4-4f7e-9a51-4c1f4f6e2b1a")
_CHUNK_BYTES = 256 * 1024


class ImportQuery(SchedulingQuery):
    """``POST /v1/imports``' query string: the resource and the scheduling fields, nothing else."""

    model_config = ConfigDict(extra="forbid", strict=False)

    resource: str | None = None  # :func:`_resource` tells what it may be


def _resource(request: web.Request) -> Resource:
    value = request.query.get("resource", "")
    try:
        return Resource(value)
    except ValueError:
        raise ValidationFailed("invalid request", [
            {"field": "resource", "message": "must be users, articles or comments"}]) from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge("file too large", [{"field": "file", "message": f"at most {limit} bytes"}])


def _unexpected(name: str | None, have_file: bool) -> BadRequest:
    details = [{"field": name or "body", "message": "unexpected part: the body is exactly one part, named file"}]
    if not have_file:
        details.append({"field": "file", "message": "a multipart part named file is required"})
    return BadRequest("one file part expected", details)


async def _store_part(part: BodyPartReader, out: ArtifactWriter, limit: int) -> tuple[str, int]:
    """Stream one part's content to ``out``: its SHA-256 and size."""
    digest = hashlib.sha256()
    while chunk := await part.read_chunk(_CHUNK_BYTES):
        if out.size + len(chunk) > limit:
            raise _too_large(limit)
        digest.update(chunk)
        await out.write(chunk)
    if out.size == 0:
        raise BadRequest("empty file", [{"field": "file", "message": "the file has no content"}])
    return digest.hexdigest(), out.size


async def _receive(request: web.Request, job_id: uuid.UUID) -> tuple[str, FileFormat, str, int, bool]:
    """Stream the ``file`` part into the artifact store: its key, format, SHA-256, size, and whether it was
    written now (False for a repeat whose upload is there already).

    The body is exactly one part, ``file``, and ends with its closing boundary: the upload is committed (it
    appears under its key) only once the whole body has been read and found so; anything else is a 400 and
    leaves nothing behind (a local partial file is removed, an S3 multipart upload aborted)."""
    app = request.app
    limit = app[SETTINGS].max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise _too_large(limit)
    out: ArtifactWriter | None = None
    try:
        reader = await request.multipart()
        received: tuple[str, FileFormat, str, int] | None = None
        while (part := await reader.next()) is not None:
            name = getattr(part, "name", None)
            if not part.headers:  # what follows a boundary that is not the closing one: nothing
                raise ValueError("the body ends before its closing boundary")
            if name != "file" or not isinstance(part, BodyPartReader):
                raise _unexpected(name, received is not None)
            if received is not None:
                raise BadRequest("one file part expected", [
                    {"field": "file", "message": "exactly one part named file; the body has more"}])
            fmt = format_of(part.filename, part.headers.get("Content-Type"))
            if fmt is None:
                raise UnsupportedMediaType("the file is neither CSV nor NDJSON", [
                    {"field": "file", "message": "name it .csv, .ndjson or .jsonl, or send it as text/csv or "
                                                 "application/x-ndjson"}])
            key = artifact_key(JobKind.DATA_IMPORT, job_id, 0, f"upload.{fmt}")
            out = app[ARTIFACTS].writer(key)
            received = (key, fmt, *await _store_part(part, out, limit))
        if received is None or out is None:
            raise BadRequest("no file", [{"field": "file", "message": "a multipart part named file is required"}])
        if not reader.at_eof():
            raise ValueError("the body ends before its closing boundary")
        key, fmt, digest, size = received
        written = not await app[ARTIFACTS].exists(key)
        if written:
            await out.commit()
        return key, fmt, digest, size, written
    except (ValueError, AssertionError, HttpProcessingError) as exc:  # aiohttp's words for a malformed body
        raise BadRequest("malformed multipart body", [{"field": "body", "message": str(exc)[:200]}]) from exc
    finally:
        if out is not None:
            await out.abort()  # nothing when it was committed


async def post_import(request: web.Request) -> web.Response:
    """201 with the import as ``GET /v1/imports/{job_id}`` shows it; a repeated ``Idempotency-Key`` gets the first submission's (200)."""
    app = request.app
    caller = jobs.check_submitter(request, JobKind.DATA_IMPORT)
    # The options are query parameters (a multipart body has no JSON for them), the scheduling ones too.
    scheduling = read_query(request, ImportQuery)
    resource = _resource(request)
    content_type = request.content_type
    if content_type not in ("multipart/form-data", "application/json"):
        raise UnsupportedMediaType("expected a file or a URL", [
            {"field": "Content-Type", "message": "multipart/form-data with a file part, or application/json "
                                                 f"with a url; not {content_type or 'empty'}"}])
    source = await read_model(request, UrlImport) if content_type == "application/json" else None
    if source is not None:
        require_fetchable(source.url, app[SETTINGS].fetch_allow)
    key = await jobs.admit(request, JobKind.DATA_IMPORT)
    job_id = uuid.uuid5(IDEMPOTENT_IDS, f"{caller.owner}\n{key}") if key is not None else uuid7()
    upload: str | None = None
    if source is not None:
        payload: dict[str, Any] = {"resource": str(resource), "url": source.url,
                                   "max_bytes": app[SETTINGS].max_upload_bytes}
    else:
        upload, fmt, digest, size, written = await _receive(request, job_id)
        payload = {"resource": str(resource), "format": str(fmt), "upload": upload, "upload_sha256": digest,
                   "size": size}
        if not written:
            upload = None  # a repeat's: a handler may be reading it
    try:
        status, job = await jobs.register(request, JobKind.DATA_IMPORT, payload, caller=caller,
                                          job_type=str(resource), job_id=job_id, idempotency_key=key,
                                          scheduling=scheduling)
    except Exception:
        if upload is not None:
            await app[ARTIFACTS].delete([upload])
        raise
    logger.bind(job_id=job["id"], resource=str(resource), bytes=payload.get("size")).info("data import accepted")
    return json_response(import_view(job), status=status)


async def _own_import(request: web.Request) -> dict[str, Any]:
    """The import named in the path, when it is the caller's; a 404 otherwise (operators included). Its
    routes take no query parameter."""
    read_query(request, PublicQuery)
    job = await jobs.fetch_job(request)
    if job["kind"] != JobKind.DATA_IMPORT or not Caller.of(request).owns(job):
        raise NotFound(f"no import {job['id']}")
    return job


async def list_imports(request: web.Request) -> web.Response:
    """``GET /v1/imports``: the caller's imports, newest first, as ``GET /v1/imports/{job_id}`` shows each."""
    items, next_cursor = await jobs.own_jobs(request, JobKind.DATA_IMPORT)
    return page_answer(request, [import_view(job) for job in items], next_cursor)


async def get_import(request: web.Request) -> web.Response:
    return json_response(import_view(await _own_import(request)))


async def get_errors(request: web.Request) -> web.StreamResponse:
    """The error report, streamed: NDJSON ``{line, reason}``, one rejected record a line."""
    job = await _own_import(request)
    report = (job.get("result") or {}).get("error_report")
    if job["state"] != JobState.FINISHED or not report:
        raise NotFound(f"import {job['id']} has no error report yet (it is {job['state']})")
    if expired(job, request.app[SETTINGS].artifact_ttl_s):
        raise Gone(f"the error report of import {job['id']} has expired",
                   [{"field": "job_id", "message": f"reports are kept {request.app[SETTINGS].artifact_ttl_s:g}s"}])
    return await send_artifact(
        request, request.app[ARTIFACTS], report, content_type="application/x-ndjson",
        filename=f"import-{job['id']}-errors.ndjson",
        missing=NotFound(f"the error report of import {job['id']} is missing", [
            {"field": "job_id", "message": "its file is not in the artifact store (deleted, or never written)"}]))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/imports", post_import)
    router.add_get("/v1/imports", list_imports)
    router.add_get("/v1/imports/{job_id}", get_import)
    router.add_get("/v1/imports/{job_id}/errors", get_errors)
