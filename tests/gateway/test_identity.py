"""Identities through the real gateway, receptionist, registry and scheduler on loopback: tokens that are
taken back, owners that are ids and not names, names that stay one path segment, and header bytes that
are not ASCII."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from gateway.app import PROXY
from handler.app import create_app as handler_app
from handler.settings import Settings as HandlerSettings
from logging_service.app import create_app as logging_app
from logging_service.settings import Settings as LoggingSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from tests.gateway import test_access
from tests.gateway.test_access import EXPORT, PASSWORD, TOKEN, Stack, StartStack
from tests.support import wait_until

#: The stack of test_access: real gateway, receptionist, registry and scheduler on loopback.
start_stack = test_access.start_stack

#: What the tests run the gateway with: the figure a change must take effect within.
REVOCATION_S = 0.5
#: Slack on top of it for a loaded test machine; the bound itself is REVOCATION_S (see gateway.epochs).
SLACK_S = 3.0


async def statuses(stack: Stack, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = await stack.gateway.get("/jobs", headers=headers)
    return resp.status, await resp.json()


async def token_epochs(stack: Stack) -> dict[str, Any]:
    """The gateway's epoch cache counters, as its ``/status`` shows them to operators (read in process here:
    an operator's own requests would move them)."""
    epochs = stack.gateway.app[PROXY].auth.epochs
    assert epochs is not None
    return dict(epochs.stats())


@pytest.mark.parametrize("change", ["remove", "password", "roles"])
async def test_old_tokens_are_refused_soon_after_a_change(start_stack: StartStack, change: str) -> None:
    stack = await start_stack(gateway={"revocation_s": REVOCATION_S})
    admin = await stack.login("root", ["admin"])
    alice = await stack.login("alice", ["user"])
    assert (await stack.gateway.get("/jobs", headers=alice)).status == 200
    if change == "remove":
        resp = await stack.gateway.delete("/users/alice", headers=admin)
    elif change == "password":
        resp = await stack.gateway.put("/users/alice/password", headers=admin, json={"password": "a new one!"})
    else:
        resp = await stack.gateway.put("/users/alice/roles", headers=admin, json={"roles": ["operator"]})
    assert resp.status in (200, 204), await resp.text()

    async def refused() -> bool:
        status, body = await statuses(stack, alice)
        return status == 401 and body["details"] == [{"field": "Authorization", "message": "revoked"}]

    await wait_until(refused, timeout_s=REVOCATION_S + SLACK_S, what=f"alice's old token refused after {change}")
    if change == "remove":
        resp = await stack.gateway.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        assert resp.status == 401
        return
    password = "a new one!" if change == "password" else PASSWORD
    resp = await stack.gateway.post("/auth/token", json={"username": "alice", "password": password})
    assert resp.status == 200
    fresh = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    assert (await stack.gateway.get("/jobs", headers=fresh)).status == 200
    # The new token carries the new roles: an operator without the user role submits nothing.
    expected = 403 if change == "roles" else 201
    assert (await stack.gateway.post("/exports", json=EXPORT, headers=fresh)).status == expected
    assert (await stack.gateway.get("/jobs", headers=alice)).status == 401  # and the old one stays refused


async def test_a_user_is_not_asked_for_on_every_request(start_stack: StartStack) -> None:
    stack = await start_stack(gateway={"revocation_s": 600})
    alice = await stack.login("alice", ["user"])
    for _ in range(20):
        assert (await stack.gateway.get("/jobs", headers=alice)).status == 200
    epochs = await token_epochs(stack)
    # The login told the gateway alice's epoch: none of the 20 requests went to the registry.
    assert (epochs["fetches"], epochs["hits"], epochs["users"]) == (0, 20, 1)


async def test_every_request_asks_when_the_cache_is_off(start_stack: StartStack) -> None:
    stack = await start_stack(gateway={"revocation_s": 0})
    alice = await stack.login("alice", ["user"])
    for _ in range(3):
        assert (await stack.gateway.get("/jobs", headers=alice)).status == 200
    assert (await token_epochs(stack))["fetches"] == 3


async def test_tokens_are_refused_when_the_registry_cannot_say(start_stack: StartStack) -> None:
    stack = await start_stack(gateway={"registry_url": f"http://127.0.0.1:{unused_port()}"})
    token = stack.gateway.app[PROXY].auth.issue(str(uuid.uuid4()), "alice", ["user"], [], epoch=1)
    resp = await stack.gateway.get("/jobs", headers={"Authorization": f"Bearer {token}"})
    # Not let in on trust: a token nobody can vouch for is refused, with a status that says "retry".
    assert resp.status == 503 and (await resp.json())["error"] == "registry unreachable"
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await stack.gateway.get("/jobs")).status == 200  # the anonymous caller needs no registry


async def test_a_new_user_of_an_old_name_sees_none_of_the_old_users_jobs(start_stack: StartStack) -> None:
    stack = await start_stack()
    admin = await stack.login("root", ["admin"])
    old_alice = await stack.login("alice", ["user"])
    old_id = await stack.user_id("alice")
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=old_alice)).json()
    assert (await (await stack.gateway.get(f"/jobs/{job['id']}", headers=old_alice)).json())["owner"] == old_id
    assert (await stack.gateway.delete("/users/alice", headers=admin)).status == 204
    resp = await stack.gateway.post("/users", headers=admin, json={"username": "alice", "password": PASSWORD})
    assert resp.status == 201
    new_id = (await resp.json())["id"]
    assert new_id != old_id and new_id == await stack.user_id("alice")
    new_alice = await stack.login("alice")
    for method, path in (("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/result"),
                         ("GET", f"/jobs/{job['id']}/events"), ("DELETE", f"/jobs/{job['id']}")):
        resp = await stack.gateway.request(method, path, headers=new_alice)
        assert resp.status == 404, (method, path)
    assert (await (await stack.gateway.get("/jobs", headers=new_alice)).json())["items"] == []
    assert not any((await (await stack.gateway.get("/exports", headers=new_alice)).json()).values())
    mine = await (await stack.gateway.post("/exports", json=EXPORT, headers=new_alice)).json()
    assert (await (await stack.gateway.get(f"/jobs/{mine['id']}", headers=new_alice)).json())["owner"] == new_id
    listed = await (await stack.gateway.get("/jobs", headers=new_alice)).json()
    assert [j["id"] for j in listed["items"]] == [mine["id"]]


async def test_reserved_names_cannot_be_registered(start_stack: StartStack) -> None:
    stack = await start_stack()
    admin = await stack.login("root", ["admin"])
    for name in ("anonymous", "ANONYMOUS", "system", "conveyor", "service"):
        resp = await stack.gateway.post("/users", headers=admin, json={"username": name, "password": PASSWORD})
        assert resp.status == 400, name
        assert [d["field"] for d in (await resp.json())["details"]] == ["username"]
    users = await (await stack.gateway.get("/users", headers=admin)).json()
    assert [u["username"] for u in users["items"]] == ["root"]


async def test_the_anonymous_identity_works_as_before(start_stack: StartStack) -> None:
    stack = await start_stack()
    job = await (await stack.gateway.post("/exports", json=EXPORT)).json()
    assert (await (await stack.gateway.get(f"/jobs/{job['id']}")).json())["owner"] == "anonymous"
    assert [j["id"] for j in (await (await stack.gateway.get("/jobs")).json())["items"]] == [job["id"]]
    alice = await stack.login("alice", ["user"])
    assert (await stack.gateway.get(f"/jobs/{job['id']}", headers=alice)).status == 404
    assert (await token_epochs(stack))["fetches"] == 0  # an anonymous caller has no epoch to check


async def test_names_with_url_syntax_stay_one_segment(start_stack: StartStack) -> None:
    stack = await start_stack()
    admin = await stack.login("root", ["admin"])
    alice = await stack.login("alice", ["user"])
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=alice)).json()
    for name in ("alice%3Fx%3D1", "alice%23x", "..%2Falice", "..%2F", "alice%2Fpassword", "%2E%2E", "..%2F..%2Fusers"):
        for method, path, body in (("DELETE", f"/users/{name}", None),
                                   ("PUT", f"/users/{name}/password", {"password": "pwned-pwned"}),
                                   ("PUT", f"/users/{name}/roles", {"roles": ["admin"]})):
            resp = await stack.gateway.request(method, path, headers=admin, json=body)
            assert resp.status == 404, (method, path, await resp.text())
            assert (await resp.json())["error"]
    for name in ("..%2F", "..%2F..%2Fusers%2Falice", job["id"] + "%3Fx%3D1", "%2E%2E"):
        for method, path in (("GET", f"/jobs/{name}"), ("DELETE", f"/jobs/{name}"), ("GET", f"/jobs/{name}/result")):
            resp = await stack.gateway.request(method, path, headers=alice)
            assert resp.status == 404, (method, path, await resp.text())
    # alice is still there, with her password and roles, and so is her job.
    users = await (await stack.gateway.get("/users", headers=admin)).json()
    assert [(u["username"], u["roles"]) for u in users["items"]] == [("alice", ["user"]), ("root", ["admin"])]
    assert (await stack.login("alice")) and (await stack.gateway.get(f"/jobs/{job['id']}", headers=alice)).status == 200


async def raw_request(host: str, port: int, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (a whole request without a body) byte for byte and read the answer to the end."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


NOT_ASCII = [b"Bearer \xe9\xff\xfe", b"\xff", "Bearer caf\u00e9".encode(), b"Bearer \x80abc.def.ghi"]


@pytest.mark.parametrize("value", NOT_ASCII)
async def test_non_ascii_authorization_is_401_at_the_gateway(start_stack: StartStack, value: bytes) -> None:
    stack = await start_stack()
    server = stack.gateway.server
    status, body = await raw_request(server.host, server.port, b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                     + value + b"\r\nConnection: close\r\n\r\n")
    assert status == 401, body
    assert b'"field":"Authorization"' in body and b"Traceback" not in body


@pytest.mark.parametrize("value", [b"\xe9\xff\xfe", "t\u00e9".encode(), TOKEN.encode() + b"\xff"])
async def test_non_ascii_service_tokens_are_401_on_every_internal_service(aiohttp_server: Any, tmp_path: Any,
                                                                          value: bytes) -> None:
    apps = {
        "registry": registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)),
        "scheduler": scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)),
        "receptionist": receptionist_app(ReceptionistSettings(service_token=TOKEN, sweep_interval_s=0,
                                                              artifacts_dir=str(tmp_path))),
        "logging_service": logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN)),
        "handler": handler_app(HandlerSettings(service_token=TOKEN, artifacts_dir=str(tmp_path),
                                               data_store_url=f"sqlite:///{tmp_path}/data.db",
                                               scheduler_url="http://127.0.0.1:9", poll_wait_s=0)),
    }
    for name, app in apps.items():
        server = await aiohttp_server(app)
        status, body = await raw_request(server.host, server.port, b"GET /status HTTP/1.1\r\nHost: x\r\n"
                                         b"X-Service-Token: " + value + b"\r\nConnection: close\r\n\r\n")
        assert status == 401, (name, body)
        assert b"internal service" in body, name
