"""A handler's reports to the registry: what a kind's ``run`` may return, checked before it is reported,
and the requests the reports travel in.

A job's ``result`` is stored in the registry's row of the job and in each of its events, and travels in
the handler's batched reports: it must be a JSON object (or None, for no result) that JSON holds as it is
(and PostgreSQL's jsonb: no NUL character), and small. Anything else used to reach the registry in a batch
it refused as a whole (every report in it lost, each job handed back and run again at once, in a loop), or
was changed on the way (a NaN stored as ``null``). Now such a result fails the attempt, for good (the same
code returns it again), with an error naming what in it cannot be stored; a large output belongs in an
artifact (``ctx.write_artifact``).

The rest keeps a report one the registry takes: an error cut to :data:`MAX_ERROR_CHARS`, and reports
sent in requests of :data:`REPORTS_BYTES` at most (:func:`send_reports`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection
from typing import Any

import orjson
from pydantic import BaseModel

from shared.contract import MAX_ERROR_CHARS, NUL_MESSAGE
from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.kinds import PermanentFailure
from shared.web import dumps

#: A result's JSON at most: it is stored with the job and each of its events, and a handler's report of
#: up to a hundred jobs must stay well under the registry's 1 MiB request body.
MAX_RESULT_BYTES = 64 * 1024
#: A request of reports at most, in bytes: well under the registry's 1 MiB request body.
REPORTS_BYTES = 512 * 1024
#: What a report holds besides its result and its error, at most.
_REPORT_BYTES = 512
#: The registry's answers that refuse a report for what it says (unreadable, too large): sending it again
#: would not mend it. A 401 or 403 (a service token it does not take) is the deployment's fault, not the
#: report's: the job is handed back, as when the registry cannot be reached.
REJECTED = frozenset({400, 413, 415, 422})
#: Nesting orjson encodes at most.
_MAX_DEPTH = 254


class BadResult(PermanentFailure, ValueError):
    """The value ``run`` returned cannot be stored as the job's result."""


def encode_result(result: Any, written: Collection[str] = ()) -> orjson.Fragment | None:
    """``result`` as the registry will store it, encoded once (a fragment the report embeds as it is);
    raises :class:`BadResult` saying what cannot be stored and where (``result.a.0``).

    A result's ``artifact`` is the file ``GET /jobs/{id}/result`` serves: it must be one of ``written``,
    the files this attempt wrote, or a kind could hand out another job's file (or a key the artifact store
    refuses, a 500 for the client downloading it)."""
    if result is None:
        return None
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    if not isinstance(result, dict):
        raise BadResult(f"result: must be a JSON object (a dict) or None, not {type(result).__name__}")
    if "artifact" in result and (not isinstance(result["artifact"], str) or result["artifact"] not in written):
        raise BadResult(f"result.artifact: {result['artifact']!r:.100} is no file this attempt wrote; give what "
                        "ctx.write_artifact returns, or ctx.new_artifact's key")
    try:
        raw = dumps(result)
    except TypeError as exc:  # orjson.JSONEncodeError is one
        raise BadResult(_fault(result, "result", 0) or f"result: {exc}") from None
    # orjson writes NaN and the infinities as null, and PostgreSQL's jsonb cannot hold a NUL: look only then.
    if b"null" in raw or b"\\u0000" in raw:
        fault = _fault(result, "result", 0)
        if fault:
            raise BadResult(fault)
    if len(raw) > MAX_RESULT_BYTES:
        raise BadResult(f"result: {len(raw):,} bytes as JSON, more than the {MAX_RESULT_BYTES:,} a result may "
                        "hold; write a large output as an artifact (ctx.write_artifact)")
    return orjson.Fragment(raw)


def _fault(value: Any, path: str, depth: int) -> str | None:
    """The first thing in ``value`` that JSON cannot hold as it is, with its path; None if there is none."""
    if depth > _MAX_DEPTH:
        return f"{path}: nested deeper than {_MAX_DEPTH} levels"
    if isinstance(value, str):
        return f"{path}: {NUL_MESSAGE}" if "\x00" in value else None
    if value is None or isinstance(value, bool):
        return None
    if type(value) is float:
        return None if math.isfinite(value) else f"{path}: {value!r} is not a JSON number"
    if type(value) is int:
        return None if -(2**63) <= value < 2**64 else f"{path}: the integer is beyond 64 bits"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: the key {key!r} is not a string"
            if "\x00" in key:
                return f"{path}: the key {key!r} {NUL_MESSAGE}"
            if fault := _fault(item, f"{path}.{key}", depth + 1):
                return fault
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if fault := _fault(item, f"{path}.{i}", depth + 1):
                return fault
        return None
    if isinstance(value, BaseModel):
        return None
    try:
        orjson.dumps(value)
    except TypeError:
        return f"{path}: {type(value).__name__} is not a JSON type"
    return None


def by_size(items: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """``items`` in order, in chunks whose reports stay within :data:`REPORTS_BYTES`; one chunk when they
    fit, as they almost always do."""
    chunks: list[list[tuple[str, dict[str, Any]]]] = [[]]
    size = 0
    for item in items:
        result, error = item[1].get("result"), item[1].get("error")
        weight = (_REPORT_BYTES + (len(orjson.dumps(result)) if result is not None else 0)
                  + (len(error.encode()) if error else 0))
        if chunks[-1] and size + weight > REPORTS_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += weight
    return chunks


def cut_error(error: str) -> str:
    """``error`` as a report and a nack take it: a NUL written ``\\x00`` (PostgreSQL's text cannot hold
    one), and at most :data:`MAX_ERROR_CHARS`, the end cut and said so."""
    error = error.replace("\x00", "\\x00")
    if len(error) <= MAX_ERROR_CHARS:
        return error
    tail = f" ... ({len(error) - MAX_ERROR_CHARS + 100:,} more characters cut)"
    return error[:MAX_ERROR_CHARS - 100] + tail


def refusal(exc: UpstreamError) -> str:
    """What a registry's refusal says: its first detail, else its error."""
    body = exc.upstream_body if isinstance(exc.upstream_body, dict) else {}
    details = body.get("details") or []
    if details and isinstance(details[0], dict):
        return f"{details[0].get('field')}: {details[0].get('message')}"
    return str(body.get("error") or exc)


async def send_reports(registry: ServiceClient, items: list[tuple[str, dict[str, Any]]],
                       ) -> list[dict[str, Any] | UpstreamError]:
    """``POST /jobs/updates`` for a batch of reports (a job id and its update each), in as few requests as
    keep each body under :data:`REPORTS_BYTES`; each refused report becomes its own error, as the single
    ``PATCH`` would have raised it. Safe to retry: a repeated report is a replay. The answers are brief
    (state and attempt): the handler needs to know only that a report was taken.

    A request the registry refuses whole (:data:`REJECTED`: a report in it it cannot read) is sent again
    one report a request, so that only that report fails, not the jobs that shared its request."""
    outcomes: list[dict[str, Any] | UpstreamError] = []
    for chunk in by_size(items):
        try:
            outcomes += await _post(registry, chunk)
            continue
        except UpstreamError as exc:
            if len(chunk) == 1 or exc.upstream_status not in REJECTED:
                outcomes += [exc] * len(chunk)
                continue
        for one in await asyncio.gather(*(_post(registry, [item]) for item in chunk), return_exceptions=True):
            if isinstance(one, BaseException) and not isinstance(one, UpstreamError):
                raise one
            outcomes += one if isinstance(one, list) else [one]
    return outcomes


async def _post(registry: ServiceClient, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | UpstreamError]:
    _, data = await registry.call("POST", "/jobs/updates", json={
        "updates": [{"id": job_id, **update} for job_id, update in items], "answer": "brief"})
    return [r if r["status"] == 200 else UpstreamError("registry", r["status"], r) for r in data["results"]]
