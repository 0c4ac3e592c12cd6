"""The client's HTTP: one aiohttp session, JSON answers turned into typed errors, retries of what is safe
to retry, and server-sent event streams read event by event."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random
from yarl import URL

from shared.client.errors import Unavailable, Unreachable, error_for
from shared.client.models import Event

DEFAULT_URL = "http://127.0.0.1:8080"
#: The longest a stream may be silent: the server sends a keep-alive every 15 s.
STREAM_READ_S = 60.0
#: The longest wait before a retry, whatever ``Retry-After`` asks for.
MAX_RETRY_WAIT_S = 10.0


def default_url() -> str:
    return os.environ.get("CONVEYOR_URL") or DEFAULT_URL


def segment(value: object) -> str:
    """One path segment, percent-encoded: an id never reaches another route."""
    return quote(str(value), safe="")


def non_finite(value: Any, path: str = "") -> str | None:
    """The path (``payload.ratio``, ``payload.points.2``) of the first NaN or infinity in a JSON body, else
    None. JSON has no such numbers: orjson writes them as null, which a server reads as "not given" and
    replaces by its default, a value the caller never chose."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (found := non_finite(item, f"{path}.{key}" if path else str(key))) is not None:
            return found
    return None


class Transport:
    """Requests to one Conveyor gateway (or a receptionist, with the ``headers`` of an internal caller):
    ``url`` defaults to ``CONVEYOR_URL``, else ``DEFAULT_URL``; ``token`` to ``CONVEYOR_TOKEN`` (none: the
    calls go in as the anonymous user, where the gateway allows that; ``""``: no token whatever is set).

    ``retries``: how many more times a call that is safe to retry is sent after a connection failure, a
    timeout, a 502 or a 503, with exponential backoff and jitter (a ``Retry-After`` is honoured, up to
    ``MAX_RETRY_WAIT_S``).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, headers: dict[str, str] | None = None,
                 timeout_s: float = 30.0, retries: int = 3, retry_base_s: float = 0.2) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else os.environ.get("CONVEYOR_TOKEN") or None
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.retries = retries
        self._backoff = wait_exponential(multiplier=retry_base_s, max=MAX_RETRY_WAIT_S) + wait_random(0, retry_base_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()  # bodies come encoded (see :meth:`open`)
        return self._session

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {**self.headers, **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def target(self, path: str) -> URL:
        return URL(self.url + path, encoded=True)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        if asked is not None:
            return min(float(asked), MAX_RETRY_WAIT_S)
        return float(self._backoff(state))

    async def retrying(self, call: Any, *, retry: bool = True) -> Any:
        """``await call()``, again after an :class:`Unavailable` (no answer, 502, 503, 504) when ``retry``."""
        if not retry or self.retries <= 0:
            return await call()
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                                           retry=retry_if_exception_type(Unavailable), reraise=True):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover: reraise=True

    async def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                   headers: dict[str, str] | None = None, retry: bool = True) -> Any:
        """The decoded JSON answer of ``method path``; a :class:`ClientError` for an error answer or none."""
        async def once() -> Any:
            async with self.open(method, path, params=params, json=json, headers=headers) as resp:
                raw = await self._read(resp)
            return orjson.loads(raw) if raw else {}

        return await self.retrying(once, retry=retry)

    def open(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             headers: dict[str, str] | None = None, stream: bool = False) -> _Opened:
        """A context manager with the answer of ``method path`` once it is a 2xx (its body unread). A ``json``
        body holding a NaN or an infinity is a ValueError naming it, before anything is sent."""
        body = None if json is None else orjson.dumps(json)
        # orjson writes a NaN or an infinity as null: only a body with a null in it is walked for one (an
        # ECG's millions of samples are not, value by value).
        if body is not None and b"null" in body and (where := non_finite(json)) is not None:
            raise ValueError(f"{where or 'the body'} is not a finite number: JSON has no NaN or infinity "
                             "(it would go as null)")
        timeout = (aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=STREAM_READ_S)
                   if stream else aiohttp.ClientTimeout(total=self.timeout_s))
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        sent = self._headers(headers)
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        return _Opened(self, method, path, dict(params=clean, data=body, headers=sent, timeout=timeout))

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: BaseException) -> Unreachable:
        return Unreachable(f"cannot reach {self.url}: {str(exc) or type(exc).__name__}")

    async def stream(self, path: str, *, params: dict[str, Any] | None = None,
                     last_event_id: str | None = None) -> AsyncIterator[Event]:
        """The events of the server-sent event stream at ``path``, until the server ends it. A failure to
        open it is the answer's :class:`ClientError`; a stream cut midway is an :class:`Unreachable`."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        async with self.open("GET", path, params=params, headers=headers, stream=True) as resp:
            event_id: str | None = None
            topic, data = "message", []
            try:
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if not line:
                        if data:
                            yield Event(event_id, topic, orjson.loads("\n".join(data)))
                        topic, data = "message", []
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "id":
                        event_id = value
                    elif name == "event":
                        topic = value
                    elif name == "data":
                        data.append(value)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self.unreachable(exc) from exc


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class _Opened:
    def __init__(self, transport: Transport, method: str, path: str, kwargs: dict[str, Any]) -> None:
        self.transport = transport
        self.method = method
        self.path = path
        self.kwargs = kwargs
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        session = self.transport._session_now()
        try:
            self.resp = await session.request(self.method, self.transport.target(self.path), **self.kwargs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.transport.unreachable(exc) from exc
        if self.resp.status >= 400:
            raw = await self.transport._read(self.resp)
            self.resp.release()
            try:
                body: Any = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            raise error_for(self.resp.status, body, self.resp.headers)
        return self.resp

    async def __aexit__(self, *exc: object) -> None:
        if self.resp is not None:
            self.resp.release()

