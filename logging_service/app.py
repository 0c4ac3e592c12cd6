"""The logging service's HTTP API: ``POST /logs`` takes a batch of lines, ``GET /logs`` queries them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from aiohttp import web
from loguru import logger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from logging_service.settings import Settings
from logging_service.sink import StoreSink
from logging_service.store import NUL, OUT_OF_CALENDAR, LogFilter, LogStore, faults, in_calendar, store_from_url, to_us
from shared.contract import LogRecord, utcnow
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.logs import LogLevel
from shared.web import create_service_app, json_response, query_model, read_json, validation_details

SERVICE = "logging_service"


@dataclass
class Counters:
    batches_received: int = 0
    records_accepted: int = 0
    records_rejected: int = 0


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", LogStore)
COUNTERS = web.AppKey("counters", Counters)
OWN_LOGS = web.AppKey("own_logs", StoreSink)


_SEVERITY = list(LogLevel)
_MAX_LIMIT = 5000
#: Field details one refused batch reports at most; the first ones are enough to fix a client.
_MAX_DETAILS = 100

_lower = BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)


def _no_nul(value: str) -> str:
    # No stored record holds one (POST /logs refuses them), and PostgreSQL could not even compare with it.
    if "\x00" in value:
        raise ValueError(NUL)
    return value


def _calendar(value: datetime) -> datetime:
    if not in_calendar(value):
        raise ValueError(OUT_OF_CALENDAR)
    return value


_Text = Annotated[str, AfterValidator(_no_nul)]
_Time = Annotated[datetime, AfterValidator(_calendar)]
_BATCH = TypeAdapter(list[LogRecord])


class LogQuery(BaseModel):
    """The query string of ``GET /logs``; an unknown parameter is refused rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    service: _Text | None = Field(default=None, min_length=1, max_length=100)
    level: Annotated[_Text, StringConstraints(to_lower=True, min_length=1, max_length=20)] | None = None
    min_level: Annotated[LogLevel, _lower] | None = None
    job_id: _Text | None = Field(default=None, min_length=1, max_length=200)
    request_id: _Text | None = Field(default=None, min_length=1, max_length=200)
    since: _Time | None = None
    until: _Time | None = None
    q: _Text | None = Field(default=None, min_length=1, max_length=200,
                            description="A substring of the message, in any case")
    limit: int = Field(default=100, ge=1, le=_MAX_LIMIT)
    after_seq: int | None = Field(default=None, ge=0, le=2**63 - 1,
                                  description="Only the lines that arrived after this sequence number")

    def to_filter(self) -> LogFilter:
        levels: frozenset[str] | None = None
        if self.level is not None:
            levels = frozenset({self.level})
        if self.min_level is not None:
            at_least = frozenset(_SEVERITY[_SEVERITY.index(self.min_level):])
            levels = at_least if levels is None else levels & at_least
        return LogFilter(service=self.service, levels=levels, job_id=self.job_id, request_id=self.request_id,
                         since=self.since, until=self.until, text=self.q, limit=self.limit)


async def post_logs(request: web.Request) -> web.Response:
    """Store a batch: a JSON array of log records, or ``{"records": [...]}``. All or nothing: 202
    ``{"accepted": n}``, or 400 naming each bad field as ``index.field``, including values no store can
    keep (see :func:`logging_service.store.faults`), refused on every backend alike."""
    body = await read_json(request)
    raw = body.get("records") if isinstance(body, dict) else body
    if not isinstance(raw, list):
        raise ValidationFailed("expected a batch of log records",
                               [{"field": "body", "message": 'must be an array of records or {"records": [...]}'}])
    counters = request.app[COUNTERS]
    max_batch = request.app[SETTINGS].max_batch
    if len(raw) > max_batch:
        counters.records_rejected += len(raw)
        raise PayloadTooLarge("batch too large",
                              [{"field": "body", "message": f"at most {max_batch} records a batch, got {len(raw)}"}])
    try:
        records = _BATCH.validate_python(raw)
    except ValidationError as exc:
        counters.records_rejected += len(raw)
        raise ValidationFailed("invalid log records", validation_details(exc)[:_MAX_DETAILS]) from exc
    unstorable = [{"field": f"{i}.{field}", "message": reason}
                  for i, r in enumerate(records) for field, reason in faults(r)]
    if unstorable:
        counters.records_rejected += len(raw)
        raise ValidationFailed("invalid log records", unstorable[:_MAX_DETAILS])
    records = [r if r.level.islower() else r.model_copy(update={"level": r.level.lower()}) for r in records]
    await request.app[STORE].append(records)
    counters.batches_received += 1
    counters.records_accepted += len(records)
    return json_response({"accepted": len(records)}, status=202)


async def get_logs(request: web.Request) -> web.Response:
    """Records matching the query, newest first: ``{"items": [...]}``. With ``after_seq``, the records that
    arrived after that sequence number, newest arrival first, each with its ``seq``, and ``last_seq``: the
    greatest sequence number given so far (see :meth:`logging_service.store.LogStore.arrivals`)."""
    query = query_model(request, LogQuery)
    if query.since is not None and query.until is not None and to_us(query.since) > to_us(query.until):
        raise ValidationFailed("invalid query", [{"field": "since", "message": "must not be after until"}])
    if query.after_seq is not None:
        arrived = await request.app[STORE].arrivals(query.to_filter(), query.after_seq)
        return json_response({"items": [{**record.model_dump(mode="json"), "seq": seq}
                                        for seq, record in arrived.records], "last_seq": arrived.last_seq})
    items = await request.app[STORE].query(query.to_filter())
    return json_response({"items": items})


async def health(app: web.Application) -> dict[str, Any]:
    await app[STORE].ping()
    return {"store": "ok"}


async def status(app: web.Application) -> dict[str, Any]:
    return {"records_stored": await app[STORE].count(), **asdict(app[COUNTERS]),
            "own_logs": app[OWN_LOGS].stats()}


async def _open_store(app: web.Application) -> AsyncIterator[None]:
    store = store_from_url(app[SETTINGS].store_url)
    await store.open()
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _store_own_logs(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    own = StoreSink(app[STORE], settings.instance_name(SERVICE), level=settings.log_level)
    app[OWN_LOGS] = own
    async with own.running():
        yield


async def _sweep(store: LogStore, retention_days: float, retention_rows: int) -> None:
    """One retention pass: records older than ``retention_days``, then all but the newest
    ``retention_rows`` (a limit of 0 is not applied)."""
    if retention_days:
        cutoff = utcnow() - timedelta(days=retention_days)
        deleted = await store.delete_before(cutoff)
        if deleted:
            logger.info("retention: deleted {} records older than {}", deleted, cutoff.isoformat())
    if retention_rows:
        deleted = await store.keep_newest(retention_rows)
        if deleted:
            logger.info("retention: deleted {} records beyond the newest {}", deleted, retention_rows)


async def _retention_loop(store: LogStore, settings: Settings) -> None:
    while True:
        try:
            await _sweep(store, settings.retention_days, settings.retention_rows)
        except Exception:
            logger.exception("retention sweep failed")
        await asyncio.sleep(settings.retention_check_s)


async def _retention(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    task = asyncio.create_task(_retention_loop(app[STORE], settings), name="log-retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(settings: Settings) -> web.Application:
    # This service stores its own lines directly (see logging_service.sink); shipping them over HTTP to
    # itself would turn every line into a request that may log again.
    app = create_service_app(SERVICE, settings.model_copy(update={"log_url": ""}), health=health, status=status,
                             client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[COUNTERS] = Counters()
    app.cleanup_ctx.extend([_open_store, _store_own_logs, _retention])
    app.router.add_post("/logs", post_logs)
    app.router.add_get("/logs", get_logs)
    return app
