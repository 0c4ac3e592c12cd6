"""What every request to the gateway goes through before its handler: who calls, whether its rate limit lets
it in, and whether it may see the operators' routes.

- A relayed request is identified by its bearer token (:mod:`gateway.auth`) and takes from its user's
  bucket, or its address's when it has no user. The gateway's own public routes (``/health``,
  ``/auth/token``, the API's description) are not identified: they count by address.
- A failed authentication (a bad or expired token) takes from the address's bucket too, so guessing
  tokens is bounded like any other request; ``POST /auth/token`` always takes from it, so guessing
  passwords is too. The other routes of the gateway's own take nothing (a probe of ``/health`` is never
  refused) but tell where the caller's bucket stands.
- ``/status`` and ``/metrics`` need the operator role, or the metrics token (``GATEWAY_METRICS_TOKEN``,
  sent as ``Authorization: Bearer <token>``, as a Prometheus scrape config sends it): 401 without
  credentials, 403 for any other caller.
- Every answer, errors included, carries the ``RateLimit-*`` headers of the bucket it took from.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.auth import ANONYMOUS_IDENTITY, Identity
from gateway.proxy import DECISION, IDENTITY, Proxy
from gateway.ratelimit import Decision
from shared.api import Role
from shared.errors import Forbidden, Unauthorized
from shared.web import RESPONSE_HEADERS

#: The gateway's own routes for operators and scrapers.
OPERATOR_PATHS = frozenset({"/status", "/metrics"})
#: Logins: limited by address, like a failed authentication.
TOKEN_PATH = "/auth/token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsToken:
    """The scrapers' token, compared in constant time."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def matches(self, authorization: str | None) -> bool:
        if self._token is None or not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            raw = given.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(raw, self._token)


def admission_middleware(proxy: Proxy, metrics_token: MetricsToken) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that admits (or refuses) every request, as the module says."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        relayed = request.match_info.route.handler == proxy.handle
        guarded = request.path in OPERATOR_PATHS
        scraper = guarded and metrics_token.matches(request.headers.get("Authorization"))
        identity = ANONYMOUS_IDENTITY
        if relayed or (guarded and not scraper):
            try:
                identity = await proxy.identify(request)
            except Unauthorized:
                # A failed authentication is paid for by the address it came from.
                decision = await proxy.take(request, ANONYMOUS_IDENTITY)
                _tell(request, decision)
                if decision is not None and not decision.allowed:
                    return proxy.too_many(decision)
                raise
        # The gateway's own routes are not limited (a probe of /health must not fail for it), logins
        # aside; they tell where the bucket stands all the same.
        decision = await proxy.take(request, identity, peek=not (relayed or request.path == TOKEN_PATH))
        _tell(request, decision)
        if decision is not None and not decision.allowed:
            return proxy.too_many(decision)
        if guarded and not scraper:
            _require_operator(identity)
        request[IDENTITY] = identity
        if decision is not None:
            request[DECISION] = decision
        return await handler(request)

    return middleware


def _tell(request: web.Request, decision: Decision | None) -> None:
    """Every answer to ``request``, errors included, carries where its bucket stands (:mod:`shared.web`
    adds the headers)."""
    if decision is not None:
        request[RESPONSE_HEADERS] = decision.headers()


def _require_operator(identity: Identity) -> None:
    if identity.anonymous:
        raise Unauthorized("this needs an operator's token or the metrics token",
                           [{"field": "Authorization", "message": "missing"}])
    if Role.OPERATOR.value not in identity.roles:
        raise Forbidden("this needs the operator role or the metrics token",
                        [{"field": "role", "message": "operator required"}])
