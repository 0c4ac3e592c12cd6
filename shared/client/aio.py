"""``AsyncClient``: Conveyor's public API from asyncio code.

    async with AsyncClient("http://127.0.0.1:8080", token=token) as client:
        job = await client.submit("export", {"bookId": "123", "type": "epub"})
        job = await client.wait(job, timeout=60)
        await client.result(job, "book.epub")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.client.errors import ClientError, Forbidden, NotFound, Unauthorized, ValidationError, WaitTimeout
from shared.client.models import TERMINAL_STATES, Event, Job
from shared.client.operators import Operators
from shared.client.transport import Transport, segment
from shared.ids import uuid7

#: ``on_update(job_id, state, progress)``: called by :meth:`AsyncClient.wait` as the job changes.
OnUpdate = Callable[[str, str, float], None]
#: Errors that no retry, stream or poll can mend: ``wait`` and ``events`` raise them at once.
PERMANENT = (NotFound, Unauthorized, Forbidden, ValidationError)


def _id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else str(job)


def _check_limit(limit: int | None) -> None:
    """Refuse a limit below 1: the first page read would still yield a job, an answer not asked for."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None: no limit), not {limit!r}")


class AsyncClient(Operators):
    """A client of one Conveyor gateway. ``token`` is a user's (``login`` gets one); without it the calls go
    in as the shared anonymous user, where the gateway allows that.

    Every call that is safe to repeat is retried on a connection failure, a timeout, a 502 or a 503
    (``retries`` more times, with backoff): reads, cancels, and submissions, which always carry an
    ``Idempotency-Key`` (made here when the caller gives none), so that a retry returns the job the first
    try made instead of making a second one.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0,
                 retries: int = 3, headers: dict[str, str] | None = None) -> None:
        self.http = Transport(url, token, headers=headers, timeout_s=timeout_s, retries=retries)

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def token(self) -> str | None:
        return self.http.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.http.token = value

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                   retry: bool | None = None) -> Any:
        """The JSON answer of any route the client has no method for (``/users`` for admins...). Retried
        like the others when ``retry``: by default, reads only."""
        return await self.http.call(method, path, params=params, json=json,
                                    retry=method in ("GET", "HEAD") if retry is None else retry)

    async def login(self, username: str, password: str) -> str:
        """A token for ``username`` from the gateway (``POST /auth/token``); the client uses it from now on."""
        answer = await self.http.call("POST", "/auth/token", json={"username": username, "password": password})
        self.token = str(answer["access_token"])
        return self.token

    async def submit(self, kind: str, payload: dict[str, Any], *, priority: int | None = None,
                     run_at: datetime | str | None = None, delay_s: float | None = None,
                     idempotency_key: str | None = None) -> Job:
        """Submit a job of ``kind`` (``POST /jobs``): a plugin's or a built-in one (``task``, ``export``,
        ``data_export`` ...; ``ecg`` and ``data_import``, which carry signals or a file, come only by their own
        routes: a :class:`ValidationError` naming ``kind``). ``run_at`` or ``delay_s`` hold it back,
        ``priority`` (-100..100) puts it ahead. A repeated ``idempotency_key`` returns the job it made first."""
        body: dict[str, Any] = {"kind": kind, "payload": payload}
        if priority is not None:
            body["priority"] = priority
        if run_at is not None:
            body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
        if delay_s is not None:
            body["delay_s"] = delay_s
        # A key given is sent as given, even "": the server refuses a malformed one, rather than the caller's
        # key being silently swapped for one that protects nothing they could repeat.
        key = f"client-{uuid7()}" if idempotency_key is None else idempotency_key
        return Job.model_validate(await self.http.call("POST", "/jobs", json=body,
                                                       headers={"Idempotency-Key": key}))

    async def get(self, job: Job | str) -> Job:
        return Job.model_validate(await self.http.call("GET", f"/jobs/{segment(_id(job))}"))

    async def cancel(self, job: Job | str) -> Job:
        """Cancel a job: a pending one is cancelled at once, a running one is flagged (``cancel_requested``)
        and stops at its handler's next heartbeat. A finished or failed job is a :class:`Conflict`."""
        return Job.model_validate(await self.http.call("DELETE", f"/jobs/{segment(_id(job))}"))

    async def list(self, *, kind: str | None = None, state: str | None = None, owner: str | None = None,
                   limit: int | None = None, page_size: int = 100) -> AsyncIterator[Job]:
        """The caller's jobs (an operator's: everyone's), newest first, ``limit`` at most, read a page at a
        time by following ``next_cursor``. A ``limit`` below 1 is a ValueError."""
        _check_limit(limit)
        seen = 0
        async for item in self.items("/jobs", {"kind": kind, "state": state, "owner": owner}, page_size=page_size):
            if owner is not None and item.get("owner") != owner:
                continue  # a server that does not filter by owner yet: never show another's as theirs
            yield Job.model_validate(item)
            seen += 1
            if limit is not None and seen >= limit:
                return

    async def items(self, path: str, params: dict[str, Any] | None = None, *, limit: int | None = None,
                    page_size: int | None = 100) -> AsyncIterator[dict[str, Any]]:
        """The items of any list route (``{items, next_cursor}``), page after page (``page_size`` None:
        the route's own page size). A ``limit`` below 1 is a ValueError."""
        _check_limit(limit)
        cursor: str | None = None
        seen = 0
        while True:
            size = page_size if limit is None or page_size is None else max(1, min(page_size, limit - seen))
            page = await self.http.call("GET", path, params={**(params or {}), "limit": size, "cursor": cursor})
            for item in page.get("items") or []:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def result(self, job: Job | str, path: str | Path) -> Path:
        """Download the job's result to ``path`` (a directory: under the file's own name), streamed: it is
        never held in memory. The file appears whole or not at all."""
        target = Path(path)

        async def download() -> Path:
            async with self.http.open("GET", f"/jobs/{segment(_id(job))}/result") as resp:
                final = target
                if target.is_dir():
                    name = resp.content_disposition.filename if resp.content_disposition else None
                    final = target / Path(name or _id(job)).name
                partial = final.with_name(f".{final.name}.partial")
                try:
                    with partial.open("wb") as out:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            out.write(chunk)
                    partial.replace(final)
                except BaseException:
                    partial.unlink(missing_ok=True)
                    raise
                return final

        return await self.http.retrying(download)

    async def wait(self, job: Job | str, timeout: float | None = None, *, on_update: OnUpdate | None = None,
                   poll_s: float = 1.0) -> Job:
        """The job once it has ended (finished, failed or cancelled). It follows the job's event stream
        (``GET /jobs/{id}/events``), resuming it after the last event seen if it ends early, and polls
        ``GET /jobs/{id}`` instead when the stream cannot be had. :class:`WaitTimeout` after ``timeout`` s."""
        job_id = _id(job)
        last: Job | None = job if isinstance(job, Job) else None
        try:
            async with asyncio.timeout(timeout):
                last = await self.get(job_id)
                if last.done:
                    return last
                try:
                    await self._follow(job_id, on_update)
                except PERMANENT:
                    raise
                except ClientError:
                    pass  # no stream to be had (too many open, none through this proxy): poll instead
                while True:
                    last = await self.get(job_id)
                    if on_update is not None:
                        on_update(job_id, last.state, last.progress)
                    if last.done:
                        return last
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            if timeout is None:
                raise
            state = last.state if last is not None else "unknown"
            raise WaitTimeout(f"job {job_id} has not ended after {timeout:g}s (it is {state})", last) from None

    async def _follow(self, job_id: str, on_update: OnUpdate | None) -> None:
        """Read the job's stream until it ends after a final state; resume it after the last event seen when
        the server ends it sooner (a receptionist stopping), at most a few times without news. A final
        state with more after it is not the end: a redriven job's history has its first failure in it."""
        last_id: str | None = None
        quiet = 0
        ended = False
        while quiet < 3:
            news = False
            async for event in self.http.stream(f"/jobs/{segment(job_id)}/events", last_event_id=last_id):
                last_id, news = event.id or last_id, True
                if event.topic != "job.updated":
                    continue
                state = str(event.data.get("state"))
                if on_update is not None:
                    on_update(job_id, state, float(event.data.get("progress") or 0.0))
                ended = state in TERMINAL_STATES
            if ended:
                return
            quiet = 0 if news else quiet + 1
        raise ClientError(f"the event stream of job {job_id} keeps ending without news")

    async def events(self, *, topics: list[str] | None = None, last_event_id: str | None = None,
                     reconnect_s: float = 1.0) -> AsyncIterator[Event]:
        """The changes of the caller's jobs (an operator's: every job's) as they happen (``GET /events``),
        for as long as the caller iterates. A stream that ends or breaks is opened again after the last
        event seen (``Last-Event-ID``), so none is skipped; start after ``last_event_id`` to resume."""
        params = {"topic": ",".join(topics)} if topics else None
        delay_s = reconnect_s
        while True:
            try:
                async for event in self.http.stream("/events", params=params, last_event_id=last_event_id):
                    last_event_id, delay_s = event.id or last_event_id, reconnect_s
                    yield event
            except PERMANENT:
                raise
            except ClientError as exc:
                wait_s = getattr(exc, "retry_after_s", None) or delay_s
                delay_s = min(delay_s * 2, 30.0)
                await asyncio.sleep(wait_s)

    async def history(self, job: Job | str, *, idle_s: float = 1.0) -> list[Event]:
        """The job's changes so far: its event stream read until it ends (a job that has ended) or has been
        quiet for ``idle_s`` (one that has not)."""
        events: list[Event] = []
        stream = self.http.stream(f"/jobs/{segment(_id(job))}/events")
        try:
            while True:
                try:
                    events.append(await asyncio.wait_for(anext(stream), idle_s))
                except (StopAsyncIteration, TimeoutError):
                    return events
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def logs_of(self, job: Job | str, *, q: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """A job's log lines, newest first (its owner's, or an operator's, redacted); ``q``: only those whose
        message holds it."""
        params: dict[str, Any] = {"limit": limit, **({"q": q} if q else {})}
        answer = await self.http.call("GET", f"/jobs/{segment(_id(job))}/logs", params=params)
        return list(answer.get("items") or [])
