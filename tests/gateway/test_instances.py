"""Service instances through the gateway, with the real gateway, receptionists, registry and scheduler on
loopback: operators list them (``GET /instances``), and the gateway routes to the receptionists the
registry knows are alive, besides its configured ones."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from shared.heartbeat import HEARTBEAT
from tests.support import wait_until

TOKEN = "internal-token-for-tests"
SECRET = "s" * 48
METRICS = {"Authorization": "Bearer " + "m" * 40}
PASSWORD = "correct horse battery"


def base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


class Stack:
    """A registry and a scheduler, receptionists started on demand, and a gateway seeded with the first."""

    def __init__(self, aiohttp_server: Any, tmp_path: Any) -> None:
        self.aiohttp_server = aiohttp_server
        self.tmp_path = tmp_path
        self.registry_url = self.scheduler_url = ""
        self.gateway: TestClient | None = None

    async def receptionist(self) -> TestServer:
        """A receptionist that registers (heartbeats) with the registry at its URL, as one started by hand."""
        server = await self.aiohttp_server(receptionist_app(ReceptionistSettings(
            registry_url=self.registry_url, scheduler_url=self.scheduler_url, artifacts_dir=str(self.tmp_path),
            service_token=TOKEN, sweep_interval_s=0, instance_heartbeat_s=0.05)))
        await server.app[HEARTBEAT].start(base(server))
        return server

    async def add_user(self, username: str, roles: list[str]) -> dict[str, str]:
        assert self.gateway is not None
        async with self.gateway.session.post(self.registry_url + "/users", headers={"X-Service-Token": TOKEN},
                                             json={"username": username, "password": PASSWORD, "roles": roles}) as r:
            assert r.status == 201, await r.text()
        resp = await self.gateway.post("/auth/token", json={"username": username, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        return {"Authorization": "Bearer " + (await resp.json())["access_token"]}

    async def upstreams(self) -> dict[str, dict[str, Any]]:
        assert self.gateway is not None
        resp = await self.gateway.get("/status", headers=METRICS)
        assert resp.status == 200, await resp.text()
        return {u["url"]: u for u in (await resp.json())["upstreams"]}


@pytest.fixture
async def stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any) -> Stack:
    stack = Stack(aiohttp_server, tmp_path)
    registry = await aiohttp_server(registry_app(RegistrySettings(
        store_url="memory://", service_token=TOKEN, instance_gone_s=0.3, instance_heartbeat_s=0.05)))
    await registry.app[HEARTBEAT].start(base(registry))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    stack.registry_url, stack.scheduler_url = base(registry), base(scheduler)
    seed = await stack.receptionist()
    stack.gateway = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[base(seed)], registry_url=stack.registry_url, service_token=TOKEN, jwt_secret=SECRET,
        rate_limit_per_s=0, metrics_token="m" * 40, discovery_interval_s=0.05, health_interval_s=0.05)))
    return stack


async def test_operators_list_the_instances_and_nobody_else_does(stack: Stack) -> None:
    assert stack.gateway is not None
    ops = await stack.add_user("olga", ["operator"])

    async def both() -> list[dict[str, Any]]:
        resp = await stack.gateway.get("/instances", headers=ops)
        assert resp.status == 200, await resp.text()
        items = (await resp.json())["items"]
        return items if {i["kind"] for i in items} == {"receptionist", "registry"} else []

    items = await wait_until(both, what="the receptionist and the registry registered")
    assert [i["kind"] for i in items] == ["receptionist", "registry"]  # by kind, then name
    receptionist = items[0]
    assert receptionist["gone"] is False and "in_flight" in receptionist["status"]
    assert set(receptionist) >= {"id", "name", "kind", "url", "version", "started_at", "last_seen", "silent_s"}
    resp = await stack.gateway.get("/instances", params={"kind": "registry", "gone": "false"}, headers=ops)
    assert [i["kind"] for i in (await resp.json())["items"]] == ["registry"]
    for params, field in (({"kind": "worker"}, "kind"), ({"gone": "maybe"}, "gone"), ({"id": "x"}, "id")):
        resp = await stack.gateway.get("/instances", params=params, headers=ops)
        assert resp.status == 400 and (await resp.json())["details"][0]["field"] == field
    for roles in (["user"], ["admin"]):
        resp = await stack.gateway.get("/instances", headers=await stack.add_user("-".join(roles), roles))
        assert resp.status == 403 and (await resp.json())["details"] == [
            {"field": "role", "message": "operator required"}]
    resp = await stack.gateway.get("/instances")  # no token: log in first
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"


async def test_a_receptionist_that_registers_joins_the_rotation_and_leaves_when_it_stops(stack: Stack) -> None:
    assert stack.gateway is not None
    seed = next(iter(await stack.upstreams()))
    newcomer = await stack.receptionist()
    url = base(newcomer)

    async def routed_to_it() -> bool:
        resp = await stack.gateway.get("/exports")
        assert resp.status == 200, await resp.text()
        return (await stack.upstreams()).get(url, {}).get("requests", 0) > 0

    await wait_until(routed_to_it, what="the gateway routing to the receptionist it discovered")
    for _ in range(4):
        assert (await stack.gateway.post("/exports", json={"bookId": "b", "type": "epub"})).status == 201
    upstreams = await stack.upstreams()
    assert upstreams[url]["up"] and upstreams[seed]["requests"] > 0  # both in turn
    await newcomer.app[HEARTBEAT].stop()  # a clean stop deregisters

    async def left() -> bool:
        return url not in await stack.upstreams()

    await wait_until(left, what="the stopped receptionist to leave the rotation")
    assert list(await stack.upstreams()) == [seed]  # the configured one stays
    assert (await stack.gateway.post("/exports", json={"bookId": "b", "type": "epub"})).status == 201
