"""ServiceClient against a real server on loopback: what is retried, what is not, what is passed on."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.logs import request_id_var


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


async def test_idempotent_calls_are_retried_through_5xx(flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, token="s3cret", attempts=4)
        token = request_id_var.set("rid-1")
        try:
            status, body = await client.get("/flaky")
        finally:
            request_id_var.reset(token)
    assert status == 200 and body == {"ok": True, "n": 3}
    assert len(seen) == 3
    assert all(r.headers["X-Service-Token"] == "s3cret" and r.headers["X-Request-ID"] == "rid-1" for r in seen)


async def test_a_call_that_is_not_idempotent_is_sent_once(flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, attempts=4)
        with pytest.raises(UpstreamError) as exc:
            await client.post("/flaky", json={"a": 1}, idempotent=False)
    assert len(seen) == 1 and exc.value.upstream_status == 503 and exc.value.status == 503


async def test_a_4xx_is_not_retried_and_keeps_its_body(flaky: Any) -> None:
    server, seen = flaky
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("flaky", str(server.make_url("")), session, attempts=4)
        with pytest.raises(UpstreamError) as exc:
            await client.get("/missing")
    assert len(seen) == 1
    assert exc.value.upstream_status == 404 and exc.value.upstream_body["error"] == "no such thing"
    assert exc.value.status == 502  # our caller sees a bad gateway, not the neighbour's 404


async def test_an_unreachable_service_is_status_zero(unused_tcp_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("nobody", f"http://127.0.0.1:{unused_tcp_port}", session, attempts=3)
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
async def test_a_path_segment_reaches_the_service_as_one_segment(aiohttp_server: Any, segments: tuple[str, ...],
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
        client = ServiceClient("users", str(server.make_url("")), session)
        assert await client.get(path(*segments)) == (200, {})
    assert seen == [(raw, name, "")]
