"""Who may do what, through the real gateway, receptionist, registry and scheduler on loopback."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
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

TOKEN = "internal-token-for-tests"
SECRET = "s" * 48
EXPORT = {"bookId": "b-1", "type": "epub"}
#: The same export, as ``POST /jobs`` takes a job of any kind: the same rules hold there.
EXPORT_JOB = {"kind": "export", "payload": EXPORT}
PASSWORD = "correct horse battery"


class Stack:
    def __init__(self, gateway: Any, registry_url: str, session: Any) -> None:
        self.gateway = gateway
        self.registry_url = registry_url
        self.session = session

    async def add_user(self, username: str, roles: list[str], permissions: list[str] | None = None) -> None:
        async with self.session.post(self.registry_url + "/users", headers={"X-Service-Token": TOKEN}, json={
                "username": username, "password": PASSWORD, "roles": roles,
                "permissions": permissions or []}) as resp:
            assert resp.status == 201, await resp.text()

    async def user_id(self, username: str) -> str:
        """The stable id the registry gave ``username``: what their jobs belong to."""
        async with self.session.get(f"{self.registry_url}/users/{username}",
                                    headers={"X-Service-Token": TOKEN}) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["id"])

    async def login(self, username: str, roles: list[str] | None = None, permissions: list[str] | None = None
                    ) -> dict[str, str]:
        if roles is not None:
            await self.add_user(username, roles, permissions)
        resp = await self.gateway.post("/auth/token", json={"username": username, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["token_type"] == "bearer" and answer["expires_in"] == 3600
        return {"Authorization": f"Bearer {answer['access_token']}"}


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
def start_stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any) -> StartStack:
    async def start(gateway: dict[str, Any] | None = None, receptionist: dict[str, Any] | None = None) -> Stack:
        registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
        scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
        registry_url = str(registry.make_url("")).rstrip("/")
        front = await aiohttp_server(receptionist_app(ReceptionistSettings(**{
            "registry_url": registry_url, "scheduler_url": str(scheduler.make_url("")).rstrip("/"),
            "artifacts_dir": str(tmp_path), "service_token": TOKEN, "sweep_interval_s": 0,
            **(receptionist or {})})))
        client = await aiohttp_client(gateway_app(GatewaySettings(**{
            "receptionists": [str(front.make_url("")).rstrip("/")], "registry_url": registry_url,
            "service_token": TOKEN, "jwt_secret": SECRET, "rate_limit_per_s": 0, **(gateway or {})})))
        return Stack(client, registry_url, client.session)

    return start


async def test_tokens_are_issued_for_good_passwords_only(start_stack: StartStack) -> None:
    stack = await start_stack()
    await stack.add_user("alice", ["user"])
    for body in ({"username": "alice", "password": "wrong password"}, {"username": "nobody", "password": PASSWORD}):
        resp = await stack.gateway.post("/auth/token", json=body)
        assert resp.status == 401 and (await resp.json())["error"] == "invalid username or password"
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await stack.gateway.post("/auth/token", json={"username": "alice"})
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "password"
    headers = await stack.login("alice")
    claims = jwt.decode(headers["Authorization"][7:], SECRET, algorithms=["HS256"])
    assert claims["sub"] == await stack.user_id("alice") and claims["name"] == "alice" and claims["ep"] == 1
    assert claims["roles"] == ["user"] and claims["exp"] - claims["iat"] == 3600
    resp = await stack.gateway.post("/exports", json=EXPORT, headers=headers)
    assert resp.status == 201


@pytest.mark.parametrize("mode", ["optional", "required"])
async def test_bad_and_expired_tokens_are_401_in_every_mode(start_stack: StartStack, mode: str) -> None:
    stack = await start_stack(gateway={"auth": mode})
    now = int(time.time())
    alice = {"sub": str(uuid.uuid4()), "name": "alice", "ep": 1}
    expired = jwt.encode({**alice, "roles": ["user"], "iat": now - 7200, "exp": now - 3600}, SECRET)
    forged = jwt.encode({**alice, "roles": ["operator"], "iat": now, "exp": now + 60}, "x" * 48)
    cases = [("Bearer " + expired, "expired"), ("Bearer " + forged, "invalid"), ("Bearer not.a.jwt", "invalid"),
             ("Basic YWxpY2U6cHc=", "not a bearer token")]
    for authorization, message in cases:
        resp = await stack.gateway.get("/exports", headers={"Authorization": authorization})
        assert resp.status == 401, authorization
        assert (await resp.json())["details"] == [{"field": "Authorization", "message": message}]
    anonymous = await stack.gateway.get("/exports")
    assert anonymous.status == (200 if mode == "optional" else 401)
    assert (await stack.gateway.get("/health")).status == 200  # the gateway's own routes stay open


async def test_another_users_job_is_a_404_everywhere(start_stack: StartStack) -> None:
    stack = await start_stack()
    alice, bob = await stack.login("alice", ["user"]), await stack.login("bob", ["user"])
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=alice)).json()
    generic = await (await stack.gateway.post("/jobs", json=EXPORT_JOB, headers=alice)).json()
    for job_id in (job["id"], generic["id"]):
        for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/result"),
                             ("DELETE", f"/jobs/{job_id}")):
            resp = await stack.gateway.request(method, path, headers=bob)
            assert resp.status == 404, (method, path)
    assert not any((await (await stack.gateway.get("/exports", headers=bob)).json()).values())
    assert (await (await stack.gateway.get("/jobs", headers=bob)).json())["items"] == []
    mine = await (await stack.gateway.get("/jobs", headers=alice)).json()
    assert [j["id"] for j in mine["items"]] == [generic["id"], job["id"]] and mine["items"][1]["payload"] == EXPORT
    # A client cannot claim to be someone else: identity headers it sends are dropped.
    resp = await stack.gateway.get(f"/jobs/{job['id']}", headers={**bob, "X-Conveyor-User": "alice"})
    assert resp.status == 404


async def test_operators_see_every_jobs_state_but_not_payloads_or_results(start_stack: StartStack) -> None:
    stack = await start_stack()
    alice, ops = await stack.login("alice", ["user"]), await stack.login("olga", ["operator"])
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=alice)).json()
    seen = await (await stack.gateway.get(f"/jobs/{job['id']}", headers=ops)).json()
    assert seen["state"] == "pending" and seen["owner"] == await stack.user_id("alice") and seen["payload"] is None
    listed = await (await stack.gateway.get("/jobs", headers=ops)).json()
    assert [(j["id"], j["payload"]) for j in listed["items"]] == [(job["id"], None)]
    assert (await stack.gateway.get(f"/jobs/{job['id']}/result", headers=ops)).status == 403
    assert (await stack.gateway.post("/exports", json=EXPORT, headers=ops)).status == 403  # no user role
    assert (await stack.gateway.post("/jobs", json=EXPORT_JOB, headers=ops)).status == 403
    assert (await stack.gateway.get("/dead", headers=ops)).status == 200
    resp = await stack.gateway.post("/dead/requeue", json={"all": True}, headers=ops)
    assert resp.status == 200 and await resp.json() == {"requeued": [], "skipped": []}
    for path in ("/dead", "/users"):
        assert (await stack.gateway.get(path, headers=alice)).status == 403
    assert (await stack.gateway.get("/users", headers=ops)).status == 403


async def test_admins_manage_users_and_nothing_else(start_stack: StartStack) -> None:
    stack = await start_stack()
    alice = await stack.login("alice", ["user"])
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=alice)).json()
    admin = await stack.login("root", ["admin"])
    resp = await stack.gateway.post("/users", headers=admin, json={
        "username": "carol", "password": "long enough", "roles": ["user", "operator"]})
    assert resp.status == 201
    created = await resp.json()
    assert created["roles"] == ["user", "operator"] and "password" not in str(created)
    users = await (await stack.gateway.get("/users", headers=admin)).json()
    assert [u["username"] for u in users["items"]] == ["alice", "carol", "root"]
    assert (await stack.gateway.post("/users", headers=admin, json={
        "username": "carol", "password": "long enough"})).status == 409
    resp = await stack.gateway.put("/users/carol/password", headers=admin, json={"password": "another one!"})
    assert resp.status == 204
    resp = await stack.gateway.post("/auth/token", json={"username": "carol", "password": "another one!"})
    assert resp.status == 200
    assert (await stack.gateway.delete("/users/carol", headers=admin)).status == 204
    assert (await stack.gateway.delete("/users/carol", headers=admin)).status == 404
    # Jobs are not an admin's business.
    assert (await stack.gateway.post("/exports", json=EXPORT, headers=admin)).status == 403
    assert (await stack.gateway.post("/jobs", json=EXPORT_JOB, headers=admin)).status == 403
    assert (await stack.gateway.get(f"/jobs/{job['id']}", headers=admin)).status == 404
    assert (await stack.gateway.get("/exports", headers=admin)).status == 403


async def test_a_kind_can_need_a_permission(start_stack: StartStack) -> None:
    stack = await start_stack(receptionist={"kind_permissions": {"export": "exporter"}})
    plain = await stack.login("alice", ["user"])
    resp = await stack.gateway.post("/exports", json=EXPORT, headers=plain)
    assert resp.status == 403 and (await resp.json())["details"] == [
        {"field": "permission", "message": "exporter required"}]
    resp = await stack.gateway.post("/jobs", json=EXPORT_JOB, headers=plain)
    assert resp.status == 403 and (await resp.json())["details"] == [
        {"field": "permission", "message": "exporter required"}]
    allowed = await stack.login("eve", ["user"], ["exporter"])
    assert (await stack.gateway.post("/exports", json=EXPORT, headers=allowed)).status == 201
    assert (await stack.gateway.post("/jobs", json=EXPORT_JOB, headers=allowed)).status == 201
    assert (await stack.gateway.post("/imports", headers=plain, json={
        "bookId": "b", "type": "pdf", "url": "https://example.com/b.pdf"})).status == 201


async def test_callers_without_a_token_are_told_to_log_in(start_stack: StartStack) -> None:
    """A route that needs a role or a permission answers a caller who sent no credentials 401 with
    ``WWW-Authenticate`` (RFC 9110 15.5.2: log in, then try again), and a logged-in one without it 403."""
    stack = await start_stack(receptionist={"kind_permissions": {"export": "exporter"}})
    alice = await stack.login("alice", ["user"])
    for method, path, body in (("GET", "/dead", None), ("GET", "/queues", None), ("GET", "/logs", None),
                               ("GET", "/users", None), ("POST", "/exports", EXPORT), ("POST", "/jobs", EXPORT_JOB)):
        anonymous = await stack.gateway.request(method, path, json=body)
        assert anonymous.status == 401, (path, await anonymous.text())
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert (await anonymous.json())["details"] == [{"field": "Authorization", "message": "missing"}]
        assert (await stack.gateway.request(method, path, json=body, headers=alice)).status == 403, path


async def test_rate_limits_are_per_identity_with_rates_per_role(start_stack: StartStack,
                                                               rate_limit_backend: dict[str, Any]) -> None:
    stack = await start_stack(gateway={"rate_limit_per_s": 0.01, "rate_limit_burst": 3,
                                       "role_rate_limits": {"operator": 1000}, **rate_limit_backend})
    alice, bob = await stack.login("alice", ["user"]), await stack.login("bob", ["user"])
    ops = await stack.login("olga", ["operator"])
    statuses = [(await stack.gateway.get("/jobs", headers=alice)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert (await stack.gateway.get("/jobs", headers=bob)).status == 200  # a bucket of bob's own
    assert [(await stack.gateway.get("/jobs", headers=ops)).status for _ in range(20)] == [200] * 20


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), [
    ("POST", "/exports", {"data": io.BytesIO(b"{" + b" " * 2_000_000 + b"}"),
                          "headers": {"Content-Type": "application/json"}}, 413, "body"),
    ("POST", "/exports", {"data": b"bookId=1", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("POST", "/exports", {"data": b'{"bookId": ', "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("POST", "/exports", {"json": {"bookId": 1, "type": "epub"}}, 400, "bookId"),
    ("POST", "/exports", {"json": {"bookId": "1", "type": "epub", "x": 1}}, 400, "x"),
    ("POST", "/exports", {"json": {"bookId": "b" * 201, "type": "epub"}}, 400, "bookId"),
    ("POST", "/exports", {"json": [1, 2, 3]}, 400, "body"),
    ("POST", "/tasks", {"json": {"description": "d" * 1001}}, 400, "description"),
    ("POST", "/auth/token", {"json": {"username": "u" * 65, "password": "p"}}, 400, "username"),
    ("GET", "/exports", {"params": {"limit": "many"}}, 400, "limit"),
    ("GET", "/nowhere", {}, 404, None),
    ("PATCH", "/exports", {}, 405, None),
    ("GET", "/jobs/%00%ff", {}, 404, None),
])
async def test_hard_edges_are_clear_4xx_json(start_stack: StartStack, method: str, path: str,
                                             kwargs: dict[str, Any], status: int, field: str | None) -> None:
    stack = await start_stack()
    resp = await stack.gateway.request(method, path, **kwargs)
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] and "Traceback" not in str(body)
    if field is not None:
        assert field in {d["field"] for d in body["details"]}, body


async def test_admin_user_bodies_are_checked(start_stack: StartStack) -> None:
    stack = await start_stack()
    admin = await stack.login("root", ["admin"])
    for body, field in (({"username": "x", "password": "short"}, "password"),
                        ({"username": "bad name", "password": "long enough"}, "username"),
                        ({"username": "x", "password": "long enough", "roles": ["god"]}, "roles.0"),
                        ({"username": "x", "password": "long enough", "roles": ["user"] * 4}, "roles"),
                        ({"username": "x", "password": "long enough", "permissions": ["p"] * 21}, "permissions")):
        resp = await stack.gateway.post("/users", json=body, headers=admin)
        assert resp.status == 400, body
        assert field in {d["field"] for d in (await resp.json())["details"]}, body


async def test_internal_services_refuse_requests_without_the_service_token(aiohttp_client: Any,
                                                                         tmp_path: Any) -> None:
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
        client = await aiohttp_client(app)
        for headers in ({}, {"X-Service-Token": "wrong"}):
            resp = await client.get("/status", headers=headers)
            assert resp.status == 401, name
            assert (await resp.json())["error"].startswith("this is an internal service"), name
        assert (await client.get("/status", headers={"X-Service-Token": TOKEN})).status == 200, name
        assert (await client.get("/no-such-route")).status == 401, name  # nothing is told without the token


async def test_operators_see_queues_and_logs_and_owners_their_jobs_logs(
        start_stack: StartStack, aiohttp_server: Any) -> None:
    logs = await aiohttp_server(logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN)))
    stack = await start_stack(receptionist={"logging_url": str(logs.make_url("")).rstrip("/")})
    alice, bob = await stack.login("alice", ["user"]), await stack.login("bob", ["user"])
    ops = await stack.login("olga", ["operator"])
    job = await (await stack.gateway.post("/exports", json=EXPORT, headers=alice)).json()
    line = {"timestamp": "2026-01-01T00:00:00Z", "service": "handler-1", "level": "info",
            "message": "export started", "meta": {"job_id": job["id"]}}
    other = {**line, "message": "someone else's", "meta": {"job_id": "another"}}
    async with stack.session.post(str(logs.make_url("/logs")), json=[line, other],
                                  headers={"X-Service-Token": TOKEN}) as resp:
        assert resp.status == 202
    own = await (await stack.gateway.get(f"/jobs/{job['id']}/logs", headers=alice)).json()
    # Every service of this test shares a process with the logging service, which keeps that process's
    # own lines too (the receptionist's "job accepted" for this job, say): the handler's line is the test's.
    assert [item["message"] for item in own["items"] if item["service"] == "handler-1"] == ["export started"]
    assert {item["meta"]["job_id"] for item in own["items"]} == {job["id"]}
    assert (await stack.gateway.get(f"/jobs/{job['id']}/logs", headers=bob)).status == 404
    everything = await (await stack.gateway.get("/logs", headers=ops)).json()
    # The logging service also keeps its own process's lines (here: every service of the test): look at
    # the handler's, which the test wrote.
    shipped = {item["message"] for item in everything["items"] if item["service"] == "handler-1"}
    assert shipped == {"export started", "someone else's"}
    # The text filter is the logging service's: a substring of the message, in any case, on either route.
    found = await (await stack.gateway.get("/logs", params={"q": "ELSE'S", "service": "handler-1"},
                                           headers=ops)).json()
    assert [item["message"] for item in found["items"]] == ["someone else's"]
    found = await (await stack.gateway.get(f"/jobs/{job['id']}/logs", params={"q": "Export S"},
                                           headers=alice)).json()
    assert [item["message"] for item in found["items"]] == ["export started"]
    refused = await stack.gateway.get("/logs", params={"q": "a\x00b"}, headers=ops)
    assert refused.status == 400 and (await refused.json())["details"][0]["field"] == "q"
    assert (await stack.gateway.get("/logs", headers=alice)).status == 403
    queues = await (await stack.gateway.get("/queues", headers=ops)).json()
    assert {q["queue"]: q for q in queues["items"]}["export"]["ready"] == 1
    # An operator may cancel anyone's job (another user may not even see it); the answer is the job as an
    # operator sees it, and the central log names the operator.
    assert (await stack.gateway.delete(f"/jobs/{job['id']}", headers=bob)).status == 404
    resp = await stack.gateway.delete(f"/jobs/{job['id']}", headers=ops)
    cancelled = await resp.json()
    assert resp.status == 200 and cancelled["state"] == "cancelled" and cancelled["payload"] is None
    assert (await (await stack.gateway.get(f"/jobs/{job['id']}", headers=alice)).json())["state"] == "cancelled"
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        told = await (await stack.gateway.get("/logs", params={"q": "cancel requested by operator", "job_id": job["id"]},
                                              headers=ops)).json()
        if told["items"] or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [line["message"] for line in told["items"]] == ["cancel requested by operator olga"]
    assert (await stack.gateway.get("/queues", headers=alice)).status == 403
