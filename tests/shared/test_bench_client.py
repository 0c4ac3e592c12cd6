"""The benchmark's submitting client (:mod:`shared.bench_client`) against a real aiohttp server on
loopback: the request a receptionist or the gateway gets from it is the one aiohttp's client sent (JSON
body, the same headers), on one kept-alive connection; and the bench's process runs on uvloop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.bench_client import Submitter, run_on_uvloop


async def test_a_submission_is_a_json_post_with_aiohttps_headers_on_one_kept_connection() -> None:
    seen: list[dict[str, Any]] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "body": await request.json(), "headers": dict(request.headers),
                     "peer": request.transport.get_extra_info("peername") if request.transport else None})
        return web.json_response({"id": len(seen)}, status=201)

    app = web.Application()
    app.router.add_post("/exports", submit)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    submitter = Submitter(4)
    try:
        base = str(server.make_url("")).rstrip("/")
        answers = [await submitter.post(base, "/exports", {"bookId": f"b-{i}", "type": "epub"},
                                        {"X-Conveyor-User": "someone"}) for i in range(3)]
    finally:
        await submitter.close()
        await server.close()

    assert [(status, json.loads(body)) for status, body in answers] == [(201, {"id": i}) for i in (1, 2, 3)]
    assert [s["body"] for s in seen] == [{"bookId": f"b-{i}", "type": "epub"} for i in range(3)]
    headers = seen[0]["headers"]
    assert headers["Content-Type"] == "application/json"
    assert (headers["Accept"], headers["Accept-Encoding"]) == ("*/*", "gzip, deflate")
    assert headers["User-Agent"] and headers["X-Conveyor-User"] == "someone"
    assert int(headers["Content-Length"]) == len(json.dumps(seen[0]["body"], separators=(",", ":")))
    assert len({s["peer"] for s in seen}) == 1  # one connection, kept for the next submission


def test_the_bench_runs_on_uvloop() -> None:
    async def loop_kind() -> bool:
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)

    assert run_on_uvloop(loop_kind()) is True
