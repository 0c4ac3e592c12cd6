"""A scheduler stops in bounded time even when its Redis answers nothing: the lease reaper's call in flight
is cancelled and its connection dropped under a timeout, never waited on for ever."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from scheduler.app import create_app
from scheduler.settings import Settings


async def test_a_silent_redis_does_not_hold_the_stop() -> None:
    connected = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)  # accepts, reads, never answers
        connected.set()
        while await reader.read(1024):
            pass

    redis_like = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = redis_like.sockets[0].getsockname()[1]
    runner = web.AppRunner(create_app(Settings(store_url=f"redis://127.0.0.1:{port}/0", reap_interval_s=0.05)))
    await runner.setup()
    await asyncio.wait_for(connected.wait(), 10)  # the reaper's first call waits on the silent server now
    started = time.monotonic()
    await asyncio.wait_for(runner.cleanup(), 30)
    assert time.monotonic() - started < 30
    for peer in peers:
        peer.close()
    redis_like.close()
    await redis_like.wait_closed()
