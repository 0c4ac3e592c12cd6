"""The heartbeat every service runs (:mod:`shared.heartbeat`), against a real registry on loopback: it never
fails its service, says once that the registry is down, and registers as soon as the registry is back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from shared.heartbeat import HEARTBEAT, Heartbeat, RegistrySink, advertised_url
from shared.http import ServiceClient
from shared.instances import InstanceKind, alive_urls
from tests.support import wait_until

TOKEN = "t" * 40


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The messages logged at WARNING and above while the test runs."""
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(message.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def instances(session: Any, registry_url: str) -> list[dict[str, Any]]:
    async with session.get(registry_url + "/instances", headers={"X-Service-Token": TOKEN}) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["items"])


async def test_a_registry_that_is_down_is_said_once_and_joined_when_it_is_back(
        aiohttp_server: Any, aiohttp_client: Any, warnings: list[str]) -> None:
    port = free_port()
    registry_url = f"http://127.0.0.1:{port}"
    heartbeat = Heartbeat("handler", "handler-7", RegistrySink(registry_url, token=TOKEN, timeout_s=1),
                          interval_s=0.02, snapshot=lambda: {"running": 0}, startup_grace_s=0)
    await heartbeat.start("http://192.0.2.7:8107")
    try:
        await wait_until(lambda: _at_least(heartbeat.failures, 4), what="heartbeats failing on a closed port")
        assert [w for w in warnings if "heartbeat" in w] == [warnings[0]] and "trying again" in warnings[0]
        registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)),
                                        port=port)
        client = await aiohttp_client(registry)

        async def registered() -> list[dict[str, Any]]:
            return await instances(client.session, registry_url)

        (item,) = await wait_until(registered, what="the instance registered once the registry is up")
        assert item["name"] == "handler-7" and item["kind"] == "handler" and item["url"] == "http://192.0.2.7:8107"
        assert item["status"] == {"running": 0} and item["gone"] is False
        assert len([w for w in warnings if "heartbeat" in w]) == 1  # one line for the whole outage
    finally:
        await heartbeat.stop()
    assert await instances(client.session, registry_url) == []  # a clean stop deregisters
    await heartbeat.stop()  # safe twice


async def test_a_registry_not_up_yet_while_the_instance_starts_is_no_warning(warnings: list[str]) -> None:
    # Services start in turns (the logging service before the registry): within its startup grace an
    # instance only notes that the registry does not answer yet.
    heartbeat = Heartbeat("logging_service", "logging_service",
                          RegistrySink(f"http://127.0.0.1:{free_port()}", token=TOKEN, timeout_s=1), interval_s=0.02,
                          snapshot=dict)
    await heartbeat.start("http://192.0.2.9:8092")
    try:
        await wait_until(lambda: _at_least(heartbeat.failures, 3), what="heartbeats failing on a closed port")
    finally:
        await heartbeat.stop()
    assert warnings == []


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def test_a_failing_snapshot_still_heartbeats(aiohttp_client: Any, warnings: list[str]) -> None:
    client = await aiohttp_client(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    registry_url = str(client.make_url("")).rstrip("/")

    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug in the snapshot")

    heartbeat = Heartbeat("scheduler", "scheduler", RegistrySink(registry_url, token=TOKEN, timeout_s=1),
                          interval_s=0.02, snapshot=broken)
    await heartbeat.start("http://192.0.2.8:8090")
    try:
        (item,) = await wait_until(lambda: instances(client.session, registry_url), what="the registration")
        assert item["status"] == {"snapshot": "failed: RuntimeError"}
    finally:
        await heartbeat.stop()


async def test_a_service_started_with_its_url_is_found_alive_by_kind(aiohttp_client: Any, aiohttp_server: Any
                                                                      ) -> None:
    """The discovery data source: :func:`shared.instances.alive_urls` lists the schedulers that heartbeat."""
    registry = await aiohttp_client(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    registry_url = str(registry.make_url("")).rstrip("/")
    schedulers = []
    for _ in range(2):
        server = await aiohttp_server(scheduler_app(SchedulerSettings(
            store_url="memory://", service_token=TOKEN, registry_url=registry_url, instance_heartbeat_s=0.05)))
        await server.app[HEARTBEAT].start(str(server.make_url("")).rstrip("/"))
        schedulers.append(server)
    client = ServiceClient("registry", registry_url, registry.session, token=TOKEN)
    urls = {str(server.make_url("")).rstrip("/") for server in schedulers}

    async def both() -> bool:
        return set(await alive_urls(client, InstanceKind.SCHEDULER)) == urls

    await wait_until(both, what="both schedulers alive")
    assert await alive_urls(client, InstanceKind.RECEPTIONIST) == []
    await schedulers[0].app[HEARTBEAT].stop()
    assert await alive_urls(client, "scheduler") == [str(schedulers[1].make_url("")).rstrip("/")]


def test_an_instance_advertises_its_setting_else_the_address_it_binds() -> None:
    assert advertised_url(SchedulerSettings(host="192.0.2.4"), 8090) == "http://192.0.2.4:8090"
    assert advertised_url(SchedulerSettings(host="2001:db8::4"), 8090) == "http://[2001:db8::4]:8090"
    assert advertised_url(SchedulerSettings(host="0.0.0.0"), 8090) is None  # which address? not guessed
    assert advertised_url(SchedulerSettings(host="::"), 8090) is None
    given = SchedulerSettings(host="0.0.0.0", advertise_url="https://sched.example:443/")
    assert advertised_url(given, 8090) == "https://sched.example:443"
    with pytest.raises(ValueError, match="base URL"):
        SchedulerSettings(advertise_url="sched.example:8090")


def test_an_app_heartbeats_only_with_a_registry_to_heartbeat_to() -> None:
    assert scheduler_app(SchedulerSettings(store_url="memory://"))[HEARTBEAT] is None  # no registry URL
    assert scheduler_app(SchedulerSettings(store_url="memory://", registry_url="http://192.0.2.1:8091",
                                           instance_heartbeat_s=0))[HEARTBEAT] is None  # turned off
    app = scheduler_app(SchedulerSettings(store_url="memory://", registry_url="http://192.0.2.1:8091",
                                          instance="scheduler-2"))
    heartbeat = app[HEARTBEAT]
    assert heartbeat is not None and heartbeat.kind == InstanceKind.SCHEDULER and heartbeat.name == "scheduler-2"
    assert heartbeat.url is None  # started only once the process listens (shared.server.run)


async def test_a_scheduler_client_follows_the_schedulers_the_registry_knows(aiohttp_client: Any,
                                                                          aiohttp_server: Any) -> None:
    """Receptionists and handlers (:mod:`shared.discovery`): a scheduler that registers joins their client's
    list, after the configured one; when it leaves, it leaves the list; the configured one always stays."""
    from shared.discovery import follow_once

    registry = await aiohttp_client(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    registry_url = str(registry.make_url("")).rstrip("/")
    registry_client = ServiceClient("registry", registry_url, registry.session, token=TOKEN)
    configured = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    seed = str(configured.make_url("")).rstrip("/")
    joining = await aiohttp_server(scheduler_app(SchedulerSettings(
        store_url="memory://", service_token=TOKEN, registry_url=registry_url, instance_heartbeat_s=0.05)))
    other = str(joining.make_url("")).rstrip("/")
    schedulers = ServiceClient("scheduler", seed, registry.session, token=TOKEN)

    await follow_once(schedulers, registry_client, InstanceKind.SCHEDULER, [seed])
    assert schedulers.urls == [seed]
    await joining.app[HEARTBEAT].start(other)

    async def joined() -> bool:
        await follow_once(schedulers, registry_client, InstanceKind.SCHEDULER, [seed])
        return schedulers.urls == [seed, other]

    await wait_until(joined, what="the registered scheduler in the client's list")
    _, status = await schedulers.get("/status")  # and the list works
    assert "queues" in status
    await joining.app[HEARTBEAT].stop()  # deregisters
    await follow_once(schedulers, registry_client, InstanceKind.SCHEDULER, [seed])
    assert schedulers.urls == [seed]
