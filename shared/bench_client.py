"""The benchmark's own clients: submissions on kept-alive connections, sent by the lean HTTP client the
gateway relays with (:mod:`shared.upstream_client`), from a process on uvloop.

On a two-core machine the load generator shares the cores with the stack it measures. With aiohttp's
``ClientSession`` on the default event loop, the bench's 32 clients took about 0.24 ms of CPU per
submission (15% of a core at 630 jobs/s): CPU the stack then lacked, so the bench measured its own
client as much as the pipeline. The requests are the same as before: the same bodies, and the headers
aiohttp's client sends (``Accept``, ``Accept-Encoding``, ``User-Agent``, ``Content-Type``), so the
gateway and the receptionists have the same work per request. The bench's CPU per job is reported beside
the services' (``throughput.client_cpu_ms_per_job``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import orjson

from shared.upstream_client import UpstreamClient

T = TypeVar("T")

#: What aiohttp's client sends with a JSON body, besides ``Host`` and ``Content-Length``.
_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"), ("User-Agent", "conveyor-bench"),
            ("Content-Type", "application/json"))


class Submitter:
    """POSTs of JSON bodies, at most ``connections`` at a time, on connections kept for the next one."""

    def __init__(self, connections: int, *, timeout_s: float = 60.0) -> None:
        self.client = UpstreamClient(limit=connections, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)

    async def post(self, base_url: str, route: str, body: Mapping[str, Any],
                   headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """POST ``body`` as JSON to ``base_url`` + ``route``: the answer's status and body."""
        extra = tuple(headers.items()) if headers else ()
        resp = await self.client.request("POST", base_url, route, _HEADERS + extra, orjson.dumps(body))
        try:
            return resp.status, await resp.read()
        finally:
            resp.release()

    async def close(self) -> None:
        await self.client.close()


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed (as the services run)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional speed-up
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
