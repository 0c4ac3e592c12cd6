"""The gateway application: its own ``/health``, ``/status`` and ``/metrics`` (those two for operators and
scrapers, see :mod:`gateway.admission`), and every other path relayed to a receptionist."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger
from prometheus_client import Counter

from gateway import route_labels
from gateway.admission import MetricsToken, admission_middleware
from gateway.auth import Authenticator
from gateway.dashboard.live import LiveHub
from gateway.dashboard.routes import Dashboard
from gateway.dashboard.routes import add_routes as add_dashboard_routes
from gateway.dashboard.session import Sessions
from gateway.discovery import discovery_loop
from gateway.docs import add_docs_routes, refuse_other_methods
from gateway.epochs import EpochCache
from gateway.openapi import build_spec
from gateway.proxy import Proxy
from gateway.ratelimit import RateLimits
from gateway.settings import Settings
from gateway.upstreams import UpstreamPool
from shared.api import TokenAnswer, TokenRequest
from shared.errors import Unauthorized, Unavailable, UpstreamError
from shared.http import ServiceClient, path
from shared.kinds import load_kinds
from shared.web import METRICS, client_session_ctx, create_service_app, json_response, read_model

SESSION = web.AppKey("session", aiohttp.ClientSession)
#: New connection per request, for requests that may not be replayed (see gateway.proxy).
FRESH_SESSION = web.AppKey("fresh_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
REGISTRY = web.AppKey("registry", ServiceClient)
DASHBOARD_LIVE = web.AppKey("dashboard_live", LiveHub)


def create_app(settings: Settings) -> web.Application:
    load_kinds()  # the kinds the document describes: a bad one stops the gateway here
    build_spec()
    pool = UpstreamPool(settings.receptionists, cooloff_s=settings.cooloff_s,
                        health_interval_s=settings.health_interval_s, health_timeout_s=settings.health_timeout_s)
    limits = RateLimits.from_settings(settings)
    if settings.jwt_secret is None:
        logger.warning("no GATEWAY_JWT_SECRET: tokens are signed with a secret made now, valid until a restart")
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else secrets.token_urlsafe(48)
    epochs = EpochCache(settings.revocation_s, settings.revocation_cache_users)
    auth = Authenticator(secret, ttl_s=settings.token_ttl_s, required=settings.auth == "required", epochs=epochs)
    proxy = Proxy(pool, limits,
                  service_token=settings.service_token.get_secret_value() if settings.service_token else None,
                  upstream_timeout_s=settings.upstream_timeout_s, max_body_bytes=settings.client_max_size,
                  trust_forwarded=settings.trust_forwarded, auth=auth, connections=settings.upstream_connections)

    async def health(app: web.Application) -> dict[str, Any]:
        if not pool.any_available():
            raise Unavailable("no receptionist available", retry_after_s=pool.retry_after_s())
        return {"receptionists": [{"url": u["url"], "up": u["up"]} for u in pool.report()]}

    async def status(app: web.Application) -> dict[str, Any]:
        report: dict[str, Any] = {"upstreams": pool.report(), **proxy.stats(), "token_epochs": epochs.stats()}
        rate_limit = limits.stats()
        if rate_limit is not None:
            report["rate_limit"] = rate_limit
        return report

    # The body limit is checked by the proxy against Content-Length: bodies are streamed, not read.
    metrics_token = MetricsToken(settings.metrics_token.get_secret_value() if settings.metrics_token else None)
    def snapshot(app: web.Application) -> dict[str, Any]:
        upstreams = pool.report()
        return {"receptionists": len(upstreams), "receptionists_up": sum(u["up"] for u in upstreams),
                "proxied": proxy.proxied}

    app = create_service_app("gateway", settings, health=health, status=status, internal=False,
                             client_max_size=settings.client_max_size, snapshot=snapshot,
                             middlewares=[admission_middleware(proxy, metrics_token)])
    app[PROXY] = proxy
    app[METRICS].route_label = route_labels.label
    app.cleanup_ctx.append(client_session_ctx(SESSION, settings, limit=settings.upstream_connections))
    app.cleanup_ctx.append(client_session_ctx(FRESH_SESSION, settings, limit=settings.upstream_connections,
                                              force_close=True))
    app.cleanup_ctx.append(_upkeep)
    if limits.buckets is not None:
        fallbacks = Counter("conveyor_gateway_rate_limit_fallbacks",
                            "Requests whose rate limit was decided in process because its Redis was unreachable",
                            registry=app[METRICS].registry)
        limits.buckets.on_fallback = fallbacks.inc

    async def rate_limits(app: web.Application) -> AsyncIterator[None]:
        await limits.open()
        try:
            yield
        finally:
            await limits.close()

    app.cleanup_ctx.append(rate_limits)

    async def registry_client(app: web.Application) -> AsyncIterator[None]:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        registry = app[REGISTRY] = ServiceClient("registry", settings.registry_url, app[SESSION], token=token,
                                                 timeout_s=settings.http_timeout_s)

        async def fetch_epoch(user_id: str) -> int | None:
            try:
                _, answer = await registry.get(path("user-epochs", user_id))
            except UpstreamError as exc:
                if exc.upstream_status == 404:
                    return None  # removed: every token of theirs is refused
                raise
            return int(answer["epoch"])

        epochs.fetch = fetch_epoch
        discovery = (asyncio.create_task(discovery_loop(pool, registry, app[SESSION], settings.discovery_interval_s),
                                         name="gateway-discovery") if settings.discovery_interval_s > 0 else None)
        yield
        if discovery is not None:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
        epochs.fetch = None

    app.cleanup_ctx.append(registry_client)
    app.router.add_post("/auth/token", issue_token)
    refuse_other_methods(app, "/auth/token", "POST")
    add_docs_routes(app)
    sessions = Sessions(auth, secret, secure=settings.dashboard_secure_cookie, trust_forwarded=settings.trust_forwarded)
    live = LiveHub(proxy, tick_s=settings.dashboard_tick_s, sample_s=settings.dashboard_sample_s,
                   timeout_s=settings.http_timeout_s)
    app[DASHBOARD_LIVE] = live

    async def live_loop(app: web.Application) -> AsyncIterator[None]:
        live.start()  # after _upkeep: it reads through the proxy's session
        yield
        await live.stop()

    app.cleanup_ctx.append(live_loop)
    add_dashboard_routes(app, Dashboard(sessions, proxy, live, functools.partial(sign_in, app)))
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def sign_in(app: web.Application, credentials: TokenRequest) -> tuple[str, dict[str, Any]]:
    """A signed token for these credentials, and the registry's user: :class:`Unauthorized` for a wrong
    password or an unknown user alike."""
    proxy = app[PROXY]
    asked_at = time.monotonic()
    try:
        _, user = await app[REGISTRY].post("/users/verify", json=credentials)
    except UpstreamError as exc:
        if exc.upstream_status == 401:
            raise Unauthorized("invalid username or password") from None
        raise
    assert proxy.auth is not None
    token = proxy.auth.issue(user["id"], user["username"], user["roles"], user["permissions"], user["epoch"])
    if proxy.auth.epochs is not None:  # the registry just said: no need to ask again on the first request
        proxy.auth.epochs.remember(user["id"], user["epoch"], since=asked_at)
    logger.bind(user=user["username"], user_id=user["id"]).info("token issued")
    return token, user


async def issue_token(request: web.Request) -> web.Response:
    """``POST /auth/token {username, password}``: a signed token naming the user (their id and name), its
    roles, permissions and token epoch. The registry checks the password; a wrong one is a 401 like an
    unknown user. Every try takes from the address's rate limit (:mod:`gateway.admission`): guessing
    passwords costs time."""
    credentials = await read_model(request, TokenRequest)
    token, _ = await sign_in(request.app, credentials)
    assert request.app[PROXY].auth is not None
    return json_response(TokenAnswer(access_token=token, expires_in=int(request.app[PROXY].auth.ttl_s)))


async def _upkeep(app: web.Application) -> AsyncIterator[None]:
    """Hand the session to the proxy and probe the receptionists while the app runs."""
    proxy = app[PROXY]
    session = app[SESSION]
    proxy.session = session
    proxy.fresh_session = app[FRESH_SESSION]
    proxy.client = proxy.new_client()
    task = asyncio.create_task(proxy.pool.health_loop(session), name="gateway-health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.client.close()
        proxy.session = proxy.fresh_session = proxy.client = None
