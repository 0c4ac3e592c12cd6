"""``GET /logs/stream``: every service's new log lines as server-sent events, for operators, with the filters
of ``GET /logs`` (``service``, ``level``, ``min_level``, ``job_id``, ``request_id``, ``q``).

Each line is one ``log`` event (the line as ``GET /logs`` shows it to an operator: redacted) whose ``id`` is
its time in microseconds since 1970. ``Last-Event-ID`` (an ``EventSource`` reconnecting), or ``?after=`` (a
time: the newest line a page already shows), starts the stream with the lines after that time, at most
``log_stream_lines`` of them; without either, it starts with what comes next.

The logging service has no push: one follower per filter (:class:`LogFollowers`) asks it once every
``log_stream_tick_s`` for the lines since ``log_stream_lookback_s`` before the newest it has seen, because
services ship their lines in batches, a line may arrive after a later one from another service. A line it
has not sent yet goes to every stream of that filter, however many watch. A tick reads
``log_stream_lines`` lines at most: when every one of them is new, older new lines may have been passed
over, and a ``skipped`` event (``{"before": time}``) says so. A stream is one of the receptionist's event
streams (the same caps, per caller and in all, as :mod:`receptionist.events`), gets a keep-alive when
quiet, and ends when its client is too slow to take the lines, or when the app stops.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import orjson
from aiohttp import web
from loguru import logger
from pydantic import Field

from receptionist.access import Caller
from receptionist.events import CLIENT_CHECK_S, LAST_EVENT_ID_HEADER, stream_identity
from receptionist.keys import EVENT_STREAMS, LOG_FOLLOWERS, LOGS, SETTINGS
from receptionist.log_followers import Line, fetch_lines, line_key, time_us
from receptionist.operators import LOG_TEXT_MAX, NO_NUL, LogLevel
from receptionist.queries import PublicQuery, read_query
from receptionist.redaction import redact_log_line
from receptionist.relay import relay
from receptionist.sse import HEADERS, KEEPALIVE
from shared.api import Role
from shared.errors import Unavailable, UpstreamError
from shared.logs import request_id_var
from shared.web import REQUEST_ID_HEADER


class LogStreamQuery(PublicQuery):
    """``GET /logs/stream``: ``GET /logs``'s filters, without paging, and where to resume."""

    service: str | None = Field(default=None, max_length=100)
    level: LogLevel | None = None
    min_level: LogLevel | None = None
    job_id: uuid.UUID | None = None
    request_id: str | None = Field(default=None, max_length=200)
    q: str | None = Field(default=None, min_length=1, max_length=LOG_TEXT_MAX, pattern=NO_NUL,
                          description="A substring of the message, in any case")
    after: datetime | None = Field(default=None, description="Start with the lines after this time")
    last_event_id: str | None = Field(default=None, alias=LAST_EVENT_ID_HEADER, pattern=r"^[0-9]{1,17}$")


def _frames(lines: list[Line]) -> bytes:
    return b"".join(b"id: %d\nevent: log\ndata: %s\n\n" % (time_us(line["timestamp"]),
                                                            orjson.dumps(redact_log_line(line))) for line in lines)


async def log_stream(request: web.Request) -> web.StreamResponse:
    """``GET /logs/stream``: see the module's docstring."""
    caller = Caller.of(request)
    caller.require(Role.OPERATOR)
    header = request.headers.get(LAST_EVENT_ID_HEADER)
    query = read_query(request, LogStreamQuery, extra={LAST_EVENT_ID_HEADER: header} if header is not None else None)
    app = request.app
    logs, settings = app[LOGS], app[SETTINGS]
    if logs is None:
        raise Unavailable("no logging service is configured (RECEPTIONIST_LOGGING_URL)")
    filters = {k: str(v) for k, v in query.model_dump(exclude_none=True, exclude={"after", "last_event_id"}).items()}
    resume_us = int(query.last_event_id) if query.last_event_id else (
        time_us(query.after.isoformat()) if query.after else None)
    with app[EVENT_STREAMS].hold(stream_identity(request, caller)), app[LOG_FOLLOWERS].watch(
            logs, filters, tick_s=settings.log_stream_tick_s, lookback_s=settings.log_stream_lookback_s,
            lines=settings.log_stream_lines) as queue:
        # Read before the headers go out: an unreachable logging service is still a plain 503. Without a
        # resume point, the lines there already (of the follower's lookback) are not this stream's.
        try:
            if resume_us is None:
                lookback_us = int(settings.log_stream_lookback_s * 1_000_000)
                now_us = time_us(datetime.now(timezone.utc).isoformat())
                seen = await fetch_lines(logs, filters, now_us - lookback_us, settings.log_stream_lines)
                backlog = []
            else:
                seen = backlog = await fetch_lines(logs, filters, resume_us + 1, settings.log_stream_lines)
        except UpstreamError as exc:
            raise relay(exc) from exc
        sent = {line_key(line) for line in seen}
        response = web.StreamResponse(headers={**HEADERS, REQUEST_ID_HEADER: request_id_var.get() or ""})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        stopping = app[EVENT_STREAMS].stopping
        reason, count = "the client went away", len(backlog)
        try:
            if backlog:
                await response.write(_frames(backlog))
            last_write = loop.time()
            while True:
                if stopping.is_set():
                    reason = "the receptionist is stopping"
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                try:
                    batch = await asyncio.wait_for(queue.get(), CLIENT_CHECK_S)
                except TimeoutError:
                    if loop.time() - last_write >= settings.event_keepalive_s:
                        await response.write(KEEPALIVE)
                        last_write = loop.time()
                    continue
                if batch is None:
                    reason = "the client is too slow"
                    break
                lines, skipped = batch
                # A follower's first ticks may repeat lines this client has had already.
                lines = [line for line in lines if line_key(line) not in sent
                         and (resume_us is None or time_us(line["timestamp"]) > resume_us)]
                if not lines:
                    continue
                chunk = b""
                if skipped:  # lines older than these were passed over
                    chunk += b"event: skipped\ndata: %s\n\n" % orjson.dumps({"before": skipped})
                chunk += _frames(lines)
                count += len(lines)
                await response.write(chunk)
                last_write = loop.time()
            await response.write_eof()
        except ConnectionResetError:
            pass
        logger.bind(user=caller.username).debug("log stream ended after {} lines: {}", count, reason)
        return response
