"""ServiceClient over several instances of a service, each a real server on loopback (or a closed port):
what moves on to the next instance, what fails at once, and how a failed instance is passed over."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.errors import UpstreamError
from shared.http import ServiceClient, service_urls
from shared.upstream_client import UpstreamClient


class Instance:
    """A real server that answers every request with ``status`` (or breaks the connection after reading
    the request, with ``status=0``), recording what it was sent."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.seen: list[tuple[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        await request.read()
        if self.status == 0:
            assert request.transport is not None
            request.transport.close()  # the request arrived; the answer never will
            return web.Response()
        return web.json_response({"status": self.status, "port": request.url.port}, status=self.status)


@pytest.fixture
async def instances(aiohttp_server: Any, unused_tcp_port: int) -> Any:
    """``instances(503, 200, ...)``: servers answering those statuses; ``None`` is a closed port."""

    async def make(*statuses: int | None) -> list[Instance]:
        made = []
        for status in statuses:
            instance = Instance(status or 0)
            if status is None:
                instance.url = f"http://127.0.0.1:{unused_tcp_port}"  # nothing listens there
            else:
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", instance.handle)
                instance.url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
            made.append(instance)
        return made

    return make


def client_of(session: aiohttp.ClientSession, servers: list[Instance], **kwargs: Any) -> ServiceClient:
    return ServiceClient("svc", ",".join(s.url for s in servers), session, **kwargs)


async def test_an_idempotent_call_goes_past_a_closed_port_and_a_5xx_to_the_instance_that_answers(upstream: UpstreamClient | None,
        instances: Any) -> None:
    closed, failing, good = await instances(None, 503, 200)
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[closed, failing, good])
        status, body = await client.get("/jobs/1")
        assert status == 200 and body["status"] == 200
        assert failing.seen == [("GET", "/jobs/1")] and good.seen == [("GET", "/jobs/1")]
        # The closed one is down for a while and the good one preferred: the next call goes straight there.
        assert client.base_url == good.url
        assert [r["up"] for r in client.report()] == [False, True, True]
        await client.post("/jobs/batch", json={"jobs": []})
    assert failing.seen == [("GET", "/jobs/1")]
    assert good.seen == [("GET", "/jobs/1"), ("POST", "/jobs/batch")]


async def test_a_call_that_is_not_idempotent_goes_on_only_when_it_was_never_sent(upstream: UpstreamClient | None, instances: Any) -> None:
    closed, good = await instances(None, 200)
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[closed, good])
        status, _ = await client.post("/dequeue", json={"max": 1}, idempotent=False)
    assert status == 200 and good.seen == [("POST", "/dequeue")]  # refused, so never sent: safe to send on


async def test_a_post_that_was_sent_and_got_a_5xx_is_not_replayed_unless_safe(upstream: UpstreamClient | None, instances: Any) -> None:
    failing, good = await instances(503, 200)
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[failing, good])
        with pytest.raises(UpstreamError) as exc:
            await client.post("/users", json={"username": "ada"}, idempotent=False)
        assert exc.value.upstream_status == 503 and exc.value.status == 503
        assert failing.seen == [("POST", "/users")] and good.seen == []  # it may have taken effect: not replayed
        # The same call, safe to repeat, goes on to the next instance.
        assert (await client.post("/jobs/batch", json={"jobs": []}))[0] == 200
    assert good.seen == [("POST", "/jobs/batch")]


async def test_a_connection_broken_after_the_request_was_sent_replays_only_what_is_safe(upstream: UpstreamClient | None, instances: Any) -> None:
    breaking, good = await instances(0, 200)
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[breaking, good])
        with pytest.raises(UpstreamError) as exc:
            await client.post("/dequeue", json={"max": 1}, idempotent=False)
        assert exc.value.upstream_status == 0
        assert breaking.seen == [("POST", "/dequeue")] and good.seen == []
        # The broken instance is now passed over; a safe call gets its answer from the good one at once.
        assert (await client.get("/health"))[0] == 200
    assert breaking.seen == [("POST", "/dequeue")] and good.seen == [("GET", "/health")]


async def test_every_instance_down_is_unreachable_after_the_rounds(upstream: UpstreamClient | None, instances: Any, unused_tcp_port_factory: Any) -> None:
    failing, = await instances(500)
    closed = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    async with aiohttp.ClientSession() as session:
        client = ServiceClient("svc", [closed, failing.url], session, attempts=3, upstream=upstream)
        with pytest.raises(UpstreamError) as exc:
            await client.get("/health")
    assert len(failing.seen) == 3  # once a round; the closed port, down after round one, went last
    assert exc.value.upstream_status == 500  # an instance's answer says more than another's refusal


async def test_a_down_instance_goes_last_until_its_cool_off_ends(upstream: UpstreamClient | None, instances: Any) -> None:
    closed, good = await instances(None, 200)
    clock = [0.0]
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[closed, good], cooloff_s=5.0, clock=lambda: clock[0])
        await client.get("/a")
        assert client.report()[0] == {"url": closed.url, "up": False, "requests": 1, "failures": 1}
        clock[0] = 4.9
        assert not client.report()[0]["up"]
        clock[0] = 5.0
        assert client.report()[0]["up"]  # half open: the next call that starts there tries it again


async def test_set_urls_replaces_the_instances_and_keeps_what_it_knew(upstream: UpstreamClient | None, instances: Any) -> None:
    first, second, third = await instances(200, 200, 200)
    async with aiohttp.ClientSession() as session:
        client = client_of(session, upstream=upstream, servers=[first, second])
        await client.get("/one")
        client.set_urls([third.url, first.url + "/"])
        assert client.urls == [third.url, first.url]
        assert client.base_url == first.url  # still listed, still preferred
        await client.get("/two")
        client.set_urls(third.url)
        await client.get("/three")
        with pytest.raises(ValueError):
            client.set_urls(" , ")
    assert first.seen == [("GET", "/one"), ("GET", "/two")] and second.seen == []
    assert third.seen == [("GET", "/three")]


def test_service_urls_read_one_url_or_a_list() -> None:
    assert service_urls("http://a:1/") == ["http://a:1"]
    assert service_urls(" http://a:1, http://b:2/ ,,http://a:1") == ["http://a:1", "http://b:2"]
    assert service_urls(["http://a:1", "http://b:2,http://c:3"]) == ["http://a:1", "http://b:2", "http://c:3"]
