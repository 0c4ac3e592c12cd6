"""The gateway keeps connections to receptionists alive, and a submission whose connection broke after it
was sent is sent again without registering its job twice: the gateway gives every POST without an
``Idempotency-Key`` one of its own. Real receptionists, registry and scheduler on loopback, with a TCP
relay (:mod:`tests.gateway.relay`) in front of a receptionist to count connections and break them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.proxy import REPLAY_BODY_BYTES
from shared.api import GATEWAY_KEY_PREFIX
from tests.gateway import test_gateway_proxy as proxy_tests
from tests.gateway.relay import Relay
from tests.gateway.test_gateway_proxy import EXPORT, INTERNAL, StartGateway, StartReceptionist, base_url, get_json

# The gateway's and its neighbours' fixtures, as the proxy's tests have them.
start_gateway = proxy_tests.start_gateway
start_receptionist = proxy_tests.start_receptionist
registry_url = proxy_tests.registry_url
scheduler_url = proxy_tests.scheduler_url


@pytest.fixture
async def relays() -> AsyncIterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        await relay.close()


async def relay_to(relays: list[Relay], server: TestServer, **mode: Any) -> Relay:
    relay = await Relay(server.port, **mode).start()
    relays.append(relay)
    return relay


async def registered(registry: str) -> list[dict[str, Any]]:
    status, page = await get_json(registry + "/jobs?limit=1000", INTERNAL)
    assert status == 200, page
    return page["items"]


async def test_a_submission_whose_connection_broke_after_it_was_sent_makes_one_job(
        start_gateway: StartGateway, start_receptionist: StartReceptionist, registry_url: str,
        relays: list[Relay]) -> None:
    first, second = await start_receptionist(), await start_receptionist()
    # The first receptionist gets the POST and registers the job; its answer never reaches the gateway.
    breaking = await relay_to(relays, first, drop_posts=True)
    gateway = await start_gateway([breaking.url, base_url(second)], health_interval_s=60, cooloff_s=60)

    resp = await gateway.post("/exports", json=EXPORT)

    assert resp.status == 201, await resp.text()  # the client's one request made the job
    job = await resp.json()
    assert breaking.dropped == 1
    jobs = await registered(registry_url)
    assert [j["id"] for j in jobs] == [job["id"]]
    assert jobs[0]["idempotency_key"].startswith(GATEWAY_KEY_PREFIX)
    assert len(jobs[0]["idempotency_key"]) == len(GATEWAY_KEY_PREFIX) + 32
    shown = await (await gateway.get(f"/jobs/{job['id']}")).json()
    assert shown["id"] == job["id"] and shown["idempotency_key"] is None  # the client gave none


async def test_a_clients_own_key_is_kept_through_a_replay(start_gateway: StartGateway,
                                                          start_receptionist: StartReceptionist,
                                                          registry_url: str, relays: list[Relay]) -> None:
    first, second = await start_receptionist(), await start_receptionist()
    breaking = await relay_to(relays, first, drop_posts=True)
    gateway = await start_gateway([breaking.url, base_url(second)], health_interval_s=60, cooloff_s=60)

    resp = await gateway.post("/tasks", json={"description": "once", "duration_s": 0},
                              headers={"Idempotency-Key": "client-key-1"})

    # The repeat found the client's job under the client's key: a 200, as for any repeat of that key.
    assert resp.status == 200, await resp.text()
    assert breaking.dropped == 1 and b"Idempotency-Key: client-key-1" in breaking.requests[-1]
    jobs = await registered(registry_url)
    assert [(j["id"], j["idempotency_key"]) for j in jobs] == [((await resp.json())["id"], "client-key-1")]


async def test_a_client_key_in_the_gateways_namespace_is_refused(start_gateway: StartGateway,
                                                                 start_receptionist: StartReceptionist,
                                                                 registry_url: str) -> None:
    gateway = await start_gateway([base_url(await start_receptionist())])
    resp = await gateway.post("/exports", json=EXPORT, headers={"Idempotency-Key": GATEWAY_KEY_PREFIX + "0" * 32})
    assert resp.status == 400
    assert (await resp.json())["details"] == [{"field": "Idempotency-Key", "message": (
        f"a key starting with {GATEWAY_KEY_PREFIX!r} is the gateway's own; choose another")}]
    assert await registered(registry_url) == []


async def test_many_requests_share_few_connections(start_gateway: StartGateway,
                                                   start_receptionist: StartReceptionist, registry_url: str,
                                                   relays: list[Relay]) -> None:
    counting = await relay_to(relays, await start_receptionist())
    gateway = await start_gateway([counting.url], health_interval_s=60)
    for i in range(30):
        resp = await gateway.post("/exports", json={"bookId": f"book-{i}", "type": "epub"})
        assert resp.status == 201, await resp.text()
        assert (await gateway.get("/exports")).status == 200
    # Concurrent ones take a connection each, and keep them.
    statuses = await asyncio.gather(*(gateway.post("/tasks", json={"description": f"t{i}", "duration_s": 0})
                                      for i in range(4)))
    assert [r.status for r in statuses] == [201] * 4
    assert len(counting.requests) >= 64
    assert counting.accepted <= 6  # it was one per POST: 34 and more
    assert len(await registered(registry_url)) == 34


async def test_a_kept_alive_connection_the_receptionist_closed_is_sent_again(
        start_gateway: StartGateway, start_receptionist: StartReceptionist, registry_url: str,
        relays: list[Relay]) -> None:
    # One request a connection: the second one on a kept-alive connection is read and the connection
    # closed, as a receptionist closing an idle connection does. It is the only receptionist.
    closing = await relay_to(relays, await start_receptionist(), one_per_connection=True)
    gateway = await start_gateway([closing.url], health_interval_s=60)
    for i in range(5):
        resp = await gateway.post("/exports", json={"bookId": f"book-{i}", "type": "epub"})
        assert resp.status == 201, await resp.text()
    assert closing.dropped >= 1
    assert len(await registered(registry_url)) == 5


async def test_other_writes_and_large_bodies_still_go_on_new_connections(
        start_gateway: StartGateway, start_receptionist: StartReceptionist, relays: list[Relay]) -> None:
    counting = await relay_to(relays, await start_receptionist())
    gateway = await start_gateway([counting.url], health_interval_s=60)
    for _ in range(3):  # not a submission: it may not be sent twice (the receptionist refuses the caller)
        resp = await gateway.post("/dead/requeue", json={"all": True})
        assert resp.status == 401, await resp.text()
    big = {"bookId": "b" * (REPLAY_BODY_BYTES + 1), "type": "epub"}
    assert (await gateway.post("/exports", json=big)).status in (201, 400)
    posts = [r for r in counting.requests if r.startswith(b"POST ")]
    assert len(posts) == 4 and all(b"Idempotency-Key: gateway:" in r for r in posts)
    assert counting.accepted >= 4 + 1  # one each, and the probes' kept-alive one
