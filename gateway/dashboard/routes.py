"""The dashboard's routes on the gateway, all under ``/dashboard``:

- ``GET /dashboard``: the page (to the login form without a session; a 403 page for a caller who is not
  an operator), ``GET /dashboard/static/{name}``: its files, served from this package;
- ``GET|POST /dashboard/login``, ``POST /dashboard/logout``;
- ``GET /dashboard/live``: queues and instances as server-sent events (:mod:`gateway.dashboard.live`);
- ``/dashboard/api/{path}``: the public API, relayed to a receptionist like any request, with the
  caller the session cookie names instead of a bearer token (:mod:`gateway.dashboard.session`). Only this
  prefix takes the cookie, and every method but GET and HEAD needs the CSRF header.
"""

from __future__ import annotations

import asyncio
import functools
import html
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import ValidationError

from gateway.auth import ANONYMOUS_IDENTITY, Identity
from gateway.dashboard.forms import read_form
from gateway.dashboard.live import KEEPALIVE, LiveHub, frame
from gateway.dashboard.session import COOKIE_PATH, CSRF_HEADER, Sessions
from gateway.proxy import DECISION, IDENTITY, Proxy
from gateway.route_labels import DASHBOARD_API
from shared.api import Role, TokenRequest
from shared.errors import BadRequest, ConveyorError, Forbidden, Unauthorized
from shared.logs import request_id_var
from shared.web import REQUEST_ID_HEADER, RESPONSE_HEADERS

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
#: The pages load nothing from another origin and run no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin"}
API_PREFIX = DASHBOARD_API
#: How long a quiet live stream waits before a keep-alive comment.
KEEPALIVE_S = 15.0

#: ``(username, password)`` to ``(token, user)``: what ``POST /auth/token`` does (:mod:`gateway.app`).
SignIn = Callable[[TokenRequest], Awaitable[tuple[str, dict[str, Any]]]]


@functools.cache
def _template(name: str) -> string.Template:
    return string.Template((STATIC / name).read_text())


@functools.cache
def static_files() -> dict[str, str]:
    """The files served under ``/dashboard/static/``, by name (``views/queues.js``), and their types."""
    return {str(path.relative_to(STATIC)): CONTENT_TYPES[path.suffix] for path in STATIC.rglob("*")
            if path.is_file() and path.suffix in CONTENT_TYPES}


def _page(name: str, status: int = 200, **values: str) -> web.Response:
    text = _template(name).substitute({key: html.escape(value) for key, value in values.items()})
    return web.Response(text=text, status=status, content_type="text/html", headers=PAGE_HEADERS)


def _refused(identity: Identity) -> web.Response:
    roles = ", ".join(identity.roles) or "none"
    return _page("refused.html", 403, username=identity.username, roles=roles)


class Dashboard:
    def __init__(self, sessions: Sessions, proxy: Proxy, live: LiveHub, sign_in: SignIn) -> None:
        self.sessions = sessions
        self.proxy = proxy
        self.live = live
        self.sign_in = sign_in

    async def _session(self, request: web.Request) -> tuple[Identity, str] | None:
        try:
            return await self.sessions.identify(request)
        except Unauthorized:
            return None

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = await self._session(request)
        if session is None:
            response = web.HTTPSeeOther("/dashboard/login")
            if self.sessions.token_of(request):
                self.sessions.end(response)  # an expired or revoked session: forget it
            raise response
        identity, token = session
        if Role.OPERATOR.value not in identity.roles:
            return _refused(identity)
        return _page("index.html", csrf=self.sessions.csrf_for(token), username=identity.username)

    async def login_form(self, request: web.Request, *, status: int = 200, error: str = "",
                         username: str = "") -> web.Response:
        response = web.Response(status=status, content_type="text/html", headers=PAGE_HEADERS)
        csrf = self.sessions.login_csrf(request, response)
        response.text = _template("login.html").substitute(
            csrf=html.escape(csrf), error=html.escape(error), username=html.escape(username))
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        """The form's ``POST``: an operator gets a session and goes to the dashboard; anyone else with a
        right password gets the refusal page; a wrong password, the form again (401); a body that is no
        readable form, the form again (400) naming the field at fault. Every try takes from the address's
        rate limit, as ``POST /auth/token`` does."""
        decision = await self.proxy.take(request, ANONYMOUS_IDENTITY)
        if decision is not None:
            request[RESPONSE_HEADERS] = decision.headers()
            if not decision.allowed:
                return self.proxy.too_many(decision)
        try:
            form = await read_form(request)
        except BadRequest as exc:
            fault = exc.details[0]
            return await self.login_form(request, status=400, error=(
                f"The form could not be read ({fault['field']}: {fault['message']}). Send it again from here."))
        self.sessions.check_login_csrf(request, form.get("csrf", ""))
        username = form.get("username", "")
        try:
            credentials = TokenRequest(username=username, password=form.get("password", ""))
        except ValidationError:
            return await self.login_form(request, status=400, error="Give a username and a password.",
                                         username=username[:64])
        try:
            token, user = await self.sign_in(credentials)
        except Unauthorized:
            return await self.login_form(request, status=401, error="Wrong username or password.",
                                         username=username)
        identity = Identity(user["id"], user["username"], tuple(user["roles"]))
        if Role.OPERATOR.value not in identity.roles:
            logger.bind(user=identity.username).info("dashboard login refused: not an operator")
            return _refused(identity)
        response = web.HTTPSeeOther("/dashboard")
        self.sessions.start(response, request, token)
        logger.bind(user=identity.username, user_id=identity.user_id).info("dashboard login")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session (the form's hidden field or the header carries the CSRF token); without a valid
        session there is nothing to end, and the cookie goes all the same."""
        session = await self._session(request)
        if session is not None:
            form = await read_form(request)  # a body that is not a form: a 400 (JSON, as the 403 below)
            given = form.get("csrf", "") or request.headers.get(CSRF_HEADER, "")
            self.sessions.check_csrf_value(session[1], given)
            logger.bind(user=session[0].username).info("dashboard logout")
        response = web.HTTPSeeOther("/dashboard/login")
        self.sessions.end(response)
        raise response

    async def _operator(self, request: web.Request) -> tuple[Identity, str]:
        identity, token = await self.sessions.identify(request)
        if Role.OPERATOR.value not in identity.roles:
            raise Forbidden("the dashboard is for operators", [{"field": "role", "message": "operator required"}])
        return identity, token

    async def api(self, request: web.Request) -> web.StreamResponse:
        """Relay ``/dashboard/api/<path>`` as ``/<path>``, as the session's caller."""
        identity, token = await self._operator(request)
        self.sessions.check_csrf(request, token)
        decision = await self.proxy.take(request, identity)
        if decision is not None:
            request[RESPONSE_HEADERS] = decision.headers()
            if not decision.allowed:
                return self.proxy.too_many(decision)
            request[DECISION] = decision
        request[IDENTITY] = identity
        tail = _after_prefix(request.rel_url.raw_path_qs, API_PREFIX)
        if not tail.startswith("/"):
            tail = "/" + tail
        return await self.proxy.handle(request, tail=tail)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /dashboard/live``: a ``hello`` event with the last hour's rates, then a ``snapshot`` event
        each tick; ``logout`` when the session stops being valid."""
        await self._operator(request)
        # Sent before the middleware sees it: the headers every answer carries go on here.
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
            REQUEST_ID_HEADER: request_id_var.get() or "", **request.get(RESPONSE_HEADERS, {})})
        await response.prepare(request)
        if request.method == "HEAD":  # the headers only: a body would never end, and the next request waits
            await response.write_eof()
            return response
        try:
            async with self.live.watching():
                version, snapshot = self.live.version, self.live.snapshot
                await response.write(frame("hello", {"history": self.live.history_view(), "tick_s": self.live.tick_s,
                                                     "gap_s": self.live.gap_s, "snapshot": snapshot}))
                while request.transport is not None and not request.transport.is_closing():
                    version, snapshot = await self.live.next_after(version, KEEPALIVE_S)
                    if snapshot is None:
                        await response.write(KEEPALIVE)
                        continue
                    try:
                        await self._operator(request)  # revoked meanwhile (cheap: the epoch is cached)
                    except ConveyorError:
                        await response.write(frame("logout", {}))
                        break
                    await response.write(frame("snapshot", snapshot))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = static_files().get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={
            "Content-Type": content_type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def _after_prefix(raw: str, prefix: str) -> str:
    """The rest of the raw path and query ``raw`` after ``prefix``, each of whose characters may come
    percent-encoded (``/dashboard/ap%69/queues`` is the route's too): the rest keeps its own encoding, as
    the client sent it, for the relay. The route matched the decoded path, so the prefix is there."""
    at = 0
    for char in prefix:
        if raw.startswith(char, at):
            at += 1
        elif raw[at:at + 1] == "%" and raw[at + 1:at + 3].upper() == f"{ord(char):02X}":
            at += 3
        else:
            raise ValueError(f"{raw[:80]!r} does not start with {prefix!r}")
    return raw[at:]


def add_routes(app: web.Application, dashboard: Dashboard) -> None:
    from gateway.docs import refuse_other_methods

    router = app.router
    router.add_get("/dashboard", dashboard.index)
    router.add_get("/dashboard/", _redirect)
    router.add_get("/dashboard/login", dashboard.login_form)
    router.add_post("/dashboard/login", dashboard.login)
    router.add_post("/dashboard/logout", dashboard.logout)
    router.add_get("/dashboard/live", dashboard.stream)
    router.add_get("/dashboard/static/{name:.+}", dashboard.static)
    router.add_route("*", API_PREFIX + "/{tail:.*}", dashboard.api)
    for path, allowed in (("/dashboard", ("GET", "HEAD")), ("/dashboard/login", ("GET", "HEAD", "POST")),
                          ("/dashboard/logout", ("POST",)), ("/dashboard/live", ("GET", "HEAD"))):
        refuse_other_methods(app, path, *allowed)
    router.add_route("*", COOKIE_PATH + "/{other:.*}", _not_found)


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/dashboard")


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()
