"""Calling another Conveyor service: JSON in and out, the request id and service token passed on, failover
across the service's instances, and retries (exponential backoff with jitter) only where a retry is safe.

A service may run as several instances (``REGISTRY_URL=http://a:8091,http://b:8091``). A call goes to the
preferred instance, the last one that answered, and moves on to the next when that one fails, with the same
replay rule as the gateway (:mod:`gateway.proxy`):

- **Not sent** (connection refused, connect timeout): the request never left, so any call, idempotent or
  not, goes on to the next instance.
- **Sent, then failed** (a 5xx answer, the connection broken after the request was written, a read
  timeout): only a call that is safe to repeat goes on (``idempotent=True``, the default). A call that is
  not (``idempotent=False``: a dequeue, which leases jobs; a new user) fails at once with
  :class:`UpstreamError`: it may have taken effect.

Most of the POSTs Conveyor's services make to each other are safe to repeat, which is why ``idempotent``
defaults to True: registering jobs (``POST /jobs/batch``) carries the job ids the receptionist chose, so a
repeat answers the job already made; enqueues are idempotent on the job id; registry reports name their
attempt (a repeated one is a replay); acks, nacks, releases and lease extensions name their lease (a
repeat is a 409 "lease lost" at worst). The callers mark the rest.

An instance that could not be reached (or broke a connection) is *down* for ``cooloff_s``: calls try the
instances that are up first and a down one only when every other failed, so they do not pay for a dead
instance each time. When every instance failed, an idempotent call starts over after a backoff, up to
``attempts`` rounds. :meth:`ServiceClient.set_urls` replaces the instance list of a running client.

Calls to ``http://`` instances go out through the lean client the gateway relays with
(:mod:`shared.upstream_client`) when the caller passes one (``upstream=``; each service's app holds one for
all its clients): a kept-alive connection and one write per request, a fraction of the CPU of aiohttp's
``ClientSession``, which the others (``https://``, and callers without one) keep using.

A path that carries a value from a client (a username, a job id, a queue name) is built with :func:`path`,
which percent-encodes each segment: a name like ``alice?x=1`` or ``../users`` stays one segment of the
path it was meant for and cannot add a query or climb to another route. :class:`ServiceClient` sends paths
as they are given, without decoding or normalising them again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from loguru import logger
from yarl import URL

from shared.errors import UpstreamError
from shared.logs import request_id_var
from shared.upstream_client import UpstreamClient, UpstreamRefused
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


def service_urls(urls: str | Sequence[str]) -> list[str]:
    """The instances' base URLs from one URL, a comma-separated list, or a sequence of them; without
    trailing slashes, blanks dropped, each once, in the order given."""
    items = urls.split(",") if isinstance(urls, str) else [part for url in urls for part in url.split(",")]
    return list(dict.fromkeys(url.strip().rstrip("/") for url in items if url.strip()))


#: Rounds after the first back off exponentially from this, with jitter, up to the cap.
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0

#: The request never left: the connection could not be made.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, UpstreamRefused)
#: The request may have been sent (or half of it) before the connection broke or the answer was late.
_BROKEN = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class _Answered5xx(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


class Instance:
    """One instance of the service and what calls have seen of it."""

    __slots__ = ("down_until", "failures", "requests", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        #: Until when calls try it only after the others (monotonic clock); 0: up.
        self.down_until = 0.0
        self.requests = 0
        self.failures = 0

    def report(self, now: float) -> dict[str, Any]:
        return {"url": self.url, "up": self.down_until <= now, "requests": self.requests, "failures": self.failures}


class ServiceClient:
    """A client of one service, at one base URL or several (its instances), sharing the caller's
    ``ClientSession``.

    :meth:`call` returns ``(status, decoded JSON or None)`` for any status in ``ok``; any other answer,
    or none from any instance, raises :class:`UpstreamError` (status 0: none could be reached).
    """

    def __init__(self, service: str, urls: str | Sequence[str], session: aiohttp.ClientSession, *,
                 token: str | None = None, attempts: int = 4, timeout_s: float = 10.0,
                 connect_timeout_s: float = 3.0, cooloff_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, upstream: UpstreamClient | None = None) -> None:
        self.service = service
        self.session = session
        self.upstream = upstream
        self.attempts = attempts
        self.connect_timeout_s = connect_timeout_s
        self.timeout = self._timeout(timeout_s)
        self.cooloff_s = cooloff_s
        self.clock = clock
        self._headers = {SERVICE_TOKEN_HEADER: token} if token else {}
        self.instances: list[Instance] = []
        self._preferred = 0
        self.set_urls(urls)

    def set_urls(self, urls: str | Sequence[str]) -> None:
        """Call these instances from now on (what a discovery of instances feeds in). An instance kept from
        the old list keeps its state, and the preferred one stays preferred while it is listed."""
        wanted = service_urls(urls)
        if not wanted:
            raise ValueError(f"{self.service}: at least one base URL is required")
        known = {instance.url: instance for instance in self.instances}
        preferred = self.instances[self._preferred].url if self.instances else None
        self.instances = [known.get(url) or Instance(url) for url in wanted]
        self._preferred = wanted.index(preferred) if preferred in wanted else 0

    @property
    def urls(self) -> list[str]:
        return [instance.url for instance in self.instances]

    @property
    def base_url(self) -> str:
        """The preferred instance: the one the next call goes to first."""
        return self.instances[self._preferred].url

    def report(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [instance.report(now) for instance in self.instances]

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._headers)
        rid = request_id_var.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if extra:
            headers.update(extra)
        return headers

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        # A connect of its own limit: an instance that does not answer the handshake is passed over (the
        # request was never sent) long before the call's own timeout.
        return aiohttp.ClientTimeout(total=total_s, sock_connect=min(self.connect_timeout_s, total_s))

    def _order(self) -> list[Instance]:
        """This call's instances: the preferred one first, then the others in list order; those that are
        down go last (the soonest back first), tried only when every other failed."""
        now = self.clock()
        n = len(self.instances)
        turn = [self.instances[(self._preferred + i) % n] for i in range(n)]
        up = [instance for instance in turn if instance.down_until <= now]
        down = sorted((instance for instance in turn if instance.down_until > now), key=lambda i: i.down_until)
        return up + down

    def _answered(self, instance: Instance) -> None:
        if instance.down_until:
            logger.info("{} instance {} answers again", self.service, instance.url)
            instance.down_until = 0.0
        self._preferred = self.instances.index(instance) if instance in self.instances else self._preferred

    def _failed(self, instance: Instance, exc: BaseException) -> None:
        instance.failures += 1
        now = self.clock()
        if instance.down_until <= now and len(self.instances) > 1:
            logger.warning("{} instance {} failed ({}); the others go first for {:g}s", self.service,
                           instance.url, type(exc).__name__, self.cooloff_s)
        instance.down_until = now + self.cooloff_s

    async def _once(self, instance: Instance, method: str, path: str, body: bytes | None,
                    params: Mapping[str, Any] | None, ok: tuple[int, ...],
                    timeout: aiohttp.ClientTimeout) -> tuple[int, Any]:
        headers = self.headers({"Content-Type": "application/json"} if body is not None else None)
        instance.requests += 1
        if self.upstream is not None and self.upstream.takes(instance.url):
            status, content_type, raw = await self._lean(instance, method, path, body, params, headers, timeout)
        else:
            # encoded=True: the path is sent as given (built by :func:`path` where it carries a value), never
            # decoded into a query or normalised into another route.
            url = URL(instance.url + path, encoded=True)
            async with self.session.request(method, url, data=body, params=params,
                                            headers=headers, timeout=timeout) as resp:
                status, content_type, raw = resp.status, resp.content_type, await resp.read()
        data = None
        if raw and content_type == "application/json":
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
        if status in ok:
            return status, data
        if status >= 500:
            raise _Answered5xx(status, data)
        raise UpstreamError(self.service, status, data)

    async def _lean(self, instance: Instance, method: str, path: str, body: bytes | None,
                    params: Mapping[str, Any] | None, headers: dict[str, str],
                    timeout: aiohttp.ClientTimeout) -> tuple[int, str, bytes]:
        """One call through :attr:`upstream`: ``(status, content type, body)``. Its errors mean what
        aiohttp's do here: :class:`UpstreamRefused` (not sent) when the connection could not be made within
        the connect timeout, a ``ClientConnectionError`` or ``TimeoutError`` once it may have been."""
        assert self.upstream is not None
        target = path
        if params:
            target += ("&" if "?" in path else "?") + urlencode(params)
        async with asyncio.timeout(timeout.total):
            resp = await self.upstream.request(method, instance.url, target, headers.items(), body)
            try:
                raw = await resp.read()
            finally:
                resp.release()
        return resp.status, resp.content_type, raw

    async def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   ok: tuple[int, ...] = (200, 201, 204), idempotent: bool = True,
                   timeout_s: float | None = None) -> tuple[int, Any]:
        """Send the call to the instances in turn until one answers (see the module's docstring for what
        moves on and what fails at once). ``idempotent``: the call is safe to repeat, so it also moves on
        after a 5xx or a broken connection, and starts over (up to ``attempts`` rounds) when every
        instance failed."""
        body = dumps(json) if json is not None else None
        timeout = self._timeout(timeout_s) if timeout_s is not None else self.timeout
        rounds = max(1, self.attempts if idempotent else 1)
        last: BaseException | None = None
        answered: _Answered5xx | None = None  # an instance's own 5xx says more than another's silence
        for round_no in range(rounds):
            if round_no:
                delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (round_no - 1))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            for instance in self._order():
                try:
                    answer = await self._once(instance, method, path, body, params, ok, timeout)
                except UpstreamError:
                    self._answered(instance)  # a 4xx: the instance is fine, the request is not
                    raise
                except _NOT_SENT as exc:
                    self._failed(instance, exc)
                    last = exc
                    continue
                except _Answered5xx as exc:
                    instance.failures += 1
                    if not idempotent:
                        raise self._unavailable(exc) from exc
                    answered = exc
                    continue
                except _BROKEN as exc:
                    self._failed(instance, exc)
                    if not idempotent:
                        raise self._unavailable(exc) from exc
                    last = exc
                    continue
                self._answered(instance)
                return answer
        failure = answered or last
        assert failure is not None
        raise self._unavailable(failure) from failure

    def _unavailable(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, _Answered5xx):
            return UpstreamError(self.service, exc.status, exc.body)
        return UpstreamError(self.service, 0)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("POST", path, **kwargs)
