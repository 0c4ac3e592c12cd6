"""ServiceClient against a real server on loopback: what is retried, what is not, what is passed on."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.logs import request_id_var
from shared.upstream_client import UpstreamClient


@pytest.fixture
async def flaky(aiohttp_server: Any) -> Any:
    """A server whose /flaky fails with 503 twice before it answers; it records every request."""
    seen: list[web.Request] = []

    async def flaky_route(request: web.Request) -> web.Response:
        seen.append(request)
        if len(seen) <= 2:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"ok": True, "n": len(seen)})

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"error": "no such thing", "details": []}, status=404)

    app = web.Application()
    app.router.add_route("*", "/flaky", flaky_route)
    app.router.add_get("/missing", refuse)
    server = await aiohttp_server(app)
    return server, seen


async def test_idempotent_calls_are_retried_through_5xx(upstream: UpstreamClient | None, flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, token="s3cret", attempts=4, upstream=upstream)
        token = request_id_var.set("rid-1")
        try:
            status, body = await client.get("/flaky")
        finally:
            request_id_var.reset(token)
    assert status == 200 and body == {"ok": True, "n": 3}
    assert len(seen) == 3
    assert all(r.headers["X-Service-Token"] == "s3cret" and r.headers["X-Request-ID"] == "rid-1" for r in seen)


async def test_a_call_that_is_not_idempotent_is_sent_once(upstream: UpstreamClient | None, flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, attempts=4, upstream=upstream)
        with pytest.raises(UpstreamError) as exc:
            await client.post("/flaky", json={"a": 1}, idempotent=False)
    assert len(seen) == 1 and exc.value.upstream_status == 503 and exc.value.status == 503


async def test_a_4xx_is_not_retried_and_keeps_its_body(upstream: UpstreamClient | None, flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, attempts=4, upstream=upstream)
        with pytest.raises(UpstreamError) as exc:
            await client.get("/missing")
    assert len(seen) == 1
    assert exc.value.upstream_status == 404 and exc.value.upstream_body["error"] == "no such thing"
    assert exc.value.status == 502  # our caller sees a bad gateway, not the neighbour's 404


async def test_an_unreachable_service_is_status_zero(upstream: UpstreamClient | None, unused_tcp_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("nobody", f"http://127.0.0.1:{unused_tcp_port}", session, attempts=3, upstream=upstream)
        with pytest.raises(UpstreamError) as exc:
            await client.get("/health")
    assert exc.value.upstream_status == 0 and exc.value.status == 503 and "unreachable" in exc.value.message


@pytest.mark.parametrize(("segments", "raw", "name"), [
    (("users", "alice?x=1"), "/users/alice%3Fx%3D1", "alice?x=1"),
    (("users", "alice#frag"), "/users/alice%23frag", "alice#frag"),
    (("users", "../admin"), "/users/..%2Fadmin", "../admin"),
    (("users", ".."), "/users/%2E%2E", ".."),
    (("users", "."), "/users/%2E", "."),
    (("users", "a%2Fb"), "/users/a%252Fb", "a%2Fb"),
    (("users", "caf\u00e9 au lait"), "/users/caf%C3%A9%20au%20lait", "caf\u00e9 au lait"),
])
async def test_a_path_segment_reaches_the_service_as_one_segment(upstream: UpstreamClient | None, aiohttp_server: Any, segments: tuple[str, ...],
                                                                  raw: str, name: str) -> None:
    """What the service sees of a value built into a path with shared.http.path: the same value, in the
    route it was meant for, with no query, fragment or other route made of it."""
    from shared.http import path

    seen: list[tuple[str, str, str]] = []

    async def user(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.match_info["name"], request.query_string))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/users/{name}", user)
    server = await aiohttp_server(app)
    assert path(*segments) == raw
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("users", str(server.make_url("")), session, upstream=upstream)
        assert await client.get(path(*segments)) == (200, {})
    assert seen == [(raw, name, "")]


async def test_a_large_answer_comes_whole_and_in_time(upstream: UpstreamClient | None, aiohttp_server: Any) -> None:
    """A page of a thousand events or a long log query is larger than what pauses the lean client's reads:
    it still comes whole, well within the call's timeout (it once waited for the timeout, then failed)."""
    items = [{"seq": i, "detail": "x" * 600} for i in range(2000)]  # about 1.3 MB of JSON

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"items": items})

    app = web.Application()
    app.router.add_get("/events", page)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("registry", str(server.make_url("")), session, upstream=upstream, timeout_s=5.0,
                               attempts=1)
        for _ in range(2):
            assert await client.get("/events") == (200, {"items": items})


async def test_the_lean_client_keeps_one_connection_and_opens_another_once_the_service_closed_it(
        aiohttp_server: Any) -> None:
    """Calls through the services' lean client reuse one kept-alive connection; when the service closes an
    idle one (its keep-alive timeout), the next call goes out on a new connection and gets its answer."""
    peers: list[Any] = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"n": len(peers), "q": request.query.get("q")})

    app = web.Application()
    app.router.add_route("*", "/hello", hello)
    server = await aiohttp_server(app, keepalive_timeout=0.2)
    upstream = UpstreamClient(limit=4, connect_timeout_s=3.0, read_timeout_s=3600.0)
    try:
        async with aiohttp.ClientSession() as session:
            client = ServiceClient("hello", str(server.make_url("")), session, upstream=upstream)
            assert await client.get("/hello", params={"q": "a b&c=d"}) == (200, {"n": 1, "q": "a b&c=d"})
            assert await client.post("/hello", json={"x": 1}) == (200, {"n": 2, "q": None})
            assert upstream.opened == 1 and peers[0] == peers[1]
            idle = upstream._idle[str(server.make_url("")).rstrip("/").removeprefix("http://")]
            deadline = asyncio.get_running_loop().time() + 10
            while not idle[0].lost:  # the service closes it after its keep-alive timeout
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            assert await client.post("/hello", json={"x": 2}, idempotent=False) == (200, {"n": 3, "q": None})
            assert upstream.opened == 2 and peers[2] != peers[0]
    finally:
        await upstream.close()
