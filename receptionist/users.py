"""Admin routes: users and their roles, kept by the registry (which hashes passwords; none is ever
returned). A password or roles change, or a removal, revokes the user's older tokens (the gateway
learns it within its ``GATEWAY_REVOCATION_S``)."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from receptionist.access import Caller
from receptionist.keys import REGISTRY
from receptionist.queries import ListQuery, PublicQuery, page_answer, page_of, read_query
from receptionist.relay import relay
from shared.api import PasswordChange, Role, RolesChange, UserCreate
from shared.errors import UpstreamError
from shared.http import path
from shared.web import json_response, read_model


def _admin(request: web.Request) -> Caller:
    """The caller, an admin; these routes take no query parameter but a list's (``GET /users``)."""
    caller = Caller.of(request)
    caller.require(Role.ADMIN)
    if request.method != "GET":
        read_query(request, PublicQuery)
    return caller


async def _registry(request: web.Request, method: str, path: str, **kwargs: object) -> tuple[int, object]:
    try:
        return await request.app[REGISTRY].call(method, path, **kwargs)  # type: ignore[arg-type]
    except UpstreamError as exc:
        raise relay(exc) from exc


async def list_users(request: web.Request) -> web.Response:
    """``GET /users``: every user, by username, a page at a time."""
    _admin(request)
    query = read_query(request, ListQuery)
    _, users = await _registry(request, "GET", "/users")
    items, next_cursor = page_of(users["items"], lambda user: (user["username"],), query, width=1)  # type: ignore[index]
    return page_answer(request, items, next_cursor)


async def add_user(request: web.Request) -> web.Response:
    caller = _admin(request)
    user = await read_model(request, UserCreate)
    _, created = await _registry(request, "POST", "/users", json=user, idempotent=False)
    logger.bind(admin=caller.username, user=user.username, roles=[str(r) for r in user.roles]).info("user added")
    return json_response(created, status=201)


async def remove_user(request: web.Request) -> web.Response:
    caller = _admin(request)
    username = request.match_info["username"]
    await _registry(request, "DELETE", path("users", username))
    logger.bind(admin=caller.username, user=username).info("user removed")
    return web.Response(status=204)


async def change_password(request: web.Request) -> web.Response:
    caller = _admin(request)
    username = request.match_info["username"]
    change = await read_model(request, PasswordChange)
    await _registry(request, "PUT", path("users", username, "password"), json=change)
    logger.bind(admin=caller.username, user=username).info("password changed")
    return web.Response(status=204)


async def change_roles(request: web.Request) -> web.Response:
    caller = _admin(request)
    username = request.match_info["username"]
    change = await read_model(request, RolesChange)
    _, user = await _registry(request, "PUT", path("users", username, "roles"), json=change)
    logger.bind(admin=caller.username, user=username, roles=[str(r) for r in change.roles]).info("roles changed")
    return json_response(user)
