"""The registry's user routes, served for real on loopback (``aiohttp_client``) over a memory store.

Every answer goes through :meth:`Api.call`, which fails the test when an answer shows a password hash or
one of the passwords the test used."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from loguru import logger

import registry.users
from registry.app import create_app
from registry.passwords import UNKNOWN_USER_HASH
from registry.settings import Settings

ALICE_PASSWORD = "alice-secret-1"
BOB_PASSWORD = "bob-secret-22"
NEW_PASSWORD = "alice-secret-new"
SECRETS = ("password_hash", "scrypt", ALICE_PASSWORD, BOB_PASSWORD, NEW_PASSWORD)
REFUSED = {"error": "invalid username or password", "details": []}


class Api:
    """The test client, checking every answer for secrets."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        async with self.client.request(method, path, **kwargs) as resp:
            text = await resp.text()
            assert resp.status == expect, text
        for secret in SECRETS:
            assert secret not in text, f"{method} {path} answered with {secret!r}: {text}"
        if expect == 204:
            assert text == ""
            return None
        assert resp.content_type == "application/json"
        return orjson.loads(text)

    async def create(self, username: str, password: str, expect: int = 201, **fields: Any) -> Any:
        return await self.call("POST", "/users", expect, json={"username": username, "password": password, **fields})

    async def verify(self, username: str, password: str, expect: int = 200) -> Any:
        return await self.call("POST", "/users/verify", expect, json={"username": username, "password": password})


@pytest.fixture
async def api(aiohttp_client: Any) -> Api:
    return Api(await aiohttp_client(create_app(Settings(store_url="memory://"))))


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


def fields_of(body: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in body["details"]}


async def test_create_and_get(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD)
    assert set(alice) == {"id", "username", "roles", "permissions", "created_at"}
    assert (alice["username"], alice["roles"], alice["permissions"]) == ("alice", ["user"], [])
    assert str(uuid.UUID(alice["id"])) == alice["id"]
    assert datetime.fromisoformat(alice["created_at"]).utcoffset() is not None
    assert await api.call("GET", "/users/alice", 200) == alice

    bob = await api.create("bob", BOB_PASSWORD, roles=["operator", "admin", "operator"],
                           permissions=["redrive", "export", "redrive"])
    # Roles once each in the order given; permissions sorted and once each (shared.api.UserCreate).
    assert (bob["roles"], bob["permissions"]) == (["operator", "admin"], ["export", "redrive"])
    assert bob["id"] != alice["id"]
    assert await api.call("GET", "/users/bob", 200) == bob


async def test_existing_username_is_409_and_keeps_the_user(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD)
    body = await api.create("alice", NEW_PASSWORD, expect=409, roles=["admin"])
    assert body == {"error": "user alice exists", "details": [{"field": "username", "message": "already taken"}]}
    assert await api.call("GET", "/users/alice", 200) == alice
    assert await api.verify("alice", ALICE_PASSWORD) == {**alice, "epoch": 1}
    assert await api.verify("alice", NEW_PASSWORD, expect=401) == REFUSED
    # Usernames are case-sensitive: another user, not a clash.
    assert (await api.create("Alice", NEW_PASSWORD))["username"] == "Alice"


@pytest.mark.parametrize(("body", "fields"), [
    ({"username": "alice", "password": "short"}, {"password"}),
    ({"username": "-alice", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "al ice", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "bob\n", "password": ALICE_PASSWORD}, {"username"}),  # `$` alone would let a newline end it
    ({"username": "alice", "password": ALICE_PASSWORD, "roles": ["root"]}, {"roles.0"}),
    ({"username": "alice", "password": ALICE_PASSWORD, "roles": []}, {"roles"}),
    ({"username": "alice", "password": ALICE_PASSWORD, "permissions": ["Bad Name"]}, {"permissions"}),
    ({"username": "alice", "password": ALICE_PASSWORD, "is_admin": True}, {"is_admin"}),
    ({"username": "alice"}, {"password"}),
    ({"password": ALICE_PASSWORD}, {"username"}),
    ({"username": "alice", "password": 12345678}, {"password"}),
    # Names the system uses itself, whatever their case.
    ({"username": "anonymous", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "Anonymous", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "system", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "conveyor", "password": ALICE_PASSWORD}, {"username"}),
    ({"username": "SERVICE", "password": ALICE_PASSWORD}, {"username"}),
])
async def test_create_refuses_bad_bodies(api: Api, body: dict[str, Any], fields: set[str]) -> None:
    answer = await api.call("POST", "/users", 400, json=body)
    assert answer["error"] == "invalid request" and fields_of(answer) == fields
    assert await api.call("GET", "/users", 200) == {"items": []}


async def test_create_refuses_what_is_not_a_json_object(api: Api) -> None:
    body = await api.call("POST", "/users", 400, data=b"{not json", headers={"Content-Type": "application/json"})
    assert body["error"] == "malformed JSON" and fields_of(body) == {"body"}
    body = await api.call("POST", "/users", 400, json=[{"username": "alice", "password": ALICE_PASSWORD}])
    assert fields_of(body) == {"body"}
    await api.call("POST", "/users", 415, data=b"username=alice", headers={"Content-Type": "text/plain"})


async def test_list_is_by_username(api: Api) -> None:
    assert await api.call("GET", "/users", 200) == {"items": []}
    made = {name: await api.create(name, ALICE_PASSWORD) for name in ("bob", "alice", "Carol", "alice.b")}
    listed = await api.call("GET", "/users", 200)
    assert [u["username"] for u in listed["items"]] == ["Carol", "alice", "alice.b", "bob"]
    assert listed["items"] == [made[u["username"]] for u in listed["items"]]


async def test_unknown_user_is_404(api: Api) -> None:
    expected = {"error": "user nobody not found", "details": [{"field": "username", "message": "no such user"}]}
    assert await api.call("GET", "/users/nobody", 404) == expected
    assert await api.call("DELETE", "/users/nobody", 404) == expected
    assert await api.call("PUT", "/users/nobody/password", 404, json={"password": NEW_PASSWORD}) == expected
    await api.create("alice", ALICE_PASSWORD)
    assert (await api.call("GET", "/users/ALICE", 404))["error"] == "user ALICE not found"


async def test_delete(api: Api) -> None:
    await api.create("alice", ALICE_PASSWORD)
    bob = await api.create("bob", BOB_PASSWORD)
    assert await api.call("DELETE", "/users/alice", 204) is None
    await api.call("GET", "/users/alice", 404)
    await api.call("DELETE", "/users/alice", 404)
    assert await api.verify("alice", ALICE_PASSWORD, expect=401) == REFUSED
    assert await api.call("GET", "/users", 200) == {"items": [bob]}


async def test_change_password(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD)
    assert await api.call("PUT", "/users/alice/password", 204, json={"password": NEW_PASSWORD}) is None
    assert await api.verify("alice", ALICE_PASSWORD, expect=401) == REFUSED
    assert await api.verify("alice", NEW_PASSWORD) == {**alice, "epoch": 2}
    assert await api.call("GET", "/users/alice", 200) == alice  # id, created_at, roles: as they were

    for body, field in (({"password": "short"}, "password"), ({}, "password"),
                        ({"password": NEW_PASSWORD, "roles": ["admin"]}, "roles")):
        answer = await api.call("PUT", "/users/alice/password", 400, json=body)
        assert fields_of(answer) == {field}
    await api.call("PUT", "/users/alice/password", 400, data=b"", headers={"Content-Type": "application/json"})
    assert await api.verify("alice", NEW_PASSWORD) == {**alice, "epoch": 2}  # a refused change moves nothing


async def test_verify(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD, roles=["operator"], permissions=["export"])
    assert await api.verify("alice", ALICE_PASSWORD) == {**alice, "epoch": 1}
    # A wrong password, a wrong case, an unknown user: one and the same answer.
    for username, password in (("alice", BOB_PASSWORD), ("alice", ALICE_PASSWORD.upper()),
                               ("Alice", ALICE_PASSWORD), ("nobody", ALICE_PASSWORD)):
        async with api.client.post("/users/verify", json={"username": username, "password": password}) as resp:
            assert resp.status == 401
            assert await resp.json() == REFUSED
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    for body, field in (({"username": "alice"}, "password"), ({"password": ALICE_PASSWORD}, "username"),
                        ({"username": "alice", "password": ""}, "password"),
                        ({"username": "alice", "password": ALICE_PASSWORD, "scope": "all"}, "scope")):
        assert fields_of(await api.call("POST", "/users/verify", 400, json=body)) == {field}


async def test_verify_checks_an_unknown_user_against_the_dummy_hash_off_the_loop(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[tuple[str, bool]] = []
    real = registry.users.verify_password
    loop_thread = threading.get_ident()

    def recording(password: str, stored: str) -> bool:
        checked.append((stored, threading.get_ident() != loop_thread))
        return real(password, stored)

    monkeypatch.setattr(registry.users, "verify_password", recording)
    await api.create("alice", ALICE_PASSWORD)
    await api.verify("nobody", ALICE_PASSWORD, expect=401)
    await api.verify("alice", BOB_PASSWORD, expect=401)
    await api.verify("alice", ALICE_PASSWORD)
    assert [stored == UNKNOWN_USER_HASH for stored, _ in checked] == [True, False, False]
    assert checked[1][0] == checked[2][0] and checked[1][0].startswith("scrypt$16384$8$1$")
    assert all(off_loop for _, off_loop in checked)


async def test_status_counts_users(api: Api) -> None:
    assert (await api.call("GET", "/status", 200))["users"] == 0
    await api.create("alice", ALICE_PASSWORD)
    await api.create("bob", BOB_PASSWORD)
    assert (await api.call("GET", "/status", 200))["users"] == 2
    await api.call("DELETE", "/users/bob", 204)
    assert (await api.call("GET", "/status", 200))["users"] == 1


async def test_logs_never_show_a_password_or_hash(api: Api, captured_logs: list[str]) -> None:
    await api.create("alice", ALICE_PASSWORD, roles=["admin"])
    await api.create("alice", BOB_PASSWORD, expect=409)
    await api.create("bob", "short", expect=400)
    await api.call("PUT", "/users/alice/password", 204, json={"password": NEW_PASSWORD})
    await api.verify("alice", NEW_PASSWORD)
    await api.verify("alice", ALICE_PASSWORD, expect=401)
    await api.verify(BOB_PASSWORD, ALICE_PASSWORD, expect=401)  # a password typed as the username
    await api.call("DELETE", "/users/alice", 204)
    text = "\n".join(captured_logs)
    assert "user alice created" in text and "password of user alice changed" in text
    assert "user alice deleted" in text
    for secret in (*SECRETS, "short"):
        assert secret not in text


async def test_reserved_names_say_why(api: Api) -> None:
    answer = await api.call("POST", "/users", 400, json={"username": "anonymous", "password": ALICE_PASSWORD})
    assert answer["details"] == [{"field": "username", "message": "'anonymous' is reserved for the system: "
                                                                   "choose another name"}]
    assert (await api.create("anonymous2", ALICE_PASSWORD))["username"] == "anonymous2"  # only the exact names


async def test_change_roles_moves_the_epoch_on(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD, permissions=["export"])
    bob = await api.create("bob", BOB_PASSWORD)
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 200) == {"id": alice["id"], "epoch": 1}
    changed = await api.call("PUT", "/users/alice/roles", 200, json={"roles": ["operator", "user", "operator"]})
    assert changed == {**alice, "roles": ["operator", "user"]}  # once each, in the order given
    assert await api.call("GET", "/users/alice", 200) == changed
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 200) == {"id": alice["id"], "epoch": 2}
    await api.call("PUT", "/users/alice/password", 204, json={"password": NEW_PASSWORD})
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 200) == {"id": alice["id"], "epoch": 3}
    assert await api.call("GET", f"/user-epochs/{bob['id']}", 200) == {"id": bob["id"], "epoch": 1}
    for body, field in (({"roles": []}, "roles"), ({"roles": ["root"]}, "roles.0"), ({}, "roles"),
                        ({"roles": ["user"], "permissions": []}, "permissions"), ({"roles": "user"}, "roles")):
        assert fields_of(await api.call("PUT", "/users/alice/roles", 400, json=body)) == {field}
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 200) == {"id": alice["id"], "epoch": 3}
    expected = {"error": "user nobody not found", "details": [{"field": "username", "message": "no such user"}]}
    assert await api.call("PUT", "/users/nobody/roles", 404, json={"roles": ["user"]}) == expected


async def test_a_removed_users_epoch_is_gone(api: Api) -> None:
    alice = await api.create("alice", ALICE_PASSWORD)
    await api.call("DELETE", "/users/alice", 204)
    gone = {"error": "no user has this id", "details": [{"field": "id", "message": "no such user"}]}
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 404) == gone
    again = await api.create("alice", ALICE_PASSWORD)
    assert again["id"] != alice["id"]
    assert await api.call("GET", f"/user-epochs/{alice['id']}", 404) == gone
    for bad in ("not-a-uuid", "..%2F", "alice"):
        assert await api.call("GET", f"/user-epochs/{bad}", 404) == gone


async def test_a_name_with_url_syntax_is_one_segment(api: Api) -> None:
    await api.create("alice", ALICE_PASSWORD)
    for encoded in ("alice%3Fx%3D1", "alice%2Fpassword", "..%2Falice", "alice%23x", "%2E%2E"):
        await api.call("DELETE", f"/users/{encoded}", 404)
        await api.call("GET", f"/users/{encoded}", 404)
    assert [u["username"] for u in (await api.call("GET", "/users", 200))["items"]] == ["alice"]
