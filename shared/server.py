"""Serving an app: how every service listens, and what it answers to requests aiohttp refuses before any
handler or middleware sees them.

aiohttp's HTTP parser refuses some requests outright: a header line over 8 KB, bytes HTTP does not allow
in the path or a header, a bad chunk size, ``Content-Length`` together with ``Transfer-Encoding``, a
malformed request line. Its default answer is ``text/plain`` carrying the parser's message, which quotes
the offending request bytes, and it logs a traceback. Here the answer is the same ``{"error", "details"}``
JSON as every other error, with a fixed message per kind of fault (nothing of the request is echoed), and
the log is one line.

A client also has deadlines: a request's head must come whole within ``head_timeout_s`` of its first
byte (or of the connection, for its first request), and a body being sent must not stop for longer than
``body_idle_s``. aiohttp waits forever for either, so a client that opened connections and sent a byte
now and then (slowloris), or nothing at all, held each one and its file descriptor for good. Past a
deadline the client gets a 408 and the connection closes. A connection idle between two requests closes
after ``keepalive_timeout_s``.

The hook is :class:`ServiceRequestHandler`, aiohttp's per-connection protocol with its ``handle_error``
replaced; :class:`ServiceRunner` makes the server build it. :func:`serve` starts an app that way (tests
use it to get the very server the services run) and :func:`run` serves until SIGINT or SIGTERM, registering
the instance with the registry once it listens (:func:`register`, :mod:`shared.heartbeat`).
"""

from __future__ import annotations

import asyncio
import re
from contextlib import suppress
from typing import Any

import orjson
from aiohttp import http_exceptions as hx
from aiohttp import web
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_request import BaseRequest
from loguru import logger

from shared.heartbeat import HEARTBEAT, advertised_url
from shared.settings import ServiceSettings

#: What a refused request is told, by the parser's exception (most specific first): the field at fault
#: and a fixed message. The parser's own message is never sent: it quotes the request's bytes.
_FAULTS: tuple[tuple[type[hx.HttpProcessingError], str, str], ...] = (
    (hx.LineTooLong, "headers", "the request line or a header field is longer than the server accepts"),
    (hx.InvalidURLError, "path", "the request target holds characters HTTP does not allow"),
    (hx.BadHttpMethod, "method", "not an HTTP method"),
    (hx.BadStatusLine, "request line", "malformed request line"),
    (hx.InvalidHeader, "headers", "malformed header field"),
    (hx.ContentLengthError, "Content-Length", "the body does not match its Content-Length"),
    (hx.TransferEncodingError, "Transfer-Encoding", "malformed chunked body"),
    (hx.DecompressSizeError, "Content-Encoding", "the body decompresses beyond what the server accepts"),
    (hx.ContentEncodingError, "Content-Encoding", "the body cannot be decoded"),
)
#: llhttp's description of a fault is a fixed phrase ("Invalid character in chunk size"); it is shown only
#: when it is plainly one, so that no request bytes can ride along.
_PHRASE = re.compile(r"[A-Z][A-Za-z' -]{2,79}")


def describe_fault(exc: BaseException | None) -> tuple[str, str]:
    """The field and the message a client is told for a request the parser refused with ``exc``."""
    for kind, field, message in _FAULTS:
        if isinstance(exc, kind):
            return field, message
    if isinstance(exc, hx.HttpProcessingError):
        phrase = exc.message.split(":", 1)[0].strip()
        if _PHRASE.fullmatch(phrase):
            return "request", phrase[0].lower() + phrase[1:]
    return "request", "malformed HTTP request"


#: A request's head must come whole within this long of its first byte (nginx's ``client_header_timeout``
#: is 60 s): a client sends it in one packet or a few.
HEAD_TIMEOUT_S = 30.0
#: A body being sent may pause this long at most between two packets (nginx's ``client_body_timeout``).
BODY_IDLE_S = 60.0
#: A connection may idle this long between two requests (aiohttp's own default).
KEEPALIVE_TIMEOUT_S = 3630.0


class BodyTimedOut(web.RequestPayloadError):
    """A request's body stopped coming for longer than the server waits (``body_idle_s``)."""


def payload_fault(exc: web.RequestPayloadError) -> tuple[int, str, str]:
    """The status, the field and the message a client is told for a body that could not be read."""
    if isinstance(exc, BodyTimedOut):
        return 408, "body", str(exc)
    field, message = describe_fault(exc.__cause__)
    return 400, field, message


def _head_timed_out(seconds: float) -> bytes:
    body = orjson.dumps({"error": "request timeout", "details": [
        {"field": "request", "message": f"the request's head did not come whole within {seconds:g} s"}]})
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body))


def _json_error(status: int, error: str, details: list[dict[str, str]]) -> web.Response:
    response = web.Response(status=status, body=orjson.dumps({"error": error, "details": details}),
                            content_type="application/json")
    response.force_close()  # the connection's framing cannot be trusted any more
    return response


class ServiceRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, answering what it refuses as our JSON errors, with deadlines
    for a request's head and for a pause in its body (see the module's text)."""

    __slots__ = ("_body_idle_s", "_data_at", "_head_since", "_head_timeout_s", "_watch")

    def __init__(self, *args: Any, head_timeout_s: float = HEAD_TIMEOUT_S, body_idle_s: float = BODY_IDLE_S,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._body_idle_s = body_idle_s
        #: Since when a head is awaited (None: a request is in hand, or the connection idles between two,
        #: which aiohttp's keep-alive timeout ends).
        self._head_since: float | None = None
        self._data_at = 0.0
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_since = self._data_at = self._loop.time()
        self._arm(self._head_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._watch = self._loop.call_later(max(seconds, 0.05), self._look)

    def _look(self) -> None:
        """The deadlines' timer: close a connection whose head is late, fail a body that stopped coming;
        else look again when the nearest deadline could pass. One timer a connection, never moved on the
        hot path: a packet only notes its time."""
        self._watch = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        request = self._current_request
        if request is None and not self._messages and self._head_since is not None:
            left = self._head_since + self._head_timeout_s - now
            if left <= 0:
                logger.info("closed a connection from {}: no whole request head within {:g} s",
                            _peer(transport), self._head_timeout_s)
                transport.write(_head_timed_out(self._head_timeout_s))
                transport.close()
                return
            self._arm(left)
            return
        if request is not None and not request.content.is_eof() and request.content.exception() is None:
            left = self._data_at + self._body_idle_s - now
            if left <= 0:
                logger.info("a body from {} stopped coming for {:g} s", request.remote, self._body_idle_s)
                request.content.set_exception(BodyTimedOut(f"no byte of the body came for {self._body_idle_s:g} s"))
                return
            self._arm(left)
            return
        self._arm(min(self._head_timeout_s, self._body_idle_s))

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The answer for a request the parser refused (``status`` 400 with the parser's ``exc``), a
        handler that timed out (504), or an error no middleware caught (500). ``message`` is ignored: it
        quotes the request."""
        if request.writer.output_size > 0:  # as aiohttp does: the answer has begun, only closing is left
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status == 500 and isinstance(exc, ConnectionError):  # the client left while we read its request
            logger.debug("a client left mid-request: {}", exc)
            return _json_error(500, "internal error", [])
        if status == 500:
            logger.opt(exception=exc).error("unhandled error on a request from {}", request.remote)
            return _json_error(500, "internal error", [])
        if status == 504:
            logger.warning("a request from {} timed out", request.remote)
            return _json_error(504, "gateway timeout", [])
        field, reason = describe_fault(exc)
        # A non-HTTP client (TLS, a port scanner) is routine, not a warning; one line either way.
        level = "INFO" if isinstance(exc, hx.BadHttpMethod) else "WARNING"
        logger.log(level, "refused a malformed request from {}: {} ({})", request.remote, reason,
                   type(exc).__name__ if exc is not None else "unknown")
        return _json_error(status if 400 <= status < 500 else 400, "malformed request",
                           [{"field": field, "message": reason}])

    def data_received(self, data: bytes) -> None:
        self._data_at = now = self._loop.time()
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._head_since = None  # a head came whole
        elif self._head_since is None and self._current_request is None and not self._messages:
            self._head_since = now  # the first bytes of the next request's head
        # aiohttp's C parser, failing inside the body of the request being handled (a bad chunk size in a
        # later packet), queues its error as the next request and leaves this body waiting forever. Fail
        # the body instead: the handler's read raises, and shared.web.error_answer makes it a 400.
        request = self._current_request
        if request is None or len(self._messages) <= queued or request.content.is_eof():
            return
        failure = self._messages[-1][0]
        if isinstance(failure, _ErrInfo):
            error = web.RequestPayloadError("malformed body")
            error.__cause__ = failure.exc
            request.content.set_exception(error)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # After a body that broke off mid-way was answered (see shared.web.error_answer), aiohttp drains
        # what is left of it and logs the same fault again with a traceback: once was enough.
        if isinstance(kwargs.get("exc_info"), web.RequestPayloadError):
            logger.debug("dropped the rest of a malformed body")
            return
        super().log_exception(*args, **kwargs)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        # aiohttp's own __call__, with our protocol class instead of RequestHandler.
        return ServiceRequestHandler(self, loop=self._loop, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections are :class:`ServiceRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, built by aiohttp; only the protocol factory differs
        return server


async def serve(app: web.Application, host: str, port: int, *, handle_signals: bool = False,
                head_timeout_s: float = HEAD_TIMEOUT_S, body_idle_s: float = BODY_IDLE_S,
                keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> ServiceRunner:
    """Start ``app`` on ``host``:``port`` (0 picks a free port: see ``runner.addresses``) the way every
    service runs; ``await runner.cleanup()`` stops it."""
    runner = ServiceRunner(app, handle_signals=handle_signals, access_log=None, shutdown_timeout=5.0,
                           head_timeout_s=head_timeout_s, body_idle_s=body_idle_s,
                           keepalive_timeout=keepalive_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def register(app: web.Application, settings: ServiceSettings, runner: web.AppRunner) -> None:
    """Start the app's heartbeat (:mod:`shared.heartbeat`) now that it listens, at its advertised URL;
    an instance that listens on every address and was given none says so and does not register."""
    heartbeat = app.get(HEARTBEAT)
    if heartbeat is None:
        return
    port = runner.addresses[0][1] if runner.addresses else settings.port
    url = advertised_url(settings, port)
    if url is None:
        prefix = settings.model_config.get("env_prefix", "")
        logger.warning("not registering with the registry: this instance listens on every address ({}) and "
                       "{}ADVERTISE_URL does not say where the others reach it", settings.host, prefix)
        return
    await heartbeat.start(url)


async def _serve_until_stopped(app: web.Application, settings: ServiceSettings) -> None:
    runner = await serve(app, settings.host, settings.port, handle_signals=True,
                         head_timeout_s=settings.request_head_timeout_s, body_idle_s=settings.request_body_idle_s,
                         keepalive_timeout_s=settings.keepalive_timeout_s)
    try:
        await register(app, settings, runner)
        await asyncio.Event().wait()  # SIGINT and SIGTERM raise GracefulExit out of the loop
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: ServiceSettings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, on uvloop when it is installed (what ``web.run_app`` does,
    with :class:`ServiceRunner`)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional speed-up
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_until_stopped(app, settings))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
