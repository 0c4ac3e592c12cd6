"""The registry's instance routes, served for real on loopback (``aiohttp_client``) over a memory store, and
when an instance counts as gone."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.app import STORE, create_app
from registry.instances import Liveness
from registry.settings import Settings
from shared.heartbeat import HEARTBEAT, conveyor_version
from shared.instances import MAX_BEAT_BYTES, Instance
from tests.support import wait_until

TOKEN = "t" * 40
HEADERS = {"X-Service-Token": TOKEN}


def beat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "receptionist-3", "kind": "receptionist", "url": "http://192.0.2.1:8085",
                            "version": "0.1.0", "started_at": "2030-01-01T12:00:00Z", "heartbeat_s": 2.0,
                            "status": {"in_flight": 1}}
    body.update(overrides)
    return body


async def registry(aiohttp_client: Any, **settings: Any) -> TestClient:
    return await aiohttp_client(create_app(Settings(store_url="memory://", service_token=TOKEN, **settings)))


async def call(client: TestClient, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    async with client.request(method, path, headers=HEADERS, **kwargs) as resp:
        assert resp.status == expect, await resp.text()
        return await resp.json() if resp.status != 204 else None


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def listed(client: TestClient, **params: str) -> list[dict[str, Any]]:
    return (await call(client, "GET", "/instances", 200, params=params))["items"]


async def test_an_instance_registers_heartbeats_and_deregisters(aiohttp_client: Any) -> None:
    client = await registry(aiohttp_client)
    instance_id = str(uuid.uuid4())
    view = await call(client, "PUT", f"/instances/{instance_id}", 200, json=beat())
    assert view["id"] == instance_id and view["gone"] is False and view["silent_s"] == 0
    assert {k: view[k] for k in beat()} == {**beat(), "started_at": "2030-01-01T12:00:00Z"}
    first_seen = datetime.fromisoformat(view["last_seen"])
    view = await call(client, "PUT", f"/instances/{instance_id}", 200,
                      json=beat(status={"in_flight": 0, "event_streams": 2}, url="http://192.0.2.1:8085/"))
    assert datetime.fromisoformat(view["last_seen"]) >= first_seen and view["url"] == "http://192.0.2.1:8085"
    (item,) = await listed(client)
    assert item["id"] == instance_id and item["status"] == {"in_flight": 0, "event_streams": 2}
    assert _ids(await listed(client, kind="receptionist", gone="false")) == [instance_id]
    assert await listed(client, kind="handler") == [] and await listed(client, gone="true") == []
    assert _ids(await listed(client, kind="", gone="")) == [instance_id]  # blank filters are absent ones
    assert await call(client, "DELETE", f"/instances/{instance_id}", 204) is None
    await call(client, "DELETE", f"/instances/{instance_id}", 404)
    assert await listed(client) == []
    async with client.get("/instances") as resp:
        assert resp.status == 401  # an internal route: the service token is required


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/instances/nope", beat(), 400, "instance_id"),
    ("/instances/{id}", beat(kind="worker"), 400, "kind"),
    ("/instances/{id}", beat(url="tcp://192.0.2.1"), 400, "url"),
    ("/instances/{id}", beat(started_at="2030-01-01T12:00:00"), 400, "started_at"),
    ("/instances/{id}", beat(heartbeat_s=0), 400, "heartbeat_s"),
    ("/instances/{id}", beat(status={"note": "x" * 5000}), 400, "status"),
    ("/instances/{id}", beat(status={"note": "a\u0000b"}), 400, "status"),
    ("/instances/{id}", beat(extra=1), 400, "extra"),
    ("/instances/{id}", beat(note="x" * MAX_BEAT_BYTES), 413, "body"),
])
async def test_a_beat_that_breaks_the_contract_is_refused_naming_the_field(
        aiohttp_client: Any, path: str, body: dict[str, Any], status: int, field: str) -> None:
    client = await registry(aiohttp_client)
    answer = await call(client, "PUT", path.format(id=uuid.uuid4()), status, json=body)
    assert field in {detail["field"] for detail in answer["details"]}, answer
    assert await listed(client) == []


async def test_a_bad_filter_is_a_400_and_a_bad_id_a_404(aiohttp_client: Any) -> None:
    client = await registry(aiohttp_client)
    for params, field in (({"kind": "worker"}, "kind"), ({"gone": "maybe"}, "gone"), ({"state": "x"}, "state")):
        answer = await call(client, "GET", "/instances", 400, params=params)
        assert answer["details"][0]["field"] == field
    await call(client, "DELETE", "/instances/not-a-uuid", 404)


def test_an_instance_is_gone_after_the_longer_of_the_setting_and_three_of_its_beats() -> None:
    liveness = Liveness(gone_s=10.0, drop_s=300.0)
    seen = datetime(2030, 1, 1, tzinfo=timezone.utc)
    fast = Instance(id=uuid.uuid4(), last_seen=seen, **beat(heartbeat_s=2.0))
    slow = fast.model_copy(update={"heartbeat_s": 20.0})

    def view(instance: Instance, silent_s: float) -> Any:
        return liveness.view(instance, seen + timedelta(seconds=silent_s))

    assert not view(fast, 10.0).gone and view(fast, 10.1).gone
    assert not view(slow, 59.9).gone and view(slow, 60.1).gone  # three of its own 20 s beats
    assert view(fast, 300.0) is not None and view(fast, 300.1) is None  # then dropped
    assert view(fast, -5).silent_s == 0  # a clock that went back is no negative silence


async def test_a_silent_instance_is_gone_then_dropped_and_a_beat_brings_it_back(aiohttp_client: Any) -> None:
    client = await registry(aiohttp_client, instance_gone_s=0.2, instance_drop_s=1.0)
    instance_id = str(uuid.uuid4())
    await call(client, "PUT", f"/instances/{instance_id}", 200, json=beat(heartbeat_s=0.01))

    async def gone() -> bool:
        return [i["gone"] for i in await listed(client)] == [True]

    await wait_until(gone, timeout_s=5, what="the silent instance to be gone")
    (item,) = await listed(client, gone="true")
    assert item["silent_s"] > 0.2 and await listed(client, gone="false") == []
    view = await call(client, "PUT", f"/instances/{instance_id}", 200, json=beat(heartbeat_s=0.01))
    assert view["gone"] is False and (await listed(client, gone="false"))[0]["id"] == instance_id

    async def dropped() -> bool:  # no longer listed, and no longer stored: the sweep deleted it
        return await listed(client) == [] and await client.app[STORE].list_instances() == []

    await wait_until(dropped, timeout_s=10, what="the silent instance to be dropped")


async def test_the_registry_registers_itself_and_deregisters_on_stop(aiohttp_client: Any) -> None:
    client = await registry(aiohttp_client, instance_heartbeat_s=0.05, instance="registry-2")
    heartbeat = client.app[HEARTBEAT]
    assert heartbeat is not None
    url = str(client.make_url("")).rstrip("/")
    await heartbeat.start(url)

    async def registered() -> list[dict[str, Any]]:
        return await listed(client, kind="registry")

    (item,) = await wait_until(registered, what="the registry's own registration")
    assert item["name"] == "registry-2" and item["url"] == url and item["version"] == conveyor_version()
    assert item["id"] == str(heartbeat.id) and item["heartbeat_s"] == 0.05
    assert set(item["status"]) == {"in_flight", "long_polls_waiting"}
    await wait_until(lambda: _beats_past(heartbeat, 3), what="a few heartbeats")
    status = await call(client, "GET", "/status", 200)
    assert status["instance"]["id"] == str(heartbeat.id) and status["instance"]["failures"] == 0
    await heartbeat.stop()
    assert await listed(client) == []


async def _beats_past(heartbeat: Any, n: int) -> bool:
    return heartbeat.beats >= n
