"""Fair shares of the event streams: a cap per caller besides the receptionist's global one, and a slot that
comes back as soon as its client goes away. The gateway and the receptionist are served as
``shared.web.run`` serves them (a handler is not cancelled when its client leaves: the stream itself has to
notice), in front of the real registry and scheduler on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from tests.sse import SseReader
from tests.support import wait_until

PASSWORD = "correct horse battery"
Serve = Callable[[web.Application], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an app on a loopback port like ``shared.web.run`` does; its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def settings(core: Any, tmp_path: Path, **overrides: Any) -> ReceptionistSettings:
    return ReceptionistSettings(**{
        "registry_url": core.registry_url, "scheduler_url": core.scheduler_url, "artifacts_dir": str(tmp_path),
        "sweep_interval_s": 0, "event_keepalive_s": 15.0, "event_poll_wait_s": 10.0, **overrides})


async def login(session: aiohttp.ClientSession, core: Any, gateway: str, username: str) -> dict[str, str]:
    status, _ = await core.registry("POST", "/users", json={"username": username, "password": PASSWORD,
                                                            "roles": ["user"]})
    assert status == 201
    async with session.post(gateway + "/auth/token", json={"username": username, "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_one_user_cannot_take_every_stream_and_a_closed_one_frees_its_slot(
        serve: Serve, core: Any, tmp_path: Path) -> None:
    receptionist = await serve(receptionist_app(settings(core, tmp_path, event_streams_max=10,
                                                         event_streams_per_identity=2)))
    gateway = await serve(gateway_app(GatewaySettings(receptionists=[receptionist], registry_url=core.registry_url,
                                                      jwt_secret="s" * 48, rate_limit_per_s=0)))
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        alice, bob = await login(session, core, gateway, "alice"), await login(session, core, gateway, "bob")

        async def open_stream(headers: dict[str, str]) -> aiohttp.ClientResponse:
            resp = await session.get(gateway + "/events", headers=headers)
            stack.push_async_callback(resp.release)
            return resp

        async def open_here() -> int:
            status, body = await core_status(session, receptionist)
            assert status == 200, body
            return body["event_streams"]

        alices = [SseReader(await open_stream(alice)) for _ in range(2)]
        refused = await open_stream(alice)
        assert refused.status == 429 and refused.content_type == "application/json"
        assert refused.headers["Retry-After"] == "1"
        body = await refused.json()
        assert body["error"] and body["details"] == [{"field": "stream", "message": "at most 2 at once per caller"}]
        SseReader(await open_stream(bob))  # another user still gets theirs
        assert await open_here() == 3

        alices[0].resp.close()
        await wait_until(lambda: _equals(open_here, 2), what="alice's closed stream to free its slot")
        SseReader(await open_stream(alice))
        assert (await open_stream(alice)).status == 429


async def core_status(session: aiohttp.ClientSession, receptionist: str) -> tuple[int, Any]:
    async with session.get(receptionist + "/status") as resp:
        return resp.status, await resp.json()


async def _equals(read: Callable[[], Any], expected: int) -> bool:
    return await read() == expected


async def test_anonymous_clients_are_capped_by_address(aiohttp_client: Any, core: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(receptionist_app(settings(core, tmp_path, event_streams_per_identity=1)))
    anonymous = {"X-Conveyor-User": "anonymous", "X-Conveyor-Roles": "user"}
    first = SseReader(await client.get("/events", headers={**anonymous, "X-Forwarded-For": "192.0.2.1"}))
    again = await client.get("/events", headers={**anonymous, "X-Forwarded-For": "198.51.100.9, 192.0.2.1"})
    assert again.status == 429
    SseReader(await client.get("/events", headers={**anonymous, "X-Forwarded-For": "192.0.2.2"}))
    first.resp.close()
