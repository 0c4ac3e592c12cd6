"""What the gateway lets in: the operators' ``/status`` and ``/metrics``, failed authentications paid for by
the client's address, and the ``RateLimit-*`` headers on every answer. Through the real gateway,
receptionist, registry and scheduler on loopback."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings

TOKEN = "internal-token-for-admission-tests"
SECRET = "s" * 48
METRICS_TOKEN = "metrics-token-" + "m" * 32
PASSWORD = "correct horse battery"
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


class Stack:
    def __init__(self, gateway: TestClient, registry_url: str) -> None:
        self.gateway = gateway
        self.registry_url = registry_url

    async def login(self, username: str, roles: list[str]) -> dict[str, str]:
        async with self.gateway.session.post(self.registry_url + "/users", headers={"X-Service-Token": TOKEN},
                                             json={"username": username, "password": PASSWORD,
                                                   "roles": roles}) as resp:
            assert resp.status == 201, await resp.text()
        resp = await self.gateway.post("/auth/token", json={"username": username, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
def start_stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any) -> StartStack:
    async def start(**gateway: Any) -> Stack:
        registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
        scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
        registry_url = str(registry.make_url("")).rstrip("/")
        front = await aiohttp_server(receptionist_app(ReceptionistSettings(
            registry_url=registry_url, scheduler_url=str(scheduler.make_url("")).rstrip("/"),
            artifacts_dir=str(tmp_path), service_token=TOKEN, sweep_interval_s=0)))
        client = await aiohttp_client(gateway_app(GatewaySettings(**{
            "receptionists": [str(front.make_url("")).rstrip("/")], "registry_url": registry_url,
            "service_token": TOKEN, "jwt_secret": SECRET, "metrics_token": METRICS_TOKEN,
            "rate_limit_per_s": 0, **gateway})))
        return Stack(client, registry_url)

    return start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# /status and /metrics


@pytest.mark.parametrize("path", ["/status", "/metrics"])
async def test_status_and_metrics_are_for_operators_and_the_metrics_token(start_stack: StartStack,
                                                                          path: str) -> None:
    stack = await start_stack()
    alice, ops = await stack.login("alice", ["user"]), await stack.login("olga", ["operator"])
    forged = jwt.encode({"sub": "olga", "roles": ["operator"], "iat": int(time.time()),
                         "exp": int(time.time()) + 60}, "x" * 48)
    for headers, status in (({}, 401), (bearer("not-the-metrics-token-" + "m" * 30), 401), (bearer(forged), 401),
                            ({"Authorization": f"Basic {METRICS_TOKEN}"}, 401), (alice, 403)):
        resp = await stack.gateway.get(path, headers=headers)
        assert resp.status == status, (headers, await resp.text())
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"] and "conveyor_http_requests" not in str(body) and "upstreams" not in body
    for headers in (ops, bearer(METRICS_TOKEN)):
        resp = await stack.gateway.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        if path == "/status":
            assert (await resp.json())["upstreams"]
        else:
            assert "conveyor_http_requests" in await resp.text()
    assert (await stack.gateway.get("/health")).status == 200  # stays public


async def test_without_a_metrics_token_only_operators_read_status(start_stack: StartStack) -> None:
    stack = await start_stack(metrics_token=None)
    ops = await stack.login("olga", ["operator"])
    assert (await stack.gateway.get("/metrics", headers=bearer(METRICS_TOKEN))).status == 401
    assert (await stack.gateway.get("/metrics", headers=ops)).status == 200


# Failed authentications and the RateLimit-* headers


async def test_a_bad_token_takes_from_the_addresss_bucket(start_stack: StartStack,
                                                          rate_limit_backend: dict[str, Any]) -> None:
    stack = await start_stack(rate_limit_per_s=0.01, rate_limit_burst=4, **rate_limit_backend)
    alice = await stack.login("alice", ["user"])  # one login: one token of the address's four
    expired = jwt.encode({"sub": "alice", "roles": ["user"], "iat": 1, "exp": 2}, SECRET)
    for remaining, token in zip(("2", "1", "0"), ("guess-1", expired, "guess-3"), strict=True):
        resp = await stack.gateway.get("/jobs", headers=bearer(token))
        assert resp.status == 401
        assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("4", remaining)
    resp = await stack.gateway.get("/jobs", headers=bearer("guess-4"))
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"] == "too many requests"
    # The address's bucket is empty for its anonymous requests too; a real user has a bucket of their own.
    assert (await stack.gateway.get("/jobs")).status == 429
    assert (await stack.gateway.get("/jobs", headers=alice)).status == 200


async def test_bad_passwords_take_from_the_addresss_bucket(start_stack: StartStack,
                                                           rate_limit_backend: dict[str, Any]) -> None:
    stack = await start_stack(rate_limit_per_s=0.01, rate_limit_burst=4, **rate_limit_backend)
    await stack.login("alice", ["user"])  # one login: one token of the address's four
    for remaining in ("2", "1", "0"):
        resp = await stack.gateway.post("/auth/token", json={"username": "alice", "password": "guess"})
        assert resp.status == 401 and resp.headers["RateLimit-Remaining"] == remaining
    resp = await stack.gateway.post("/auth/token", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 429 and all(name in resp.headers for name in (*RATE_HEADERS, "Retry-After"))


async def test_every_answer_carries_the_ratelimit_headers(start_stack: StartStack,
                                                         rate_limit_backend: dict[str, Any]) -> None:
    stack = await start_stack(rate_limit_per_s=100, rate_limit_burst=1000, client_max_size=10_000,
                              **rate_limit_backend)
    alice, ops = await stack.login("alice", ["user"]), await stack.login("olga", ["operator"])
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/jobs", {"headers": alice}, 200),
        ("GET", "/jobs", {"headers": bearer("bad")}, 401),
        ("GET", "/dead", {"headers": alice}, 403),
        ("GET", "/nowhere", {"headers": alice}, 404),
        ("PATCH", "/exports", {}, 405),
        ("POST", "/exports", {"data": io.BytesIO(b"x" * 20_000), "headers": {"Content-Type": "application/json"}},
         413),
        ("POST", "/exports", {"json": {"bookId": 1}}, 400),
        ("GET", "/health", {}, 200),
        ("GET", "/openapi.json", {}, 200),
        ("GET", "/docs", {}, 200),
        ("GET", "/status", {}, 401),
        ("GET", "/status", {"headers": alice}, 403),
        ("GET", "/status", {"headers": ops}, 200),
        ("GET", "/metrics", {"headers": bearer(METRICS_TOKEN)}, 200),
        ("POST", "/auth/token", {"json": {"username": "alice", "password": "wrong"}}, 401),
        ("POST", "/auth/token", {"json": {"username": "alice"}}, 400),
    ]
    for method, path, kwargs, status in cases:
        resp = await stack.gateway.request(method, path, **kwargs)
        assert resp.status == status, (method, path, await resp.text())
        missing = [name for name in RATE_HEADERS if name not in resp.headers]
        assert not missing, (method, path, status, missing)
        assert resp.headers["RateLimit-Limit"] == "1000"

    limited = await start_stack(rate_limit_per_s=0.01, rate_limit_burst=1, **rate_limit_backend)
    assert (await limited.gateway.get("/jobs")).status == 200
    resp = await limited.gateway.get("/jobs")
    assert resp.status == 429 and all(name in resp.headers for name in (*RATE_HEADERS, "Retry-After"))
    # The gateway's own routes are never refused, and still tell where the bucket stands.
    resp = await limited.gateway.get("/health")
    assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == "0"


async def test_proxied_calls_are_counted_by_their_route_template_never_their_path(start_stack: StartStack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    stack = await start_stack()
    alice = await stack.login("alice", ["user"])
    resp = await stack.gateway.post("/tasks", json={"description": "counted"}, headers=alice)
    assert resp.status == 201
    task_id = (await resp.json())["id"]
    for path in (f"/jobs/{task_id}", f"/tasks/{task_id}", "/jobs/not-a-job", "/no/such/route"):
        await (await stack.gateway.get(path, headers=alice)).read()
    resp = await stack.gateway.get("/metrics", headers=bearer(METRICS_TOKEN))
    routes = {sample.labels["route"] for family in text_string_to_metric_families(await resp.text())
              if family.name == "conveyor_http_requests" for sample in family.samples}
    assert {"/tasks", "/jobs/{job_id}", "/tasks/{task_id}", "unmatched"} <= routes
    assert not [route for route in routes if task_id in route or "not-a-job" in route or route == "/{tail}"]
