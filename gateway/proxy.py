"""Relaying a client's request to a receptionist and its answer back, streamed both ways.

The client's body goes upstream as it arrives and the receptionist's answer comes back chunk by chunk,
so the gateway never holds a large body: only a submission's body (to send it again, below) and an answer
of at most 64 KB (sent back in one write) are held whole. On the way up the gateway drops hop-by-hop headers and any
identity the client claimed, and adds its own: the request id, the internal service token, the caller's
identity and the ``X-Forwarded-*`` pair.

A request that never reached a receptionist (connection refused, connect timeout) goes to the next one.
A request that was sent and then lost its connection before an answer is sent again, on another
receptionist when there is one, only when sending it twice is harmless:

- a GET or HEAD without a body;
- a submission (a POST to a route that takes an ``Idempotency-Key``) whose body is small enough to keep
  (``REPLAY_BODY_BYTES``). The gateway gives every POST without an ``Idempotency-Key`` one of its own,
  ``gateway:`` and 32 random hex digits, so a submission sent twice registers one job: the receptionist
  that gets it second finds the job the first one made, under the caller's key, and answers it (the
  gateway passes that on as the ``201`` it is for the client, since the key was not the client's). A key
  the client chose is passed on as it is; one starting with ``gateway:`` is refused (400), so no client
  key can be the gateway's.

Those go out on kept-alive connections, through the gateway's own lean client
(:mod:`shared.upstream_client`), which costs a fraction of aiohttp's per request. Anything else
(another write, a body too large to keep, a chunked one) fails with 502 (504 on a read timeout) once
sent, since it may have taken effect, and so it goes out on a new connection, through aiohttp's client:
on a kept-alive one, a receptionist that just closed an idle connection looks the same as one that died
while doing the work, whereas on a new connection "refused" means what it says: the request never left,
and the next receptionist can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import StreamReader, web
from aiohttp.web import RequestPayloadError
from loguru import logger
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.auth import ANONYMOUS_IDENTITY, Authenticator, Identity
from gateway.ratelimit import Decision, RateLimits, client_key
from gateway.route_labels import takes_idempotency_key
from gateway.upstreams import Upstream, UpstreamPool
from shared.api import GATEWAY_KEY_PREFIX
from shared.errors import PayloadTooLarge, Unavailable, ValidationFailed
from shared.ids import uuid7_hex
from shared.logs import request_id_var
from shared.server import payload_fault
from shared.upstream_client import UpstreamClient, UpstreamRefused, UpstreamResponse
from shared.web import DECODED_CODINGS, REQUEST_ID_HEADER, SERVICE_TOKEN_HEADER, error_response

USER_HEADER = "X-Conveyor-User"  # the caller's stable id: what their jobs belong to
USERNAME_HEADER = "X-Conveyor-Username"  # their name, for display and logs
ROLES_HEADER = "X-Conveyor-Roles"
PERMISSIONS_HEADER = "X-Conveyor-Permissions"

#: Headers that concern one connection, not the exchange (RFC 9110 7.6.1); ``Proxy-*`` go too.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
#: Client headers never passed on: hop-by-hop ones, those the gateway sets itself, and ``Expect``
#: (the gateway already answered the client's ``100-continue``).
_DROP_UP = HOP_BY_HOP | {
    "host", "expect", USER_HEADER.lower(), USERNAME_HEADER.lower(), ROLES_HEADER.lower(), PERMISSIONS_HEADER.lower(),
    REQUEST_ID_HEADER.lower(), SERVICE_TOKEN_HEADER.lower(), "x-forwarded-for", "x-forwarded-proto",
    "authorization",  # the gateway checked it; receptionists get the identity instead
}
_DROP_DOWN = HOP_BY_HOP | {REQUEST_ID_HEADER.lower()}
_DROP_DOWN_WHOLE = _DROP_DOWN | {"content-length"}  # a whole answer's is its body's
#: Headers aiohttp would otherwise add on its own: the client's choice (or absence) is what counts.
_SKIP_AUTO = frozenset({"Accept-Encoding", "User-Agent", "Content-Type"})
_REPLAYABLE = frozenset({"GET", "HEAD"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: A submission's body up to this size is kept whole, to be sent again if its connection breaks; a larger
#: one (an upload) streams through on a new connection.
REPLAY_BODY_BYTES = 256 * 1024
#: Sends of one request after its connection broke (a kept-alive connection the receptionist just closed,
#: or a receptionist that died): another receptionist first, the same one when it is the only one.
MAX_REPLAYS = 2
_CHUNK_BYTES = 64 * 1024
#: How often a relayed event stream looks whether its client is still there: a gone client shows otherwise
#: only at the next write, a keep-alive away, and meanwhile holds the receptionist's stream slot.
CLIENT_CHECK_S = 0.25

#: Set by :mod:`gateway.admission` on every request it lets through: the caller, and the rate limit
#: decision it got (absent when rate limiting is off).
IDENTITY = web.RequestKey("identity", Identity)
DECISION = web.RequestKey("decision", Decision)


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _copy_headers(source: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in source.items():
        low = name.lower()
        if low in drop or low.startswith("proxy-"):
            continue
        out.add(name, value)
    # A sender may name more hop-by-hop headers in Connection.
    connection = source.get("Connection")
    if connection:
        for token in connection.split(","):
            out.popall(token.strip(), None)
    return out


class _ClientBody:
    """A client's body as the gateway streams it up. A fault met reading it (a content coding that does not
    decode, a chunked body that breaks off) is the client's, not the receptionist's: it is kept in ``fault``
    for the answer to say so, where aiohttp's client reports it as a connection that failed."""

    def __init__(self, stream: StreamReader) -> None:
        self.stream = stream
        self.fault: RequestPayloadError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.stream.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except RequestPayloadError as exc:
            self.fault = exc
            raise


def _client_fault(fault: RequestPayloadError) -> web.Response:
    """The answer for a client's body that could not be read, as the services tell it
    (:func:`shared.server.payload_fault`: a 400, or a 408 for one that stopped coming); the connection
    closes, its framing cannot be trusted."""
    status, field, message = payload_fault(fault)
    response = error_response(status, "request timeout" if status == 408 else "malformed request",
                              [{"field": field, "message": message}])
    response.force_close()
    return response


class Proxy:
    """The catch-all handler and its counters. ``session`` is set once the app has started."""

    def __init__(self, pool: UpstreamPool, limits: RateLimits, *, service_token: str | None,
                 upstream_timeout_s: float, max_body_bytes: int, trust_forwarded: bool,
                 auth: Authenticator | None = None, connections: int = 1000) -> None:
        self.pool = pool
        self.connections = connections
        self.limits = limits
        self.auth = auth
        self.session: aiohttp.ClientSession | None = None  # keeps connections alive: replayable requests
        self.fresh_session: aiohttp.ClientSession | None = None  # a new connection per request: the rest
        #: The replayable requests' kept-alive connections (set at startup, as the sessions are).
        self.client: UpstreamClient | None = None
        self.trust_forwarded = trust_forwarded
        self.max_body_bytes = max_body_bytes
        # No total limit: a download or an event stream may last long; silence may not.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=upstream_timeout_s,
                                             sock_read=upstream_timeout_s)
        self.service_token = service_token
        self.proxied = 0
        self.rate_limited = 0
        self.no_upstream = 0
        self.upstream_errors = 0

    def new_client(self) -> UpstreamClient:
        """The kept-alive connections' client, with the upstream timeouts aiohttp's sessions have."""
        return UpstreamClient(limit=self.connections, connect_timeout_s=self.timeout.sock_connect or 60.0,
                              read_timeout_s=self.timeout.sock_read or 60.0)

    def stats(self) -> dict[str, int]:
        return {"proxied": self.proxied, "rate_limited": self.rate_limited, "no_upstream": self.no_upstream,
                "upstream_errors": self.upstream_errors}

    async def identify(self, request: web.Request) -> Identity:
        """The caller, from its token (raises :class:`Unauthorized`); anonymous when auth is off."""
        if self.auth is None:
            return ANONYMOUS_IDENTITY
        return await self.auth.identify(request.headers.get("Authorization"))

    async def take(self, request: web.Request, identity: Identity, *, peek: bool = False) -> Decision | None:
        """Take from the caller's bucket (or only look at it, with ``peek``): its user's when it has one,
        else its address's; the rate is its most privileged role's. None when rate limiting is off."""
        limiter = self.limits.for_role(identity.top_role)
        if limiter is None:
            return None
        if identity.anonymous:
            forwarded = request.headers.get("X-Forwarded-For") if self.trust_forwarded else None
            key = client_key(None, request.remote, forwarded)
        else:
            key = "user:" + identity.user_id  # the stable id: a name can be reused by someone else
        return await (limiter.peek(key) if peek else limiter.take(key))

    def too_many(self, decision: Decision) -> web.Response:
        self.rate_limited += 1
        return error_response(429, "too many requests", [
            {"field": "client", "message": f"over the rate limit; retry in {decision.retry_after_s}s"}],
            headers=decision.headers())

    async def handle(self, request: web.Request, tail: str | None = None) -> web.StreamResponse:
        """Relay the request (to ``tail``, a path and query, when given: the dashboard's API prefix goes);
        its caller and rate limit decision are :mod:`gateway.admission`'s."""
        rid = request_id_var.get() or ""
        identity = request[IDENTITY]
        decision = request.get(DECISION)
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge("request body too large",
                                  [{"field": "body", "message": f"at most {self.max_body_bytes} bytes"}])
        has_body = request.body_exists
        headers = self._upstream_headers(request, rid, identity)
        tail = request.rel_url.raw_path_qs if tail is None else tail
        method = request.method
        body: bytes | None = None
        own_key = False
        if method == "POST":
            own_key = self._idempotency_key(request, headers)
            # A coded body streams: its few bytes may decode to far more than a body kept to send again.
            if (has_body and length is not None and length <= REPLAY_BODY_BYTES
                    and "Content-Encoding" not in request.headers and takes_idempotency_key(request.path)):
                body = await request.read()
        replay = (not has_body and method in _REPLAYABLE) or body is not None
        session = self.session if replay else self.fresh_session
        assert session is not None, "the gateway's client sessions are opened at startup"
        client = self.client if replay else None
        streamed = _ClientBody(request.content) if body is None and has_body else None
        data = body if body is not None else streamed
        tried: list[Upstream] = []
        replays = 0
        while True:
            upstream = self.pool.pick(tried)
            if upstream is None:
                self.no_upstream += 1
                raise Unavailable("no receptionist available", retry_after_s=self.pool.retry_after_s())
            tried.append(upstream)
            upstream.requests += 1
            upstream.in_flight += 1
            try:
                try:
                    resp: aiohttp.ClientResponse | UpstreamResponse
                    if client is not None and client.takes(upstream.url):
                        resp = await client.request(method, upstream.url, tail, headers.items(), body)
                    else:
                        resp = await session.request(
                            method, URL(upstream.url + tail, encoded=True), headers=headers,
                            data=data, allow_redirects=False,
                            timeout=self.timeout, skip_auto_headers=_SKIP_AUTO, auto_decompress=False)
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, UpstreamRefused):
                    # Never sent: any method may go to the next receptionist.
                    self.pool.refused(upstream)
                    continue
                except (TimeoutError, aiohttp.ClientError) as exc:
                    if streamed is not None and streamed.fault is not None:
                        return _client_fault(streamed.fault)  # the client's body broke, not the receptionist
                    upstream.failures += 1
                    # A broken connection is sent again, on the same receptionist when it is the only one
                    # (a kept-alive connection it closed). A late answer is not, for a submission (the
                    # receptionist is busy: a second send would add to its load) nor on the same one.
                    broken = not isinstance(exc, TimeoutError)
                    elsewhere = self.pool.any_available(tried)
                    if replay and replays < MAX_REPLAYS and (broken or (body is None and elsewhere)):
                        replays += 1
                        if not elsewhere:
                            tried.remove(upstream)
                        continue
                    return self._failed(request, upstream, exc)
                try:
                    self.proxied += 1
                    return await self._relay(request, resp, upstream, rid, decision,
                                             created=own_key and replays > 0 and resp.status == 200)
                finally:
                    resp.release()
            finally:
                upstream.in_flight -= 1

    @staticmethod
    def _idempotency_key(request: web.Request, headers: CIMultiDict[str]) -> bool:
        """Give a POST an ``Idempotency-Key`` of the gateway's own when the client gave none (True then);
        a client's key in the gateway's namespace is a 400."""
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            headers[IDEMPOTENCY_HEADER] = GATEWAY_KEY_PREFIX + uuid7_hex()
            return True
        if key.startswith(GATEWAY_KEY_PREFIX):
            raise ValidationFailed("invalid request", [{"field": IDEMPOTENCY_HEADER, "message": (
                f"a key starting with {GATEWAY_KEY_PREFIX!r} is the gateway's own; choose another")}])
        return False

    def _upstream_headers(self, request: web.Request, rid: str, identity: Identity) -> CIMultiDict[str]:
        headers = _copy_headers(request.headers, _DROP_UP)
        if request.headers.get("Content-Encoding", "").strip().lower() in DECODED_CODINGS:
            # aiohttp decodes such a body as the gateway reads it: it goes up decoded, so neither its coding
            # nor the client's length (of the encoded bytes) is said of it (a length is counted anew, or the
            # body goes chunked).
            headers.popall("Content-Encoding", None)
            headers.popall("Content-Length", None)
        headers[USER_HEADER] = identity.user_id
        headers[USERNAME_HEADER] = identity.username
        headers[ROLES_HEADER] = ",".join(identity.roles)
        if identity.permissions:
            headers[PERMISSIONS_HEADER] = ",".join(identity.permissions)
        if self.service_token:
            headers[SERVICE_TOKEN_HEADER] = self.service_token
        headers[REQUEST_ID_HEADER] = rid
        remote = request.remote or "unknown"
        forwarded_for = request.headers.get("X-Forwarded-For") if self.trust_forwarded else None
        headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
        proto = request.headers.get("X-Forwarded-Proto") if self.trust_forwarded else None
        headers["X-Forwarded-Proto"] = proto or request.scheme
        return headers

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse | UpstreamResponse,
                     upstream: Upstream, rid: str,
                     decision: Decision | None, created: bool = False) -> web.StreamResponse:
        """Stream the answer back. ``created``: the 200 of a submission the gateway sent again, which found
        the job its first send made; for the client, whose one request made it, that is a 201."""
        status, reason = (201, "Created") if created else (resp.status, resp.reason)
        length = resp.content_length
        if length is not None and length <= _CHUNK_BYTES and request.method != "HEAD":
            # A small answer (a job, a page of a list) goes back whole: headers and body in one write,
            # where streaming it costs a write for each.
            try:
                body = await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                upstream.failures += 1
                return self._failed(request, upstream, exc)
            whole = web.Response(status=status, reason=reason, body=body,
                                 headers=_copy_headers(resp.headers, _DROP_DOWN_WHOLE))
            whole.headers[REQUEST_ID_HEADER] = rid
            if decision is not None:
                whole.headers.update(decision.headers())
            return whole
        out = web.StreamResponse(status=status, reason=reason, headers=_copy_headers(resp.headers, _DROP_DOWN))
        out.headers[REQUEST_ID_HEADER] = rid
        if decision is not None:
            out.headers.update(decision.headers())
        # An event stream is mostly silent: watch its client, and close the upstream answer as soon as the
        # client is gone, so the receptionist ends the stream and frees its slot.
        watcher = (asyncio.create_task(self._watch(request, resp), name="gateway-stream-watch")
                   if resp.content_type == "text/event-stream" else None)
        try:
            await out.prepare(request)
            async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
                await out.write(chunk)
            await out.write_eof()
        except ConnectionResetError:
            # The client went away; nobody is left to answer (aiohttp's own client errors on the
            # upstream side are ConnectionResetErrors too, hence the transport check).
            if request.transport is not None and not request.transport.is_closing():
                self._broken(request, upstream, "connection reset")
        except (TimeoutError, aiohttp.ClientError) as exc:
            if not _client_gone(request):
                self._broken(request, upstream, repr(exc))
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return out

    @staticmethod
    async def _watch(request: web.Request, resp: aiohttp.ClientResponse | UpstreamResponse) -> None:
        while not _client_gone(request):
            await asyncio.sleep(CLIENT_CHECK_S)
        resp.close()

    def _broken(self, request: web.Request, upstream: Upstream, reason: str) -> None:
        """The receptionist's answer broke off after its headers were sent: the only honest signal left
        is to close the client's connection, so it cannot take the truncated body for a whole one."""
        upstream.failures += 1
        self.upstream_errors += 1
        logger.warning("answer of {} to {} {} broke off: {}", upstream.url, request.method, request.path, reason)
        if request.transport is not None:
            request.transport.close()

    def _failed(self, request: web.Request, upstream: Upstream, exc: BaseException) -> web.Response:
        self.upstream_errors += 1
        timed_out = isinstance(exc, asyncio.TimeoutError)
        if request.transport is not None and not request.transport.is_closing():
            logger.warning("{} {} failed at {}: {!r}", request.method, request.path, upstream.url, exc)
        status, error = (504, "receptionist timed out") if timed_out else (502, "receptionist failed")
        return error_response(status, error, [{"field": "upstream", "message": type(exc).__name__}])
