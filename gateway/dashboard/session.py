"""The dashboard's session: a cookie that holds the same signed token ``POST /auth/token`` issues, and the
CSRF token that goes with it.

- The cookie (:data:`SESSION_COOKIE`) is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other
  site's page makes the browser send it), ``Path=/dashboard`` (only the dashboard's routes get it: the
  public API never takes a cookie, so it needs no CSRF defence) and ``Secure`` when the request came over
  https (or ``GATEWAY_DASHBOARD_SECURE_COOKIE`` says so). It lives as long as the token.
- Nothing is kept on the server: any gateway that shares the signing secret takes the cookie, and the
  token's epoch revokes it like any token (a password or roles change, a removed user).
- The CSRF token is an HMAC of the session token under the signing secret, so it is bound to one session
  and needs no storage either. The page gets it in a ``<meta>`` tag and sends it as :data:`CSRF_HEADER` on
  every request that is not a GET or HEAD; a missing or wrong one is a 403 (JSON).
- The login form is protected the same way before there is a session (a double-submit cookie,
  :data:`LOGIN_CSRF_COOKIE`, matched against the form's hidden field), so another site cannot log a
  browser in under its own account.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from gateway.auth import Authenticator, Identity
from shared.errors import Forbidden, Unauthorized

SESSION_COOKIE = "conveyor_session"
LOGIN_CSRF_COOKIE = "conveyor_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/dashboard"
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Sessions:
    """Makes, reads and checks dashboard sessions."""

    def __init__(self, auth: Authenticator, secret: str, *, secure: bool | None, trust_forwarded: bool) -> None:
        self.auth = auth
        self._key = hashlib.sha256(b"conveyor-dashboard-csrf\x00" + secret.encode()).digest()
        self._secure = secure
        self._trust_forwarded = trust_forwarded

    def secure(self, request: web.Request) -> bool:
        """Whether cookies get ``Secure``: the setting, else whether the browser talks https to us (as a
        trusted proxy in front says, with ``X-Forwarded-Proto``)."""
        if self._secure is not None:
            return self._secure
        if self._trust_forwarded and request.headers.get("X-Forwarded-Proto", "").lower() == "https":
            return True
        return request.secure

    def csrf_for(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def token_of(self, request: web.Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        return token if token and token.isascii() else None

    async def identify(self, request: web.Request) -> tuple[Identity, str]:
        """The session's caller and its token; :class:`Unauthorized` when there is no valid session."""
        token = self.token_of(request)
        if token is None:
            raise Unauthorized("log in to the dashboard first", [{"field": SESSION_COOKIE, "message": "missing"}])
        try:
            return await self.auth.identify("Bearer " + token), token
        except Unauthorized as exc:
            # The token came as this cookie, not as the Authorization header the error would name, and its
            # holder logs in at the console, not at POST /auth/token.
            why = ", ".join(detail.get("message", "") for detail in exc.details) or "not valid"
            raise Unauthorized(f"the dashboard session is over ({why}): log in to the dashboard again", [
                {**detail, "field": SESSION_COOKIE} if detail.get("field") == "Authorization" else detail
                for detail in exc.details]) from None

    def check_csrf(self, request: web.Request, token: str) -> None:
        """Every request that may change something carries the session's CSRF token."""
        if request.method in SAFE_METHODS:
            return
        self.check_csrf_value(token, request.headers.get(CSRF_HEADER, ""))

    def check_csrf_value(self, token: str, given: str) -> None:
        if not (given.isascii() and hmac.compare_digest(given.encode(), self.csrf_for(token).encode())):
            raise Forbidden("a CSRF token is required", [{"field": CSRF_HEADER, "message": "missing or wrong"}])

    def start(self, response: web.StreamResponse, request: web.Request, token: str) -> None:
        response.set_cookie(SESSION_COOKIE, token, max_age=int(self.auth.ttl_s), path=COOKIE_PATH, httponly=True,
                            samesite="Strict", secure=self.secure(request))
        response.del_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)

    def end(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)

    def login_csrf(self, request: web.Request, response: web.StreamResponse) -> str:
        """The login form's CSRF value: the browser's cookie when it has one, else a new one set now."""
        value = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not value or len(value) > 100 or not value.isascii():
            value = secrets.token_urlsafe(24)
        response.set_cookie(LOGIN_CSRF_COOKIE, value, path=COOKIE_PATH, httponly=True, samesite="Strict",
                            secure=self.secure(request))
        return value

    def check_login_csrf(self, request: web.Request, given: str) -> None:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not (expected and given.isascii() and expected.isascii()
                and hmac.compare_digest(given.encode(), expected.encode())):
            raise Forbidden("a CSRF token is required: reload the login page",
                            [{"field": "csrf", "message": "missing or wrong"}])
