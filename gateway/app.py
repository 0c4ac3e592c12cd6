"""The gateway application: its own ``/health``, ``/status`` and ``/metrics``, and every other path
relayed to a receptionist."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from gateway.auth import ANONYMOUS_IDENTITY, Authenticator
from gateway.docs import add_docs_routes, refuse_other_methods
from gateway.proxy import Proxy
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings
from gateway.upstreams import UpstreamPool
from shared.api import TokenAnswer, TokenRequest
from shared.errors import Unauthorized, Unavailable, UpstreamError
from shared.http import ServiceClient
from shared.web import client_session_ctx, create_service_app, json_response, read_model

SESSION = web.AppKey("session", aiohttp.ClientSession)
#: New connection per request, for requests that may not be replayed (see gateway.proxy).
FRESH_SESSION = web.AppKey("fresh_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
REGISTRY = web.AppKey("registry", ServiceClient)


def create_app(settings: Settings) -> web.Application:
    pool = UpstreamPool(settings.receptionists, cooloff_s=settings.cooloff_s,
                        health_interval_s=settings.health_interval_s, health_timeout_s=settings.health_timeout_s)
    limiter = None
    if settings.rate_limit_per_s > 0:
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst,
                              max_clients=settings.rate_limit_max_clients)
    role_limiters = {
        role: RateLimiter(rate, max(settings.rate_limit_burst, int(rate * 2)), max_clients=settings.rate_limit_max_clients)
        for role, rate in settings.role_rate_limits.items() if rate > 0
    }
    if settings.jwt_secret is None:
        logger.warning("no GATEWAY_JWT_SECRET: tokens are signed with a secret made now, valid until a restart")
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else secrets.token_urlsafe(48)
    auth = Authenticator(secret, ttl_s=settings.token_ttl_s, required=settings.auth == "required")
    proxy = Proxy(pool, limiter,
                  service_token=settings.service_token.get_secret_value() if settings.service_token else None,
                  upstream_timeout_s=settings.upstream_timeout_s, max_body_bytes=settings.client_max_size,
                  trust_forwarded=settings.trust_forwarded, auth=auth, role_limiters=role_limiters)

    async def health(app: web.Application) -> dict[str, Any]:
        if not pool.any_available():
            raise Unavailable("no receptionist available", retry_after_s=pool.retry_after_s())
        return {"receptionists": [{"url": u["url"], "up": u["up"]} for u in pool.report()]}

    async def status(app: web.Application) -> dict[str, Any]:
        report: dict[str, Any] = {"upstreams": pool.report(), **proxy.stats()}
        if limiter is not None:
            report["rate_limit"] = {"per_s": limiter.rate_per_s, "burst": limiter.burst, "clients": len(limiter)}
        return report

    # The body limit is checked by the proxy against Content-Length: bodies are streamed, not read.
    app = create_service_app("gateway", settings, health=health, status=status, internal=False,
                             client_max_size=settings.client_max_size)
    app[PROXY] = proxy
    app.cleanup_ctx.append(client_session_ctx(SESSION, settings, limit=settings.upstream_connections))
    app.cleanup_ctx.append(client_session_ctx(FRESH_SESSION, settings, limit=settings.upstream_connections,
                                              force_close=True))
    app.cleanup_ctx.append(_upkeep)

    async def registry_client(app: web.Application) -> AsyncIterator[None]:
        token = settings.service_token.get_secret_value() if settings.service_token else None
        app[REGISTRY] = ServiceClient("registry", settings.registry_url, app[SESSION], token=token,
                                      timeout_s=settings.http_timeout_s)
        yield

    app.cleanup_ctx.append(registry_client)
    app.router.add_post("/auth/token", issue_token)
    refuse_other_methods(app, "/auth/token", "POST")
    add_docs_routes(app)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def issue_token(request: web.Request) -> web.Response:
    """``POST /auth/token {username, password}``: a signed token naming the user, its roles and
    permissions. The registry checks the password; a wrong one is a 401 like an unknown user."""
    proxy = request.app[PROXY]
    decision = proxy.take(request, ANONYMOUS_IDENTITY)  # by address: guessing passwords costs time
    if decision is not None and not decision.allowed:
        return proxy.too_many(decision)
    credentials = await read_model(request, TokenRequest)
    try:
        _, user = await request.app[REGISTRY].post("/users/verify", json=credentials)
    except UpstreamError as exc:
        if exc.upstream_status == 401:
            raise Unauthorized("invalid username or password") from None
        raise
    assert proxy.auth is not None
    token = proxy.auth.issue(user["username"], user["roles"], user["permissions"])
    logger.bind(user=user["username"]).info("token issued")
    return json_response(TokenAnswer(access_token=token, expires_in=int(proxy.auth.ttl_s)))


async def _upkeep(app: web.Application) -> AsyncIterator[None]:
    """Hand the session to the proxy and probe the receptionists while the app runs."""
    proxy = app[PROXY]
    session = app[SESSION]
    proxy.session = session
    proxy.fresh_session = app[FRESH_SESSION]
    task = asyncio.create_task(proxy.pool.health_loop(session), name="gateway-health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        proxy.session = proxy.fresh_session = None
