"""Calling another Conveyor service: JSON in and out, the request id and service token passed on, and
retries (exponential backoff with jitter) only where a retry is safe.

A path that carries a value from a client (a username, a job id, a queue name) is built with :func:`path`,
which percent-encodes each segment: a name like ``alice?x=1`` or ``../users`` stays one segment of the
path it was meant for and cannot add a query or climb to another route. :class:`ServiceClient` sends paths
as they are given, without decoding or normalising them again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from yarl import URL

from shared.errors import UpstreamError
from shared.logs import request_id_var
from shared.web import REQUEST_ID_HEADER, SERVICE_TOKEN_HEADER, dumps


def path(*segments: object) -> str:
    """``/seg1/seg2/...`` with every segment percent-encoded (``/`` ``?`` ``#`` ``%`` included), for
    :meth:`ServiceClient.call`. ``.`` and ``..`` are encoded too: as segments of their own they would
    otherwise be resolved away by whoever normalises the path."""
    parts = []
    for segment in segments:
        text = str(segment)
        parts.append("%2E" * len(text) if text in (".", "..") else quote(text, safe=""))
    return "/" + "/".join(parts)


class _Retryable(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


#: Retries back off exponentially from this, with full jitter, up to the cap.
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0

_RETRY_ON = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, _Retryable)


class ServiceClient:
    """A client of one service at ``base_url``, sharing the caller's ``ClientSession``.

    :meth:`call` returns ``(status, decoded JSON or None)`` for any status in ``ok``; any other answer,
    or none at all, raises :class:`UpstreamError`. Idempotent calls are retried on connection errors,
    timeouts and 5xx; a call that is not idempotent is sent once.
    """

    def __init__(self, service: str, base_url: str, session: aiohttp.ClientSession, *,
                 token: str | None = None, attempts: int = 4, timeout_s: float = 10.0) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.attempts = attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {SERVICE_TOKEN_HEADER: token} if token else {}

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._headers)
        rid = request_id_var.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if extra:
            headers.update(extra)
        return headers

    async def _once(self, method: str, path: str, body: bytes | None, params: Mapping[str, Any] | None,
                    ok: tuple[int, ...], timeout: aiohttp.ClientTimeout) -> tuple[int, Any]:
        headers = self.headers({"Content-Type": "application/json"} if body is not None else None)
        # encoded=True: the path is sent as given (built by :func:`path` where it carries a value), never
        # decoded into a query or normalised into another route.
        url = URL(self.base_url + path, encoded=True)
        async with self.session.request(method, url, data=body, params=params,
                                        headers=headers, timeout=timeout) as resp:
            raw = await resp.read()
            data = None
            if raw and resp.content_type == "application/json":
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    data = None
            if resp.status in ok:
                return resp.status, data
            if resp.status >= 500:
                raise _Retryable(resp.status, data)
            raise UpstreamError(self.service, resp.status, data)

    async def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   ok: tuple[int, ...] = (200, 201, 204), idempotent: bool = True,
                   timeout_s: float | None = None) -> tuple[int, Any]:
        body = dumps(json) if json is not None else None
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else self.timeout
        try:
            # The first try goes straight out: the retry machinery costs more than the call itself on a
            # loopback hop, and is needed only once something failed.
            return await self._once(method, path, body, params, ok, timeout)
        except _RETRY_ON as exc:
            if not idempotent or self.attempts <= 1:
                raise self._unavailable(exc) from exc
        await asyncio.sleep(random.uniform(0, RETRY_BASE_S))  # the first try was outside tenacity
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts - 1),
                wait=wait_random_exponential(multiplier=RETRY_BASE_S, max=RETRY_CAP_S),
                retry=retry_if_exception_type(_RETRY_ON),
                reraise=True,
            ):
                with attempt:
                    return await self._once(method, path, body, params, ok, timeout)
        except _RETRY_ON as exc:
            raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, _Retryable):
            return UpstreamError(self.service, exc.status, exc.body)
        return UpstreamError(self.service, 0)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("POST", path, **kwargs)
