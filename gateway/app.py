"""The gateway application: its own ``/health``, ``/status`` and ``/metrics``, and every other path
relayed to a receptionist."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.proxy import Proxy
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings
from gateway.upstreams import UpstreamPool
from shared.errors import Unavailable
from shared.web import client_session_ctx, create_service_app

SESSION = web.AppKey("session", aiohttp.ClientSession)
#: New connection per request, for requests that may not be replayed (see gateway.proxy).
FRESH_SESSION = web.AppKey("fresh_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)


def create_app(settings: Settings) -> web.Application:
    pool = UpstreamPool(settings.receptionists, cooloff_s=settings.cooloff_s,
                        health_interval_s=settings.health_interval_s, health_timeout_s=settings.health_timeout_s)
    limiter = None
    if settings.rate_limit_per_s > 0:
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst,
                              max_clients=settings.rate_limit_max_clients)
    proxy = Proxy(pool, limiter,
                  service_token=settings.service_token.get_secret_value() if settings.service_token else None,
                  upstream_timeout_s=settings.upstream_timeout_s, max_body_bytes=settings.client_max_size,
                  trust_forwarded=settings.trust_forwarded)

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
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


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
