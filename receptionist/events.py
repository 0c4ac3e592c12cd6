"""Server-sent events: the changes of the caller's jobs as they happen (``GET /events``), and one job's
changes until it ends (``GET /jobs/{job_id}/events``).

Every change of a job is one event in the registry, numbered by a global ``seq``. A stream shows each as
one or two SSE events, by topic (``?topic=``, repeated or comma-separated; none means all). Their ids are
unique in a stream: the last (or only) SSE event of a ``seq`` has the ``id`` ``seq``, one before it
``seq-1``, so that a client resuming from it gets the rest of that ``seq`` too:

- ``task.created``: a task was submitted, ``{"task_id", "user_id", "status", "description"}``;
- ``task.updated``: a task changed, ``{"task_id", "user_id", "status", "attempt", "error"}``; statuses are
  the task service's (``PENDING``, ``RUNNING``, ``SUCCESS``, ``FAILED``, ``CANCELLED``);
- ``job.updated``: any change of any job, tasks included,
  ``{"job_id", "kind", "owner", "state", "previous_state", "attempt", "progress"}``.

No event carries a payload or a result, with one exception for the owner: a task's ``description``
(``null`` for an operator watching another user's task) and its ``error`` (its class only, for such an
operator: :mod:`receptionist.redaction`). A user sees their own jobs' events; an operator
sees every job's.

A stream starts with what comes next (``GET /events``) or with the job's whole history (one job's stream);
``Last-Event-ID`` (what a browser's ``EventSource`` sends when it reconnects: an SSE id as above) or
``?after=`` (a ``seq``) resumes it after that event instead. A quiet stream gets a ``: keep-alive`` comment every ``event_keepalive_s``, so
that no proxy's read timeout cuts it (the gateway's is 60 s). A stream ends, cleanly, when its client goes
away, when the app stops (the client reconnects and resumes), when the registry cannot be reached, and for
one job's stream right after the job's last event when that is of a final state (a failed job an operator
redrove goes on, through its later attempts, to its next final state).

Each open stream long-polls the registry's event routes (``wait_s``), one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from receptionist.access import ANONYMOUS, Caller
from receptionist.jobs import fetch_job
from receptionist.keys import EVENT_STREAMS, REGISTRY, SETTINGS
from receptionist.queries import query_texts
from receptionist.redaction import redact_error
from receptionist.sse import HEADERS, KEEPALIVE, frame
from shared.api import TASK_STATUS, EventTopic
from shared.contract import TERMINAL_STATES, JobKind, JobState
from shared.errors import Forbidden, UpstreamError, ValidationFailed
from shared.logs import request_id_var
from shared.web import REQUEST_ID_HEADER, parse_query

LAST_EVENT_ID_HEADER = "Last-Event-ID"
#: How often a waiting stream looks whether its client is still there (a gone client shows only then, or
#: at the next write): its slot is free again this soon after.
CLIENT_CHECK_S = 0.25
#: The largest ``seq`` a store can hold (a 64-bit integer).
MAX_SEQ = 2**63 - 1
#: The most events one look at the registry asks for: a full page may have more after it.
PAGE_LIMIT = 1000
TASK_TOPICS = frozenset({EventTopic.TASK_CREATED, EventTopic.TASK_UPDATED})

#: One long poll of the registry: ``(after, wait_s, limit)`` to its page ``{"items", "last_seq"}``.
Poll = Callable[[int, float, int], Awaitable[dict[str, Any]]]


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    after: int | None = Field(default=None, ge=0, le=MAX_SEQ)
    last_event_id: str | None = Field(default=None, pattern=r"^[0-9]{1,19}(-[1-9])?$", alias=LAST_EVENT_ID_HEADER)
    topic: list[EventTopic] = Field(default_factory=list, max_length=len(EventTopic) * 4)

    @field_validator("last_event_id")
    @classmethod
    def _a_seq(cls, value: str | None) -> str | None:
        if value is not None and int(value.split("-", 1)[0]) > MAX_SEQ:
            raise ValueError(f"the seq is larger than {MAX_SEQ}")
        return value

    @property
    def resume(self) -> tuple[int, int] | None:
        """Where the client asked to resume, as ``(seq, SSE events of that seq already seen)`` (0: all of
        them): the header (a reconnecting ``EventSource``) wins over the URL."""
        if self.last_event_id is not None:
            seq, _, seen = self.last_event_id.partition("-")
            return int(seq), int(seen or 0)
        return None if self.after is None else (self.after, 0)

    @property
    def topics(self) -> frozenset[EventTopic]:
        return frozenset(self.topic) or frozenset(EventTopic)


def stream_query(request: web.Request) -> StreamQuery:
    """The stream's parameters: ``topic`` (repeated or comma-separated) and ``after``, nothing else (a
    400 naming an unknown or blank one), and the ``Last-Event-ID`` header."""
    data = query_texts(request, {"topic": True, "after": False})
    topics = [part.strip() for value in data.get("topic", []) for part in value.split(",")]
    if "" in topics:
        raise ValidationFailed("invalid request", [{"field": "topic", "message": "an empty topic"}])
    known = [str(topic) for topic in EventTopic]
    if unknown := [topic for topic in topics if topic not in known]:
        raise ValidationFailed("invalid request", [{"field": "topic", "message": (
            f"{unknown[0][:100]!r} is not a topic; the topics are {', '.join(known)}")}])
    data["topic"] = topics
    if LAST_EVENT_ID_HEADER in request.headers:
        data[LAST_EVENT_ID_HEADER] = request.headers[LAST_EVENT_ID_HEADER]
    return parse_query(StreamQuery, data)


def render(event: dict[str, Any], caller: Caller, topics: frozenset[EventTopic]) -> list[bytes]:
    """The SSE events of one registry event that ``caller`` may see, in ``topics``."""
    job = event["job"]
    owned = caller.owns(job)
    if not (owned or caller.is_operator):
        return []
    out: list[tuple[EventTopic, dict[str, Any]]] = []
    if event["kind"] == JobKind.TASK:
        status = str(TASK_STATUS[JobState(event["state"])])
        if event["type"] == "created" and EventTopic.TASK_CREATED in topics:
            description = (job.get("payload") or {}).get("description") if owned else None
            out.append((EventTopic.TASK_CREATED, {
                "task_id": event["job_id"], "user_id": event["owner"], "status": status,
                "description": description}))
        elif event["type"] == "updated" and EventTopic.TASK_UPDATED in topics:
            out.append((EventTopic.TASK_UPDATED, {
                "task_id": event["job_id"], "user_id": event["owner"], "status": status,
                "attempt": event["attempt"],
                "error": job.get("error") if owned else redact_error(job.get("error"))}))
    if EventTopic.JOB_UPDATED in topics:
        out.append((EventTopic.JOB_UPDATED, {
            "job_id": event["job_id"], "kind": event["kind"], "owner": event["owner"], "state": event["state"],
            "previous_state": event["previous_state"], "attempt": event["attempt"],
            "progress": job.get("progress")}))
    seq, last = event["seq"], len(out) - 1
    return [frame(str(seq) if i == last else f"{seq}-{i + 1}", topic, data) for i, (topic, data) in enumerate(out)]


def stream_identity(request: web.Request, caller: Caller) -> str:
    """Whose slots a stream takes: its user's; for the shared anonymous user, its client's address (the
    last ``X-Forwarded-For`` entry is the address the gateway saw, and only the gateway reaches us)."""
    if caller.owner != ANONYMOUS:
        return "user:" + caller.owner  # the stable id: a name can be reused by someone else
    forwarded = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
    return "addr:" + (forwarded or request.remote or "unknown")


def _registry_poll(request: web.Request, path: str, filters: dict[str, str]) -> Poll:
    app = request.app
    settings = app[SETTINGS]

    async def poll(after: int, wait_s: float, limit: int) -> dict[str, Any]:
        params = {**filters, "after": str(after), "wait_s": str(wait_s), "limit": str(limit)}
        _, page = await app[REGISTRY].get(path, params=params, timeout_s=wait_s + settings.http_timeout_s)
        return page

    return poll


async def all_events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: the changes of the caller's jobs (every job's, for operators), live."""
    caller = Caller.of(request)
    if not (caller.is_user or caller.is_operator):
        raise Forbidden("this needs the user or operator role")
    query = stream_query(request)
    filters = {}
    if not caller.is_operator:
        filters["owner"] = caller.owner
    if query.topics <= TASK_TOPICS:
        filters["kind"] = str(JobKind.TASK)
    return await _stream(request, _registry_poll(request, "/events", filters), caller, query, until_final=False,
                         final_already=False)


async def job_events(request: web.Request) -> web.StreamResponse:
    """``GET /jobs/{job_id}/events``: one job's changes (its owner's or an operator's), from its first one
    unless resumed, until the job reaches a final state."""
    job = await fetch_job(request)
    query = stream_query(request)
    if query.resume is None:
        query = query.model_copy(update={"after": 0})
    return await _stream(request, _registry_poll(request, f"/jobs/{job['id']}/events", {}), Caller.of(request),
                         query, until_final=True, final_already=JobState(job["state"]) in TERMINAL_STATES)


async def _stream(request: web.Request, poll: Poll, caller: Caller, query: StreamQuery, *, until_final: bool,
                  final_already: bool) -> web.StreamResponse:
    app = request.app
    with app[EVENT_STREAMS].hold(stream_identity(request, caller)):
        # The first look at the registry answers at once, before the headers: an unreachable registry is
        # still a plain 503 the client can read.
        resume, seen = query.resume, (0, 0)
        if resume is None:
            page = await poll(0, 0, 1)
            after, backlog = page["last_seq"], []
        else:
            # Part of a seq's SSE events seen: that seq again, without them.
            after = resume[0] - 1 if resume[1] and resume[0] else resume[0]
            seen = resume if after < resume[0] else (0, 0)
            backlog = (await poll(after, 0, PAGE_LIMIT))["items"]
        response = web.StreamResponse(headers={**HEADERS, REQUEST_ID_HEADER: request_id_var.get() or ""})
        await response.prepare(request)
        pump = _Pump(request, response, poll, caller, query.topics, after, until_final=until_final,
                     final_already=final_already, seen=seen)
        reason = "the client went away"
        try:
            reason = await pump.run(backlog)
            await response.write_eof()
        except ConnectionResetError:
            pass
        logger.bind(user=caller.username).debug("event stream of {} ended after {} events: {}", request.path,
                                                pump.sent, reason)
        return response


class _Pump:
    """Moves a stream's events from the registry to its client, one long poll at a time, with keep-alives
    in between, until there is a reason to stop."""

    def __init__(self, request: web.Request, response: web.StreamResponse, poll: Poll, caller: Caller,
                 topics: frozenset[EventTopic], after: int, *, until_final: bool, final_already: bool,
                 seen: tuple[int, int] = (0, 0)) -> None:
        self.request = request
        self.response = response
        self.poll = poll
        self.caller = caller
        self.topics = topics
        self.after = after
        #: ``(seq, n)``: the client had the first ``n`` SSE events of that seq already.
        self.seen = seen
        self.until_final = until_final
        self.final_already = final_already
        self.settings = request.app[SETTINGS]
        self.stopping = request.app[EVENT_STREAMS].stopping
        self.sent = 0
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()

    async def write(self, data: bytes) -> None:
        await self.response.write(data)
        self.last_write = self.loop.time()

    async def send(self, events: list[dict[str, Any]]) -> bool:
        """Send one page's events (one write: the SSE events of one ``seq`` go out together); True when the
        stream is over.

        One job's stream is over when the page's last event is of a final state and the page is not full:
        the job was over when the registry answered. A final event with more after it is not the end: an
        operator's redrive puts a failed job back to pending, and its later attempts follow. A redrive
        after the stream ended is the client's to resume (``Last-Event-ID``)."""
        chunks: list[bytes] = []
        over = self.final_already and not events
        for event in events:
            self.after = event["seq"]
            rendered = render(event, self.caller, self.topics)
            if self.seen[1] and event["seq"] == self.seen[0]:
                rendered = rendered[self.seen[1]:]
            chunks.extend(rendered)
            self.sent += len(rendered)
        if self.until_final and events:
            # What the job is now decides, not what it was when the stream began (redriven since, or not).
            self.final_already = events[-1]["state"] in TERMINAL_STATES
            over = self.final_already and len(events) < PAGE_LIMIT
        if chunks:
            await self.write(b"".join(chunks))
        return over

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def run(self, backlog: list[dict[str, Any]]) -> str:
        """Returns why the stream ends; raises :class:`ConnectionResetError` when a write finds the client gone."""
        if await self.send(backlog):
            return "the job is over"
        keepalive_s = self.settings.event_keepalive_s
        stopping = asyncio.ensure_future(self.stopping.wait())
        polling: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                if polling is None:
                    # A job known to be over has nothing more to wait for: look once more, then end.
                    wait_s = 0.0 if self.final_already else self.settings.event_poll_wait_s
                    polling = asyncio.ensure_future(self.poll(self.after, wait_s, PAGE_LIMIT))
                timeout_s = min(CLIENT_CHECK_S, self.last_write + keepalive_s - self.loop.time())
                done, _ = await asyncio.wait({polling, stopping}, timeout=max(timeout_s, 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return "the receptionist is stopping"
                if self.client_gone():
                    return "the client went away"
                if polling in done:
                    try:
                        page = polling.result()
                    except UpstreamError as exc:
                        logger.bind(user=self.caller.username).warning(
                            "event stream of {} ends: {}", self.request.path, exc)
                        return "the registry failed"
                    polling = None
                    if await self.send(page["items"]):
                        return "the job is over"
                elif self.loop.time() - self.last_write >= keepalive_s:
                    await self.write(KEEPALIVE)
        finally:
            for task in (polling, stopping):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                        await task


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/events", all_events)
    router.add_get("/jobs/{job_id}/events", job_events)


async def stop_streams(app: web.Application) -> None:
    """An ``on_shutdown`` hook: every open stream ends now, instead of holding up the shutdown."""
    app[EVENT_STREAMS].stop()
