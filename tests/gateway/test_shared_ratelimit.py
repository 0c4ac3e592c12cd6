"""Two gateways, one budget: with the buckets on Redis, every gateway of a deployment takes from the same
bucket of a client; in process, each gateway has its own. Real gateways, receptionist, registry and
scheduler on loopback, and the real Redis."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from gateway.app import PROXY
from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings

TOKEN = "internal-token-for-shared-rate-limit-tests"
SECRET = "s" * 48
METRICS_TOKEN = "metrics-token-" + "m" * 32


async def start_gateways(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any, count: int,
                         **gateway: Any) -> tuple[list[TestClient], str]:
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    registry_url = str(registry.make_url("")).rstrip("/")
    front = await aiohttp_server(receptionist_app(ReceptionistSettings(
        registry_url=registry_url, scheduler_url=str(scheduler.make_url("")).rstrip("/"),
        artifacts_dir=str(tmp_path), service_token=TOKEN, sweep_interval_s=0)))
    gateways = [await aiohttp_client(gateway_app(GatewaySettings(**{
        "receptionists": [str(front.make_url("")).rstrip("/")], "registry_url": registry_url,
        "service_token": TOKEN, "jwt_secret": SECRET, "metrics_token": METRICS_TOKEN, **gateway})))
        for _ in range(count)]
    return gateways, registry_url


async def test_two_gateways_on_one_redis_give_a_client_one_budget(aiohttp_server: Any, aiohttp_client: Any,
                                                                   tmp_path: Any,
                                                                   rate_limit_backend: dict[str, Any]) -> None:
    (one, two), registry_url = await start_gateways(aiohttp_server, aiohttp_client, tmp_path, 2,
                                                    rate_limit_per_s=0.01, rate_limit_burst=4, **rate_limit_backend)
    budgets = 1 if rate_limit_backend else 2  # on Redis one budget; in process one per gateway

    # An anonymous client, by its address, going to each gateway in turn.
    answers = [await gateway.get("/jobs") for gateway in (one, two) * 6]
    assert [r.status for r in answers] == [200] * 4 * budgets + [429] * (12 - 4 * budgets)
    if budgets == 1:
        assert [r.headers["RateLimit-Remaining"] for r in answers[:4]] == ["3", "2", "1", "0"]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[4 * budgets:])

    # A user, by their id, whatever gateway they come through, with a token either gateway honours.
    async with aiohttp.ClientSession() as session, session.post(
            f"{registry_url}/users", json={"username": "alice", "password": "long enough"},
            headers={"X-Service-Token": TOKEN}) as resp:
        alice_id = (await resp.json())["id"]
    token = one.app[PROXY].auth.issue(alice_id, "alice", ["user"], [], epoch=1)
    alice = {"Authorization": f"Bearer {token}"}
    statuses = [(await gateway.get("/jobs", headers=alice)).status for gateway in (two, one) * 6]
    assert statuses == [200] * 4 * budgets + [429] * (12 - 4 * budgets)

    # Where the buckets live, as operators and scrapers see it.
    status = await (await one.get("/status", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).json()
    assert status["rate_limit"]["backend"] == ("redis" if budgets == 1 else "memory")
    assert status["rate_limit"]["burst"] == 4
    if budgets == 1:
        assert status["rate_limit"]["redis_up"] is True and status["rate_limit"]["fallbacks"] == 0


async def test_a_gateway_whose_redis_is_unreachable_still_limits_on_its_own(aiohttp_server: Any,
                                                                           aiohttp_client: Any,
                                                                           tmp_path: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (gateway,), _ = await start_gateways(aiohttp_server, aiohttp_client, tmp_path, 1, rate_limit_per_s=0.01,
                                         rate_limit_burst=2, rate_limit_url=f"redis://127.0.0.1:{port}/0")
    # Neither lifted nor a 503: the gateway's own buckets decide.
    assert [(await gateway.get("/jobs")).status for _ in range(3)] == [200, 200, 429]
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    metrics = await (await gateway.get("/metrics", headers=scraper)).text()
    # The three requests, and the look at the bucket that answers this scrape.
    assert "conveyor_gateway_rate_limit_fallbacks_total 4.0" in metrics
    status = await (await gateway.get("/status", headers=scraper)).json()
    assert status["rate_limit"]["redis_up"] is False and status["rate_limit"]["fallbacks"] == 5
    assert (await gateway.get("/health")).status == 200


def test_the_rate_limit_url_is_redis_or_unset() -> None:
    assert GatewaySettings(rate_limit_url="").rate_limit_url is None  # an empty variable is unset
    assert GatewaySettings(rate_limit_url="rediss://h:6380/1?prefix=p").rate_limit_url == "rediss://h:6380/1?prefix=p"
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(rate_limit_url="postgresql://user:hunter2@db/x")
    assert caught.value.errors()[0]["msg"] == "Value error, a redis:// or rediss:// URL is required, not postgresql scheme"
