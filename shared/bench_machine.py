"""``conveyor bench``'s machine phase: how fast this machine is at the moment, measured the same way on
every run, so that a slow hour can be told apart from a slower commit.

The two-core virtual machine this project is measured on ran the same commit at 380 jobs/s one day and at
1,050 another, and single runs of unchanged code scatter by a quarter within an hour. Every run now begins
with a bare aiohttp server (uvloop, one route, no middleware, nothing of Conveyor's) in a process of its
own, before the stack starts:

- ``flat_out_us_per_request``: its CPU a request while ``clients`` clients keep it busy: the machine's
  speed at the work a service does;
- ``paced_us_per_request``: its CPU a request at ``rate`` requests a second: what waking a sleeping
  process costs, which is most of a job's CPU at low load (see the README's speed section).

Compare a run's figures with another's only when these two are alike.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

import aiohttp

from shared.bench_stats import cpu_seconds, schedstat_seconds


def _cpu_s(pid: int) -> float:
    """The bare server's CPU seconds to the nanosecond, summed over its threads (:func:`schedstat_seconds`:
    the figures here are tens of milliseconds, where ``/proc/PID/stat``'s clock ticks are ten), else as
    :func:`cpu_seconds` has them. Only for a process whose threads all live as long as it does: a thread that
    ended takes its time with it there, which is why the stack's services are measured by :func:`cpu_seconds`."""
    on_core = schedstat_seconds(pid, 0)
    return on_core if on_core is not None else cpu_seconds(pid)


async def _requests(session: aiohttp.ClientSession, url: str, n: int, clients: int, rate: float) -> None:
    """``n`` GETs of ``url``: ``clients`` at a time back to back when ``rate`` is 0, else at ``rate`` a
    second, open loop."""
    async def one() -> None:
        async with session.get(url) as resp:
            await resp.read()
            resp.raise_for_status()

    if rate <= 0:
        left = iter(range(n))

        async def client() -> None:
            for _ in left:
                await one()

        await asyncio.gather(*(client() for _ in range(clients)))
        return
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)


async def machine_phase(*, requests: int = 5000, clients: int = 32, rate: float = 200.0) -> dict[str, Any]:
    """The bare server's CPU a request flat out (``requests`` from ``clients`` clients) and at ``rate`` a
    second (as many, up to three seconds' worth)."""
    paced_requests = max(1, min(requests, round(3 * rate)))
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "shared.bench_machine",
                                                  stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    try:
        assert server.stdout is not None
        # The server binds a port of the system's choosing and says which, once it listens: no port can be
        # taken by another process in between.
        line = await asyncio.wait_for(server.stdout.readline(), timeout=30)
        if not line.strip().isdigit():
            raise RuntimeError("the machine phase's bare server did not start")
        url = f"http://127.0.0.1:{int(line)}/"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients * 2)) as session:
            figures = {}
            for name, n, rate_per_s in (("flat_out", requests, 0.0), ("paced", paced_requests, rate)):
                before = _cpu_s(server.pid)
                await _requests(session, url, n, clients, rate_per_s)
                figures[f"{name}_us_per_request"] = round(1e6 * (_cpu_s(server.pid) - before) / n, 1)
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
    return {"server": "aiohttp + uvloop, one route", "clients": clients, "paced_rate_per_s": rate, **figures,
            "ok": figures["flat_out_us_per_request"] > 0 and figures["paced_us_per_request"] > 0}


def _serve() -> None:
    """The bare server: ``GET /`` answers a small JSON body, as the services' health checks do. It listens on
    a port of the system's choosing, and prints it once it does."""
    import uvloop
    from aiohttp import web

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def tell_port(_: web.Application) -> None:
        print(listener.getsockname()[1], flush=True)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # a connection made before the server accepts waits in the backlog
    app = web.Application()
    app.router.add_get("/", hello)
    app.on_startup.append(tell_port)
    uvloop.install()
    web.run_app(app, sock=listener, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    _serve()
