"""The gateway's lean HTTP/1.1 client (:mod:`shared.upstream_client`) against real servers on loopback,
on asyncio's loop and on uvloop's:
an aiohttp server for the answers a receptionist gives (whole, chunked, streamed, large), and raw
asyncio servers for what aiohttp would never send (answers cut short, malformed heads, interim 1xx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.upstream_client import PAUSE_BYTES, UpstreamBroken, UpstreamClient, UpstreamRefused

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Runner = Callable[[Coroutine[Any, Any, None]], None]


#: Each test runs on asyncio's own loop and on uvloop's, which the services run on (its transports are
#: not asyncio's classes).
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@contextlib.asynccontextmanager
async def lean_client() -> AsyncIterator[UpstreamClient]:
    made = UpstreamClient(limit=10, connect_timeout_s=2.0, read_timeout_s=2.0)
    try:
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def aiohttp_upstream(host: str = "127.0.0.1") -> AsyncIterator[str]:
    """An aiohttp server with the kinds of answer a receptionist gives."""
    big = bytes(range(256)) * (4 * PAUSE_BYTES // 256)  # four times what pauses reading

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "path": request.path_qs,
                                  "body": (await request.read()).decode(),
                                  "headers": {k: v for k, v in request.headers.items()}})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part {i};".encode())
        await resp.write_eof()
        return resp

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/large", large)
    app.router.add_get("/empty", empty)
    server = TestServer(app, host=host)
    await server.start_server()
    try:
        yield f"http://{'[' + host + ']' if ':' in host else host}:{server.port}"
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def raw_servers() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(answer: Answer) -> str:
        async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await answer(reader, writer)

        server = await asyncio.start_server(answering, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        yield start
    finally:
        for writer in writers:
            writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()


@LOOPS
def test_a_post_and_its_whole_answer_on_one_kept_alive_connection(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            for i in range(3):
                resp = await client.request("POST", upstream, f"/echo?n={i}", [("X-Thing", "a b"), ("Content-Length", "99")],
                                            b'{"x": 1}')
                assert resp.status == 200 and resp.reason == "OK"
                assert resp.content_type == "application/json"
                seen = json.loads(await resp.read())
                resp.release()
                assert seen["method"] == "POST" and seen["path"] == f"/echo?n={i}" and seen["body"] == '{"x": 1}'
                assert seen["headers"]["X-Thing"] == "a b"
                assert seen["headers"]["Content-Length"] == "8"  # the body's own, not the caller's
            assert client.opened == 1

    run(scenario())


@LOOPS
def test_chunked_answers_stream_and_keep_the_connection(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            for _ in range(2):
                resp = await client.request("GET", upstream, "/chunked", [], None)
                assert resp.content_length is None
                pieces = [piece async for piece in resp.content.iter_chunked(4)]
                resp.release()
                assert all(len(p) <= 4 for p in pieces)
                assert b"".join(pieces) == b"".join(f"part {i};".encode() for i in range(5))
            assert client.opened == 1

    run(scenario())


@LOOPS
def test_a_large_answer_streams_through_paused_reads(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            resp = await client.request("GET", upstream, "/large", [], None)
            assert resp.content_length == 4 * PAUSE_BYTES
            received = bytearray()
            async for piece in resp.content.iter_chunked(64 * 1024):
                received += piece
                await asyncio.sleep(0)  # a slow reader: the connection's buffer fills and reading pauses
            resp.release()
            assert bytes(received) == bytes(range(256)) * (4 * PAUSE_BYTES // 256)
            again = await client.request("GET", upstream, "/empty", [], None)
            assert again.status == 204 and await again.read() == b""
            again.release()
            assert client.opened == 1

    run(scenario())


@LOOPS
def test_a_large_answer_is_read_whole_past_the_pause(run: Runner) -> None:
    """``read()`` of an answer larger than what pauses reading (a page of a thousand events, a long log
    query) gets it whole: the pause lifts as it takes what has come, rather than waiting for all of it in
    a buffer that cannot grow past the pause."""
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            for _ in range(2):
                resp = await client.request("GET", upstream, "/large", [], None)
                body = await resp.read()
                resp.release()
                assert body == bytes(range(256)) * (4 * PAUSE_BYTES // 256)
            assert client.opened == 1

    run(scenario())


@LOOPS
def test_head_answers_have_no_body(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            resp = await client.request("HEAD", upstream, "/large", [], None)
            assert resp.status == 200 and await resp.read() == b""
            resp.release()
            resp = await client.request("GET", upstream, "/empty", [], None)
            assert resp.status == 204
            resp.release()
            assert client.opened == 1

    run(scenario())


@LOOPS
def test_an_answer_left_unread_closes_its_connection(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            resp = await client.request("GET", upstream, "/large", [], None)
            resp.release()  # the body was not read: the connection cannot carry the next answer
            resp = await client.request("GET", upstream, "/empty", [], None)
            resp.release()
            assert client.opened == 2

    run(scenario())


@LOOPS
def test_a_refused_connection_is_known_unsent(run: Runner) -> None:
    async def scenario() -> None:
        lonely = UpstreamClient(limit=1, connect_timeout_s=1.0, read_timeout_s=1.0)
        with pytest.raises(UpstreamRefused):
            await lonely.request("GET", "http://127.0.0.1:1", "/", [], None)  # nobody listens on port 1
        with pytest.raises(UpstreamRefused):  # its one slot came back: the second try waits for no one
            await asyncio.wait_for(lonely.request("GET", "http://127.0.0.1:1", "/", [], None), 2.0)
        await lonely.close()

    run(scenario())


@LOOPS
def test_a_connection_closed_before_the_answer_is_broken(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, raw_servers() as raw_server:
            async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.readuntil(b"\r\n\r\n")
                writer.close()

            url = await raw_server(hang_up)
            with pytest.raises(UpstreamBroken):
                await client.request("GET", url, "/", [], None)

    run(scenario())


@LOOPS
def test_an_answer_cut_short_is_broken(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, raw_servers() as raw_server:
            async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
                await writer.drain()
                writer.close()

            url = await raw_server(short)
            resp = await client.request("GET", url, "/", [], None)
            with pytest.raises(UpstreamBroken):
                await resp.read()
            resp.release()

    run(scenario())


@LOOPS
def test_an_answer_until_close_is_read_whole_and_not_kept(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, raw_servers() as raw_server:
            async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
                await writer.drain()
                writer.close()

            url = await raw_server(until_close)
            for _ in range(2):
                resp = await client.request("GET", url, "/", [], None)
                assert resp.status == 200 and resp.content_type == "text/plain"  # the interim 100 is passed over
                assert await resp.read() == b"all of it"
                resp.release()
            assert client.opened == 2

    run(scenario())


@pytest.mark.parametrize("answer", [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
@LOOPS
def test_malformed_answers_are_broken(run: Runner, answer: bytes) -> None:
    async def scenario() -> None:
        async with lean_client() as client, raw_servers() as raw_server:
            async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
                await reader.read()  # hold the connection until the client drops it

            url = await raw_server(malformed)
            with pytest.raises(UpstreamBroken):
                resp = await client.request("GET", url, "/", [], None)
                try:
                    await resp.read()
                finally:
                    resp.close()

    run(scenario())


@LOOPS
def test_silence_past_the_read_timeout(run: Runner) -> None:
    async def scenario() -> None:
        async with raw_servers() as raw_server:
            async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.read()

            url = await raw_server(silent)
            quick = UpstreamClient(limit=1, connect_timeout_s=1.0, read_timeout_s=0.1)
            with pytest.raises(TimeoutError):
                await quick.request("GET", url, "/", [], None)
            with pytest.raises(TimeoutError):  # its slot came back
                await asyncio.wait_for(quick.request("GET", url, "/", [], None), 2.0)
            await quick.close()

    run(scenario())


@LOOPS
def test_a_header_with_a_line_break_is_never_sent(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream() as upstream:
            with pytest.raises(ValueError, match="line break"):
                await client.request("GET", upstream, "/echo", [("X-Evil", "a\r\nX-Injected: 1")], None)
            resp = await client.request("GET", upstream, "/echo", [], None)
            assert b"X-Injected" not in await resp.read()
            resp.release()

    run(scenario())


@LOOPS
def test_header_bytes_pass_through_as_they_came(run: Runner) -> None:
    """UTF-8 and stray bytes in headers, both ways: what aiohttp's server decoded (UTF-8, other bytes as
    surrogates) goes out as the same bytes, and an answer's header comes back as the server meant it."""
    async def scenario() -> None:
        async with lean_client() as client, raw_servers() as raw_server:
            seen: list[bytes] = []

            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write("HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"ré.txt\"\r\n"
                             "Content-Length: 0\r\n\r\n".encode())
                await writer.drain()

            url = await raw_server(answer)
            stray = b"\xff".decode("utf-8", "surrogateescape")
            resp = await client.request("GET", url, "/", [("X-Name", "Zoë"), ("X-Odd", "a" + stray)], None)
            resp.release()
            assert b"X-Name: Zo\xc3\xab\r\n" in seen[0] and b"X-Odd: a\xff\r\n" in seen[0]
            assert resp.headers["Content-Disposition"] == 'attachment; filename="ré.txt"'

    run(scenario())


@LOOPS
def test_an_ipv6_upstream_gets_a_host_header_in_brackets(run: Runner) -> None:
    async def scenario() -> None:
        async with lean_client() as client, aiohttp_upstream("::1") as upstream:
            resp = await client.request("GET", upstream, "/echo", [], None)
            seen = json.loads(await resp.read())
            resp.release()
            assert resp.status == 200
            assert seen["headers"]["Host"] == upstream.removeprefix("http://")

    run(scenario())
