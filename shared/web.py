"""aiohttp plumbing every service uses: JSON in and out, the error and request-id middlewares, the
``/health``, ``/status`` and ``/metrics`` routes, and running an app."""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from shared import query, server
from shared.errors import (
    BadRequest,
    ConveyorError,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.heartbeat import HEARTBEAT, Heartbeat, InstanceSink, RegistrySink
from shared.logs import LogShipper, request_id_var
from shared.settings import ServiceSettings

M = TypeVar("M", bound=BaseModel)

#: The largest JSON body :func:`read_json` takes by default, in an app whose ``client_max_size`` is
#: raised for a route of larger bodies.
MAX_JSON_BYTES = web.AppKey("max_json_bytes", int)

#: Headers that every answer to a request carries, its errors included (the gateway's ``RateLimit-*``): set
#: by an inner middleware, added by the service middleware whatever the handler answered or raised.
RESPONSE_HEADERS = web.RequestKey("response_headers", dict)

REQUEST_ID_HEADER = "X-Request-ID"
#: A request id a caller may give: 1 to 200 visible ASCII characters (a UUID, hex digits, a trace id). It
#: goes into every log line and every call the request makes; any other is a 400, never cut or mended.
REQUEST_ID = re.compile(r"[!-~]{1,200}")
REQUEST_ID_MESSAGE = "1 to 200 visible ASCII characters (! to ~), or none for one made here"
#: The content codings aiohttp's parser decodes a request body from as it reads it (one that needs a
#: library not installed is refused by the parser, a 400): a handler, and the gateway relaying the body,
#: see it decoded. Any other coding but ``identity`` would reach them as it came, and is a 415.
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
_UNDECODED_MESSAGE = "a body's content coding is gzip or deflate, or none"
SERVICE_TOKEN_HEADER = "X-Service-Token"
#: Paths an internal service answers without the service token: liveness for probes and the launcher.
OPEN_PATHS = frozenset({"/health"})


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(data: Any) -> bytes:
    """JSON bytes of ``data``; pydantic models anywhere inside are dumped in JSON mode."""
    if isinstance(data, BaseModel):
        return data.model_dump_json().encode()
    return orjson.dumps(data, default=_default)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(data), status=status, headers=headers, content_type="application/json")


def error_response(status: int, error: str, details: list[dict[str, str]] | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": error, "details": details or []}, status=status, headers=headers)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field", "message"}`` per pydantic error; the field is the dotted path (``leads.0.name``)."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            message = str(err["ctx"]["error"])
        details.append({"field": field, "message": message})
    return details


def parse_model(model: type[M], data: Any, *, foreign: str | None = None) -> M:
    """Validate ``data`` against ``model``; a failure is a :class:`ValidationFailed` with field details.

    ``foreign``: the field whose model is another's code (a kind's payload model). pydantic turns only a
    ``ValueError`` or ``AssertionError`` of a validator into a validation error; anything else its
    validators raise (a ``KeyError`` on an input they did not expect) is then a 400 naming that field,
    not a 500 for the client's input, and logged with its traceback for the model's author."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("invalid request", validation_details(exc)) from exc
    except Exception as exc:
        if foreign is None:
            raise
        logger.opt(exception=exc).error("validating {} raised {!r}: a validator of its model fails on this input",
                                        foreign, exc)
        reason = f"{type(exc).__name__}: {exc}"
        reason = reason if len(reason) <= 200 else reason[:200] + "..."
        raise ValidationFailed("invalid request", [{"field": foreign, "message": (
            f"its kind's model could not validate it ({reason})")}]) from exc


async def read_json_bytes(request: web.Request, max_bytes: int | None = None) -> bytes:
    """The request's JSON body, unparsed: 415 for another content type, 413 beyond ``max_bytes`` (by
    default the app's :data:`MAX_JSON_BYTES`, else its ``client_max_size``), 400 when empty."""
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType(
            "expected a JSON body",
            [{"field": "Content-Type", "message": f"must be application/json, not {request.content_type or 'empty'}"}],
        )
    limit = min(max_bytes or request.app.get(MAX_JSON_BYTES, request.client_max_size), request.client_max_size)
    too_large = PayloadTooLarge("request body too large", [{"field": "body", "message": f"at most {limit} bytes"}])
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        if limit >= request.client_max_size:
            raw = await request.read()
        else:  # the app takes larger bodies on some route: stop reading this one at its own limit
            buffer = bytearray()
            async for chunk in request.content.iter_chunked(64 * 1024):
                buffer += chunk
                if len(buffer) > limit:
                    raise too_large
            raw = bytes(buffer)
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large from exc
    if not raw:
        raise BadRequest("empty body", [{"field": "body", "message": "a JSON body is required"}])
    return raw


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed; 400 when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("malformed JSON", [{"field": "body", "message": str(exc)}]) from exc


async def read_json(request: web.Request, max_bytes: int | None = None) -> Any:
    """The request's JSON body: 415 for another content type, 413 when too large, 400 for a body that
    is not JSON."""
    return parse_json(await read_json_bytes(request, max_bytes))


async def read_model(request: web.Request, model: type[M]) -> M:
    return parse_model(model, await read_json(request))


def parse_query(model: type[M], data: Mapping[str, Any]) -> M:
    """A query string's ``data`` (a name to its text or a list of texts) validated against ``model``:
    typed values only in their type's canonical text (see :mod:`shared.query`), then the model's rules."""
    query.check_texts(model, data)
    return parse_model(model, data)


def query_model(request: web.Request, model: type[M]) -> M:
    return parse_query(model, dict(request.query))


def error_answer(exc: Exception, request: web.Request) -> web.Response:
    """The JSON answer for an exception a handler raised: ours carry their status; aiohttp's HTTP errors
    keep theirs (404, 405 with ``Allow`` ...); anything else is a logged 500 that shows no traceback."""
    if isinstance(exc, ConveyorError):
        headers = {}
        if isinstance(exc, TooManyRequests | Unavailable):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        return json_response(exc.body(), status=exc.status, headers=headers)
    if isinstance(exc, web.RequestPayloadError):  # the body broke off (a bad chunk, a short body) or stopped
        status, field, reason = server.payload_fault(exc)
        logger.warning("refused a body on {} {}: {}", request.method, request.path, reason)
        response = error_response(status, "request timeout" if status == 408 else "malformed request",
                                  [{"field": field, "message": reason}])
        response.force_close()  # the rest of the body cannot be framed: nothing more on this connection
        return response
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, exc.reason.lower(), headers=headers)
    logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.path)
    return error_response(500, "internal error")


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (so tests can run many apps at once)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("conveyor_http_requests", "HTTP requests served", ["service", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("conveyor_http_request_seconds", "Time to answer an HTTP request",
                                 ["service", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.service = service
        #: Requests being answered right now (for the instance's heartbeat snapshot).
        self.in_flight = 0
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        #: ``(request, route's canonical path) -> label``: a service whose routes are not its public ones
        #: (the gateway's catch-all) names them itself; never a raw path.
        self.route_label: Callable[[web.Request, str], str] | None = None
        #: Called before each scrape, for gauges whose values must be awaited (a store's counts).
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if self.route_label is not None:
            route = self.route_label(request, route)
        children = self._children.get((route, status))
        if children is None:  # labels() takes a lock and builds a key: do it once per route and status
            children = (self.requests.labels(self.service, route, str(status)),
                        self.latency.labels(self.service, route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def handle(self, request: web.Request) -> web.Response:
        for refresh in self.before_scrape:
            await refresh()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _ShippingCollector(Collector):
    """``conveyor_log_lines_dropped`` and ``conveyor_log_lines_shipped``: what the log shipper could not
    send to the central log (buffer full, or refused), and what it sent."""

    def __init__(self, shipper: LogShipper) -> None:
        self.shipper = shipper

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("conveyor_log_lines_dropped", "Log lines not shipped to the central log",
                                  value=self.shipper.dropped)
        yield CounterMetricFamily("conveyor_log_lines_shipped", "Log lines shipped to the central log",
                                  value=self.shipper.shipped)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The app's :class:`Metrics`, for a service that adds metrics of its own to ``/metrics``.
METRICS = web.AppKey("metrics", Metrics)


def service_middleware(metrics: Metrics, service_token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """What every request of every service goes through, in one frame (each middleware layer costs a
    coroutine per request on the hot path):

    - keep the caller's ``X-Request-ID`` (or make one) for logs and calls to other services;
    - refuse (401) a request without the internal service token, when one is set, but for
      :data:`OPEN_PATHS`;
    - turn every error into ``{"error", "details"}`` JSON: nothing leaks a traceback;
    - count the request and its latency for ``/metrics``.
    """
    expected = service_token.encode() if service_token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        given = request.headers.get(REQUEST_ID_HEADER)
        rid = given if given and REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
        token = request_id_var.set(rid)
        metrics.in_flight += 1
        try:
            if expected is not None and request.path not in OPEN_PATHS:
                # surrogateescape: aiohttp hands bytes that are not UTF-8 over as lone surrogates; they
                # go back to those bytes (which match no token) instead of failing to encode.
                sent = request.headers.get(SERVICE_TOKEN_HEADER, "").encode("utf-8", "surrogateescape")
                if not hmac.compare_digest(sent, expected):
                    raise Unauthorized("this is an internal service: a valid service token is required")
            if given and rid is not given:
                raise ValidationFailed("invalid request", [{"field": REQUEST_ID_HEADER, "message": REQUEST_ID_MESSAGE}])
            if (coding := request.headers.get("Content-Encoding")) is not None and request.body_exists:
                coding = coding.strip().lower()
                if coding not in DECODED_CODINGS and coding not in ("identity", ""):
                    raise UnsupportedMediaType("unsupported content coding",
                                               [{"field": "Content-Encoding", "message": _UNDECODED_MESSAGE}])
            response = await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except web.HTTPException as exc:
            # A redirect (aiohttp's are raised) is an answer too: it gets the headers below, then goes on
            # up raised (aiohttp deprecates returning an exception).
            response = exc if exc.status < 400 else error_answer(exc, request)
        except Exception as exc:
            response = error_answer(exc, request)
        finally:
            metrics.in_flight -= 1
            request_id_var.reset(token)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
            if (extra := request.get(RESPONSE_HEADERS)) is not None:
                response.headers.update(extra)
        metrics.observe(request, response.status, time.perf_counter() - started)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return middleware


HealthCheck = Callable[[web.Application], Awaitable[dict[str, Any]]]
StatusReport = Callable[[web.Application], Awaitable[dict[str, Any]]]
#: The service's part of its heartbeat snapshot (:mod:`shared.heartbeat`): a few numbers, cheap to make.
Snapshot = Callable[[web.Application], dict[str, Any]]


def create_service_app(
    service: str,
    settings: ServiceSettings,
    *,
    health: HealthCheck,
    status: StatusReport,
    internal: bool = True,
    client_max_size: int = 1024**2,
    max_json_bytes: int | None = None,
    middlewares: list[Any] | None = None,
    snapshot: Snapshot | None = None,
    instance_sink: Callable[[web.Application], InstanceSink] | None = None,
) -> web.Application:
    """An application with the middlewares and the ``/health``, ``/status`` and ``/metrics`` routes that
    every service has. ``health`` returns the checks it made (raise :class:`Unavailable` when one fails);
    ``status`` returns the service's own counters. ``max_json_bytes`` caps JSON bodies below
    ``client_max_size``, for an app with one route of larger bodies.

    The app also has its instance's heartbeat (:data:`shared.heartbeat.HEARTBEAT`; started by
    :func:`run`, it deregisters when the app shuts down): it sends the requests in flight and what
    ``snapshot`` adds to the sink ``instance_sink`` makes for the app, by default the registry at
    ``settings.registry_url``."""
    metrics = Metrics(service)
    token = settings.service_token.get_secret_value() if internal and settings.service_token else None
    chain: list[Any] = [service_middleware(metrics, token), *(middlewares or [])]
    app = web.Application(middlewares=chain, client_max_size=client_max_size)
    app[METRICS] = metrics
    if max_json_bytes is not None:
        app[MAX_JSON_BYTES] = max_json_bytes
    started = time.time()
    name = settings.instance_name(service)
    shipper: LogShipper | None = None
    if settings.log_url:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        shipper = LogShipper(settings.log_url, name, level=settings.log_level, buffer=settings.log_buffer,
                             headers={SERVICE_TOKEN_HEADER: token} if token else None)
        metrics.registry.register(_ShippingCollector(shipper))

        async def ship_logs(app: web.Application) -> AsyncIterator[None]:
            async with shipper.running():
                yield

        app.cleanup_ctx.append(ship_logs)

    heartbeat = _heartbeat(app, service, name, settings, snapshot, instance_sink)

    async def health_route(request: web.Request) -> web.Response:
        try:
            checks = await health(request.app)
        except Unavailable as exc:
            return json_response({"status": "unavailable", "service": name, "error": exc.message}, status=503)
        return json_response({"status": "ok", "service": name, "checks": checks})

    async def status_route(request: web.Request) -> web.Response:
        report = await status(request.app)
        if shipper is not None:
            report["log_shipping"] = shipper.stats()
        if heartbeat is not None and heartbeat.url is not None:
            report["instance"] = heartbeat.stats()
        return json_response({"service": name, "uptime_s": round(time.time() - started, 3), **report})

    app.router.add_get("/health", health_route)
    app.router.add_get("/status", status_route)
    app.router.add_get("/metrics", metrics.handle)
    return app


def _heartbeat(app: web.Application, service: str, name: str, settings: ServiceSettings,
               snapshot: Snapshot | None, make_sink: Callable[[web.Application], InstanceSink] | None
               ) -> Heartbeat | None:
    """The app's heartbeat under :data:`HEARTBEAT` (None without a registry to send it to, or with
    heartbeats off), stopped (deregistering) when the app shuts down: after the listener closed, before
    any resource of the app does."""
    sink = make_sink(app) if make_sink is not None else None
    if sink is None and settings.registry_url and settings.instance_heartbeat_s > 0:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        sink = RegistrySink(settings.registry_url, token=token, timeout_s=min(settings.http_timeout_s, 5.0))
    if sink is None or settings.instance_heartbeat_s <= 0:
        app[HEARTBEAT] = None
        return None
    metrics = app[METRICS]

    def status() -> dict[str, Any]:
        return {"in_flight": metrics.in_flight, **(snapshot(app) if snapshot is not None else {})}

    heartbeat = app[HEARTBEAT] = Heartbeat(service, name, sink, interval_s=settings.instance_heartbeat_s,
                                           snapshot=status)

    async def leave(app: web.Application) -> None:
        await heartbeat.stop()

    app.on_shutdown.append(leave)
    return heartbeat


def client_session_ctx(key: web.AppKey[aiohttp.ClientSession], settings: ServiceSettings,
                       limit: int = 200, force_close: bool = False
                       ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry holding a ``ClientSession`` under ``key``; ``force_close`` makes it open a
    new connection for every request instead of reusing kept-alive ones."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, force_close=force_close)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=settings.http_timeout_s)) as session:
            app[key] = session
            yield

    return ctx


def run(app: web.Application, settings: ServiceSettings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (see :func:`shared.server.run`: requests aiohttp refuses
    before any handler get JSON errors too)."""
    server.run(app, settings)
