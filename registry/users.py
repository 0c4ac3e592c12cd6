"""The registry's users: their routes, and the password work between the routes and the store.

    POST   /users                       UserCreate -> 201 User; 409 when the username is taken
    GET    /users                       -> UserList, by username
    GET    /users/{username}            -> User; 404
    DELETE /users/{username}            -> 204; 404
    PUT    /users/{username}/password   PasswordChange -> 204; 404
    PUT    /users/{username}/roles      RolesChange -> User; 404
    POST   /users/verify                TokenRequest -> VerifiedUser; 401 for a wrong password or an unknown user
    GET    /user-epochs/{id}            -> UserEpoch; 404 when no user has that id (any more)

Internal routes: the gateway lets only admins reach the management ones, calls ``/users/verify`` itself
at login and ``/user-epochs/{id}`` to learn whether a token still counts (a password or roles change adds
one to the user's epoch; a removal makes the id unknown). Answers carry :class:`shared.api.User`, never a
password or its hash.

Hashing runs in a worker thread (:func:`asyncio.to_thread`): scrypt is meant to cost tens of milliseconds
of CPU, which on the event loop would stall every other request for as long.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from aiohttp import web
from loguru import logger

from registry.passwords import UNKNOWN_USER_HASH, hash_password, verify_password
from registry.store.base import JobStore, StoredUser
from shared.api import PasswordChange, RolesChange, TokenRequest, UserCreate, UserEpoch, UserList, VerifiedUser
from shared.contract import utcnow
from shared.errors import Conflict, NotFound, Unauthorized
from shared.web import json_response, read_model


async def new_user(spec: UserCreate, now: datetime) -> StoredUser:
    """The account ``spec`` asks for, with its password hashed; roles keep their order, once each."""
    password_hash = await asyncio.to_thread(hash_password, spec.password)
    return StoredUser(id=uuid.uuid4(), username=spec.username, password_hash=password_hash,
                      roles=list(dict.fromkeys(spec.roles)), permissions=spec.permissions, created_at=now,
                      updated_at=now)


async def authenticate(store: JobStore, username: str, password: str) -> StoredUser | None:
    """The user when ``password`` is theirs; None when it is not or the username is unknown. An unknown
    username is checked against :data:`registry.passwords.UNKNOWN_USER_HASH`, so both refusals cost one
    scrypt and their timing does not tell an unknown user from a wrong password."""
    user = await store.get_user(username)
    stored = user.password_hash if user is not None else UNKNOWN_USER_HASH
    matches = await asyncio.to_thread(verify_password, password, stored)
    return user if matches and user is not None else None


def _not_found(username: str) -> NotFound:
    return NotFound(f"user {username} not found", [{"field": "username", "message": "no such user"}])


async def _delete_schedules_of(store: JobStore, owner: str) -> int:
    """Remove every schedule of ``owner``; how many."""
    removed = 0
    while page := (await store.list_schedules(owner=owner, limit=1000)).items:
        for schedule in page:
            removed += await store.delete_schedule(schedule.id)
    return removed


def add_user_routes(app: web.Application, store_key: web.AppKey[JobStore]) -> None:
    """Add the user routes to the registry app, which keeps its store under ``store_key``."""

    async def create_user(request: web.Request) -> web.Response:
        spec = await read_model(request, UserCreate)
        user = await new_user(spec, utcnow())
        if not await request.app[store_key].create_user(user):
            raise Conflict(f"user {user.username} exists", [{"field": "username", "message": "already taken"}])
        logger.info("user {} created with roles {}", user.username, ", ".join(user.roles))
        return json_response(user.public(), status=201)

    async def list_users(request: web.Request) -> web.Response:
        users = await request.app[store_key].list_users()
        return json_response(UserList(items=[user.public() for user in users]))

    async def get_user(request: web.Request) -> web.Response:
        username = request.match_info["username"]
        user = await request.app[store_key].get_user(username)
        if user is None:
            raise _not_found(username)
        return json_response(user.public())

    async def delete_user(request: web.Request) -> web.Response:
        """Remove a user, and their schedules: nobody else may remove those, and they would fire in the name
        of someone who is gone (the firers pause any that a removal meets half done). Their jobs stay."""
        username = request.match_info["username"]
        store = request.app[store_key]
        user = await store.get_user(username)
        if user is None or not await store.delete_user(username):
            raise _not_found(username)
        removed = await _delete_schedules_of(store, str(user.id))
        logger.bind(schedules_removed=removed).info("user {} deleted", username)
        return web.Response(status=204)

    async def set_password(request: web.Request) -> web.Response:
        username = request.match_info["username"]
        body = await read_model(request, PasswordChange)
        password_hash = await asyncio.to_thread(hash_password, body.password)
        if not await request.app[store_key].set_password(username, password_hash, utcnow()):
            raise _not_found(username)
        logger.info("password of user {} changed", username)
        return web.Response(status=204)

    async def set_roles(request: web.Request) -> web.Response:
        username = request.match_info["username"]
        body = await read_model(request, RolesChange)
        user = await request.app[store_key].set_roles(username, list(dict.fromkeys(body.roles)), utcnow())
        if user is None:
            raise _not_found(username)
        logger.info("roles of user {} set to {}", username, ", ".join(user.roles))
        return json_response(user.public())

    async def epoch(request: web.Request) -> web.Response:
        try:
            user_id = uuid.UUID(request.match_info["user_id"])
        except ValueError:
            user_id = None
        user = await request.app[store_key].get_user_by_id(user_id) if user_id is not None else None
        if user is None:
            raise NotFound("no user has this id", [{"field": "id", "message": "no such user"}])
        return json_response(UserEpoch(id=user.id, epoch=user.epoch))

    async def verify(request: web.Request) -> web.Response:
        body = await read_model(request, TokenRequest)
        user = await authenticate(request.app[store_key], body.username, body.password)
        if user is None:
            # One answer for both refusals: it must not tell which usernames exist. No log line either:
            # the gateway logs the refused login, and a "username" that is a mistyped password must not
            # land in the logs.
            raise Unauthorized("invalid username or password")
        return json_response(VerifiedUser(**user.public().model_dump(), epoch=user.epoch))

    app.router.add_post("/users", create_user)
    app.router.add_get("/users", list_users)
    app.router.add_post("/users/verify", verify)
    app.router.add_get("/users/{username}", get_user)
    app.router.add_delete("/users/{username}", delete_user)
    app.router.add_put("/users/{username}/password", set_password)
    app.router.add_put("/users/{username}/roles", set_roles)
    app.router.add_get("/user-epochs/{user_id}", epoch)
