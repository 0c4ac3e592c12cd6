"""The gateway in front of real receptionists, themselves in front of the real registry and scheduler
(memory stores), every one a real server on loopback. Every service requires the internal token, so a
job accepted through the gateway also shows the token was passed on."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from gateway.app import PROXY, create_app
from gateway.settings import Settings
from shared.web import SERVICE_TOKEN_HEADER
from tests.support import wait_until

TOKEN = "gateway-test-service-token"
INTERNAL = {SERVICE_TOKEN_HEADER: TOKEN}
METRICS_TOKEN = "m" * 40
EXPORT = {"bookId": "book-1", "type": "epub"}

StartGateway = Callable[..., Awaitable[TestClient]]
StartReceptionist = Callable[..., Awaitable[TestServer]]


def base_url(server: TestServer) -> str:
    return f"http://{server.host}:{server.port}"


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def start_gateway(aiohttp_client: Any) -> StartGateway:
    async def start(receptionists: list[str], **overrides: Any) -> TestClient:
        # No registry behind these gateways: the configured receptionists only, no discovery.
        settings = Settings(receptionists=receptionists, service_token=TOKEN, metrics_token=METRICS_TOKEN,
                            **{"discovery_interval_s": 0, **overrides})
        return await aiohttp_client(create_app(settings))

    return start


@pytest.fixture
async def registry_url(aiohttp_server: Any) -> str:
    from registry.app import create_app as create_registry
    from registry.settings import Settings as RegistrySettings

    server = await aiohttp_server(create_registry(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    return base_url(server)


@pytest.fixture
async def scheduler_url(aiohttp_server: Any) -> str:
    from scheduler.app import create_app as create_scheduler
    from scheduler.settings import Settings as SchedulerSettings

    server = await aiohttp_server(create_scheduler(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    return base_url(server)


@pytest.fixture
def start_receptionist(aiohttp_server: Any, registry_url: str, scheduler_url: str,
                       tmp_path: Path) -> StartReceptionist:
    from receptionist.app import create_app as create_receptionist
    from receptionist.settings import Settings as ReceptionistSettings

    async def start(port: int | None = None) -> TestServer:
        settings = ReceptionistSettings(registry_url=registry_url, scheduler_url=scheduler_url,
                                        artifacts_dir=str(tmp_path / "artifacts"), service_token=TOKEN)
        app = create_receptionist(settings)
        return await (aiohttp_server(app, port=port) if port else aiohttp_server(app))

    return start


async def submitted(receptionist: str) -> int:
    status, body = await get_json(receptionist + "/status", INTERNAL)
    assert status == 200, body
    return body["counters"]["submitted"]


async def gateway_status(gateway: TestClient) -> dict[str, Any]:
    resp = await gateway.get("/status", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert resp.status == 200
    return await resp.json()


# --- without any receptionist -------------------------------------------------------------------


async def test_all_down_is_503_json_with_retry_after(start_gateway: StartGateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{unused_port()}", f"http://127.0.0.1:{unused_port()}"])
    for _ in range(3):
        resp = await gateway.post("/exports", json=EXPORT)
        assert resp.status == 503
        assert await resp.json() == {"error": "no receptionist available", "details": []}
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["X-Request-ID"]
    status = await gateway_status(gateway)
    assert status["no_upstream"] == 3
    assert status["proxied"] == 0
    assert all(not upstream["up"] for upstream in status["upstreams"])


async def test_own_health_is_503_when_no_receptionist_is_up(start_gateway: StartGateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{unused_port()}"], health_interval_s=0.05)

    async def unhealthy() -> bool:
        return (await gateway.get("/health")).status == 503

    await wait_until(unhealthy)
    body = await (await gateway.get("/health")).json()
    assert body["status"] == "unavailable"
    assert body["error"] == "no receptionist available"


async def test_body_over_the_limit_is_refused_before_any_receptionist(start_gateway: StartGateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{unused_port()}"], client_max_size=10_000)
    resp = await gateway.post("/exports", data=b"x" * 20_000, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "request body too large"
    assert (await gateway_status(gateway))["upstreams"][0]["requests"] == 0


def test_receptionists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RECEPTIONISTS", "http://127.0.0.1:8081/, http://127.0.0.1:8082")
    assert Settings().receptionists == ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    monkeypatch.setenv("GATEWAY_RECEPTIONISTS", '["http://10.0.0.1:8081"]')
    assert Settings().receptionists == ["http://10.0.0.1:8081"]
    monkeypatch.setenv("GATEWAY_RECEPTIONISTS", "ftp://nowhere")
    with pytest.raises(ValueError):
        Settings()


# --- in front of real receptionists -------------------------------------------------------------


async def test_round_robin_alternates(start_gateway: StartGateway, start_receptionist: StartReceptionist) -> None:
    first, second = base_url(await start_receptionist()), base_url(await start_receptionist())
    gateway = await start_gateway([first, second])
    for i in range(6):
        resp = await gateway.post("/exports", json={"bookId": f"book-{i}", "type": "epub"})
        assert resp.status == 201, await resp.text()
    assert await submitted(first) == 3
    assert await submitted(second) == 3
    status = await gateway_status(gateway)
    assert [u["requests"] for u in status["upstreams"]] == [3, 3]
    assert status["proxied"] == 6


async def test_own_health_lists_receptionists(start_gateway: StartGateway,
                                              start_receptionist: StartReceptionist) -> None:
    live = base_url(await start_receptionist())
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await start_gateway([live, dead], health_interval_s=0.05)

    async def dead_seen() -> bool:
        body = await (await gateway.get("/health")).json()
        return body["checks"]["receptionists"] == [{"url": live, "up": True}, {"url": dead, "up": False}]

    await wait_until(dead_seen)
    assert (await gateway.get("/health")).status == 200


async def test_stopped_receptionist_is_skipped(start_gateway: StartGateway,
                                               start_receptionist: StartReceptionist) -> None:
    stopped = await start_receptionist()
    live = base_url(await start_receptionist())
    # Probes so rare that only the refused connection can tell the gateway.
    gateway = await start_gateway([base_url(stopped), live], health_interval_s=60, cooloff_s=60)
    assert (await gateway.post("/exports", json=EXPORT)).status == 201
    await stopped.close()
    for i in range(6):
        resp = await gateway.post("/exports", json={"bookId": f"book-{i}", "type": "epub"})
        assert resp.status == 201, await resp.text()
    assert await submitted(live) == 6
    down, up = (await gateway_status(gateway))["upstreams"]
    assert down["up"] is False
    assert down["failures"] == 1  # refused once, then skipped for its cool-off
    assert up["up"] is True and up["failures"] == 0


async def test_health_probes_take_a_receptionist_out_and_back(start_gateway: StartGateway,
                                                             start_receptionist: StartReceptionist) -> None:
    flaky = await start_receptionist()
    port = flaky.port
    assert port is not None
    live = base_url(await start_receptionist())
    # A cool-off far longer than the test: only a probe can bring the receptionist back.
    gateway = await start_gateway([base_url(flaky), live], health_interval_s=0.05, cooloff_s=600)

    async def up_flags() -> list[bool]:
        return [u["up"] for u in (await gateway_status(gateway))["upstreams"]]

    await flaky.close()

    async def flaky_down() -> bool:
        return await up_flags() == [False, True]

    await wait_until(flaky_down)
    for _ in range(4):
        assert (await gateway.post("/exports", json=EXPORT)).status == 201
    assert (await gateway_status(gateway))["upstreams"][0]["requests"] == 0  # skipped, never tried

    back = base_url(await start_receptionist(port=port))

    async def flaky_up() -> bool:
        return await up_flags() == [True, True]

    await wait_until(flaky_up)
    for _ in range(4):
        assert (await gateway.post("/exports", json=EXPORT)).status == 201
    assert await submitted(back) == 2


async def test_request_id_kept_or_made(start_gateway: StartGateway, start_receptionist: StartReceptionist) -> None:
    gateway = await start_gateway([base_url(await start_receptionist())])
    resp = await gateway.post("/exports", json=EXPORT, headers={"X-Request-ID": "req-from-client"})
    assert resp.status == 201
    assert resp.headers["X-Request-ID"] == "req-from-client"
    job_id = (await resp.json())["id"]
    job = await (await gateway.get(f"/jobs/{job_id}")).json()
    assert job["request_id"] == "req-from-client"  # it reached the receptionist and the registry

    resp = await gateway.post("/exports", json=EXPORT)
    made = resp.headers["X-Request-ID"]
    assert len(made) == 32
    job = await (await gateway.get(f"/jobs/{(await resp.json())['id']}")).json()
    assert job["request_id"] == made


async def raw_post(client: TestClient, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """A POST with header bytes as given (aiohttp's client would not send bytes that are not UTF-8): the
    status and the head of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    writer.write(b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n%s\r\n%s" % (path.encode(), len(body), head, body))
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize("given", [b"r\xe9q", b"a b", b"tab\tbed", b"x" * 201, b"caf\xc3\xa9"])
async def test_a_request_id_that_is_not_visible_ascii_is_a_400(start_gateway: StartGateway,
                                                              start_receptionist: StartReceptionist,
                                                              given: bytes) -> None:
    """A caller's request id goes into every log line and call its request makes: one that is not 1 to 200
    visible ASCII characters is refused by name (it was a 500 from the registry, or cut at 200), and the
    answer carries an id made here."""
    gateway = await start_gateway([base_url(await start_receptionist())])
    status, answer = await raw_post(gateway, "/exports", [(b"X-Request-ID", given)], orjson.dumps(EXPORT))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status == 400 and orjson.loads(body)["details"] == [
        {"field": "X-Request-ID", "message": "1 to 200 visible ASCII characters (! to ~), or none for one made here"}]
    assert re.search(rb"\r\nX-Request-ID: [0-9a-f]{32}\r\n", head), head
    longest = "~" * 200
    resp = await gateway.post("/exports", json=EXPORT, headers={"X-Request-ID": longest})
    assert resp.status == 201 and resp.headers["X-Request-ID"] == longest


async def test_a_coded_body_goes_up_decoded_and_a_broken_one_is_the_client_s_400(
        start_gateway: StartGateway, start_receptionist: StartReceptionist) -> None:
    """aiohttp decodes a gzip or deflate body as the gateway reads it: it goes up decoded, without the coding
    and without the client's length of the coded bytes (it went up with both, and the receptionist refused
    a valid gzip body). A body that does not decode is the client's 400, not a 502; a coding nobody decodes
    is a 415 (it went through as if there were none)."""
    gateway = await start_gateway([base_url(await start_receptionist())])
    for coding, coded in (("gzip", gzip.compress(orjson.dumps(EXPORT))), ("deflate", zlib.compress(orjson.dumps(EXPORT)))):
        resp = await gateway.post("/exports", data=coded, headers={"Content-Encoding": coding,
                                                                  "Content-Type": "application/json"})
        assert resp.status == 201, (coding, await resp.text())
        assert (await resp.json())["bookId"] == EXPORT["bookId"]
    resp = await gateway.post("/exports", data=b"not gzip at all " * 64, headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["details"] == [
        {"field": "Content-Encoding", "message": "the body cannot be decoded"}]
    for coding in ("bogus", "gzip, gzip"):
        resp = await gateway.post("/exports", json=EXPORT, headers={"Content-Encoding": coding})
        assert resp.status == 415 and (await resp.json())["details"] == [
            {"field": "Content-Encoding", "message": "a body's content coding is gzip or deflate, or none"}], coding


async def test_client_identity_headers_are_not_passed_on(start_gateway: StartGateway,
                                                          start_receptionist: StartReceptionist,
                                                          registry_url: str) -> None:
    receptionist = base_url(await start_receptionist())
    gateway = await start_gateway([receptionist])
    forged = {"X-Conveyor-User": "mallory", "X-Conveyor-Roles": "admin"}
    resp = await gateway.post("/exports", json=EXPORT, headers=forged)
    assert resp.status == 201
    job_id = (await resp.json())["id"]
    status, job = await get_json(f"{registry_url}/jobs/{job_id}", INTERNAL)
    assert status == 200
    assert job["owner"] == "anonymous"
    # Whatever user a client claims, the receptionist sees the gateway's anonymous user.
    assert (await gateway.get(f"/jobs/{job_id}", headers={"X-Conveyor-User": "someone-else"})).status == 200
    status, _ = await get_json(f"{receptionist}/jobs/{job_id}", {**INTERNAL, "X-Conveyor-User": "mallory"})
    assert status == 404


async def test_rate_limit(start_gateway: StartGateway, start_receptionist: StartReceptionist,
                          registry_url: str, rate_limit_backend: dict[str, Any]) -> None:
    gateway = await start_gateway([base_url(await start_receptionist())], rate_limit_per_s=0.5, rate_limit_burst=2,
                                  registry_url=registry_url, **rate_limit_backend)
    for remaining in (1, 0):
        resp = await gateway.get("/exports")
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "2"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
        assert int(resp.headers["RateLimit-Reset"]) >= 1
    resp = await gateway.get("/exports")
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "too many requests"
    assert resp.headers["Retry-After"] == "2"
    assert resp.headers["RateLimit-Limit"] == "2"
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert resp.headers["X-Request-ID"]
    # Another identity has its own bucket; the gateway's own routes are never limited.
    async with aiohttp.ClientSession() as session, session.post(
            f"{registry_url}/users", json={"username": "other", "password": "long enough"}, headers=INTERNAL) as resp:
        other_id = (await resp.json())["id"]
    other = gateway.app[PROXY].auth.issue(other_id, "other", ["user"], [], epoch=1)
    assert (await gateway.get("/exports", headers={"Authorization": f"Bearer {other}"})).status == 200
    assert (await gateway.get("/health")).status == 200
    status = await gateway_status(gateway)
    assert status["rate_limited"] == 1
    assert status["proxied"] == 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_body_is_streamed_to_the_receptionist(start_gateway: StartGateway,
                                                          start_receptionist: StartReceptionist,
                                                          framing: str) -> None:
    gateway = await start_gateway([base_url(await start_receptionist())])
    body = b'{"bookId": "' + b"x" * (5 * 1024 * 1024) + b'", "type": "epub"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start:start + 256 * 1024]

    data = io.BytesIO(body) if framing == "content-length" else chunks()
    resp = await gateway.post("/exports", data=data, headers={"Content-Type": "application/json"})
    assert resp.status == 413  # the receptionist's limit, not the gateway's
    assert (await resp.json())["error"] == "request body too large"
    status = await gateway_status(gateway)
    assert status["proxied"] == 1
    assert status["upstream_errors"] == 0
    # The connection is still good for the next request.
    assert (await gateway.post("/exports", json=EXPORT)).status == 201


async def test_unknown_route_is_the_receptionists_404(start_gateway: StartGateway,
                                                      start_receptionist: StartReceptionist) -> None:
    gateway = await start_gateway([base_url(await start_receptionist())])
    resp = await gateway.get("/no/such/route?x=1")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not found"
    assert (await gateway_status(gateway))["proxied"] == 1
