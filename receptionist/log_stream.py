"""``GET /logs/stream``: every service's new log lines as server-sent events, for operators, with the filters
of ``GET /logs`` (``service``, ``level``, ``min_level``, ``job_id``, ``request_id``, ``q``).

Each line is one ``log`` event (the line as ``GET /logs`` shows it to an operator: redacted) whose ``id`` is
the sequence number the logging service gave the line as it arrived. ``Last-Event-ID`` (an ``EventSource``
reconnecting) starts the stream with the lines that arrived after that one, whatever their times: none is
sent twice, none passed over. ``?after=`` (a time: the newest line a page already shows) starts it with the
lines whose time is after that; without either, it starts with what comes next. An id greater than any the
logging service gave (one from before sequence numbers, which was a time, or from before a memory store
started afresh) is taken as a time; a logging service that numbers afresh while a stream is open (its
memory store restarted) has every line it holds then sent. A start sends ``log_stream_lines`` lines at
most, the newest.

The logging service has no push: one follower per filter (:class:`LogFollowers`) asks it once every
``log_stream_tick_s`` for the lines after the last it read, and sends them to every stream of that filter,
however many watch. A tick reads ``log_stream_lines`` lines at most: when more arrived, the older ones
are passed over, and a ``skipped`` event (``{"before": time}``: the time of the first line sent after
them) says so. A stream is one of the receptionist's event streams (the same caps, per caller and in all,
as :mod:`receptionist.events`), gets a keep-alive when quiet, and ends when its client is too slow to
take the lines, or when the app stops.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import orjson
from aiohttp import web
from loguru import logger
from pydantic import Field

from receptionist.access import Caller
from receptionist.events import CLIENT_CHECK_S, LAST_EVENT_ID_HEADER, stream_identity
from receptionist.keys import EVENT_STREAMS, LOG_FOLLOWERS, LOGS, SETTINGS
from receptionist.log_followers import Arrived, Line, fetch_lines, time_us
from receptionist.operators import LOG_TEXT_MAX, NO_NUL, LogLevel
from receptionist.queries import PublicQuery, read_query
from receptionist.redaction import redact_log_line
from receptionist.relay import relay
from receptionist.sse import HEADERS, KEEPALIVE
from shared.api import Role
from shared.errors import Unavailable, UpstreamError
from shared.http import ServiceClient
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


def _frames(lines: list[Line], skipped: bool = False) -> bytes:
    chunk = b""
    if skipped and lines:  # lines that arrived before these were passed over
        chunk += b"event: skipped\ndata: %s\n\n" % orjson.dumps({"before": lines[0]["timestamp"]})
    return chunk + b"".join(
        b"id: %d\nevent: log\ndata: %s\n\n" % (line["seq"], orjson.dumps(redact_log_line(
            {key: value for key, value in line.items() if key != "seq"}))) for line in lines)


async def _first_lines(logs: ServiceClient, filters: dict[str, str], query: LogStreamQuery, limit: int) -> Arrived:
    """The lines a stream starts with (see the module's docstring), and the sequence number they reach."""
    if query.last_event_id:
        after_seq = int(query.last_event_id)
        got = await fetch_lines(logs, filters, after_seq, limit)
        if after_seq <= got.last_seq:
            return got
        return await fetch_lines(logs, filters, 0, limit, since_us=after_seq + 1)
    if query.after:
        return await fetch_lines(logs, filters, 0, limit, since_us=time_us(query.after.isoformat()) + 1)
    got = await fetch_lines(logs, {}, 0, 1)  # only to learn where "next" starts
    return Arrived([], False, got.last_seq)


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
    limit = settings.log_stream_lines
    with app[EVENT_STREAMS].hold(stream_identity(request, caller)), app[LOG_FOLLOWERS].watch(
            logs, filters, tick_s=settings.log_stream_tick_s, lines=limit) as watch:
        # Read before the headers go out: an unreachable logging service is still a plain 503. The follower
        # sends every line after where it reads on from; when that is past what this stream read (it ticked
        # meanwhile), the lines between are read here.
        try:
            first = await _first_lines(logs, filters, query, limit)
            backlog, skipped, after_seq = first.lines, first.skipped, first.last_seq
            follower_seq = watch.start(after_seq)
            if follower_seq > after_seq:
                gap = await fetch_lines(logs, filters, after_seq, limit)
                backlog, skipped = backlog + gap.lines, skipped or gap.skipped
                after_seq = max(after_seq, gap.last_seq)
        except UpstreamError as exc:
            raise relay(exc) from exc
        after_seq = max([after_seq, *(line["seq"] for line in backlog)])
        response = web.StreamResponse(headers={**HEADERS, REQUEST_ID_HEADER: request_id_var.get() or ""})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        stopping = app[EVENT_STREAMS].stopping
        reason, count = "the client went away", len(backlog)
        try:
            if backlog:
                await response.write(_frames(backlog, skipped))
            last_write = loop.time()
            while True:
                if stopping.is_set():
                    reason = "the receptionist is stopping"
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                try:
                    batch = await asyncio.wait_for(watch.queue.get(), CLIENT_CHECK_S)
                except TimeoutError:
                    if loop.time() - last_write >= settings.event_keepalive_s:
                        await response.write(KEEPALIVE)
                        last_write = loop.time()
                    continue
                if batch is None:
                    reason = "the client is too slow"
                    break
                lines, passed_over, restarted = batch
                if restarted:
                    after_seq = 0
                # The follower's first ticks may repeat lines this stream read itself.
                lines = [line for line in lines if line["seq"] > after_seq]
                if not lines:
                    continue
                after_seq = lines[-1]["seq"]
                count += len(lines)
                await response.write(_frames(lines, passed_over))
                last_write = loop.time()
            await response.write_eof()
        except ConnectionResetError:
            pass
        logger.bind(user=caller.username).debug("log stream ended after {} lines: {}", count, reason)
        return response
