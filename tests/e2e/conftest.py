"""A real stack for end-to-end tests: ``conveyor up`` in a subprocess, on free ports, in a temp data dir."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

#: The ports of a stack, from its base: gateway, receptionists, scheduler, registry, logging, handlers, and
#: the instances of several schedulers and registries (``--schedulers``, ``--registries``).
PORT_OFFSETS = [0, *range(1, 10), 10, 11, 12, *range(20, 30), *range(60, 63), *range(70, 73)]


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral ports begin: every outgoing connection takes one of those, so a port up
    there that is free now may be a client's a moment later (a stack then fails on "address in use")."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port_base() -> int:
    """A port base whose whole block of service ports is free right now, below the ephemeral ports."""
    top = max(_ephemeral_start(), 21000) - max(PORT_OFFSETS) - 1
    for _ in range(200):
        base = random.randrange(10000, top, 40)
        sockets = []
        try:
            for offset in PORT_OFFSETS:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free block of ports")


@dataclass
class Stack:
    process: asyncio.subprocess.Process
    data_dir: Path
    port_base: int
    session: aiohttp.ClientSession
    output: list[bytes]
    drain: asyncio.Task[None] | None = None
    host: str = "127.0.0.1"  # what its services bind (``--host``)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port_base}"

    def state(self) -> dict[str, Any]:
        return orjson.loads((self.data_dir / "stack.json").read_bytes())

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.state()["services"] if s["name"] == name)

    def pids(self) -> list[int]:
        return [s["pid"] for s in self.state()["services"] if s["pid"] is not None]  # None: never started

    async def stop(self) -> None:
        """SIGTERM the launcher and check that it stops cleanly, leaving no service process behind."""
        pids = self.pids() if (self.data_dir / "stack.json").exists() else []
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), timeout=60)
        if self.drain is not None:
            await self.drain
        out = b"".join(self.output).decode(errors="replace")
        assert self.process.returncode == 0, out[-3000:]
        assert not [pid for pid in pids if alive(pid)], "service processes left behind"

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            raw = await resp.read()
            body = orjson.loads(raw) if resp.content_type == "application/json" and raw else raw
            return resp.status, body, resp.headers


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as fh:
        if fh.read().split(")")[-1].split()[0] == "Z":
            return False
    return True


@contextlib.asynccontextmanager
async def stack_starter(directory: Path) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Start ``conveyor up`` with the given CLI arguments and extra environment, its data under
    ``directory``; each stack is stopped at the end of the block, checking that it exits cleanly and leaves
    no service process behind."""
    stacks: list[Stack] = []
    session = aiohttp.ClientSession()

    async def start(*args: str, env: dict[str, str] | None = None) -> Stack:
        data_dir = directory / f"stack{len(stacks)}"
        if "--data-dir" in args:
            data_dir = Path(args[args.index("--data-dir") + 1])
        else:
            args = ("--data-dir", str(data_dir), *args)
        base = _free_port_base()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.cli", "up", "--port-base", str(base), *args, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
        stack = Stack(proc, data_dir, base, session, output=[], host=host)
        stacks.append(stack)
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=max(1.0, deadline - time.monotonic()))
            stack.output.append(line)
            if not line:
                out = b"".join(stack.output).decode(errors="replace")
                raise AssertionError(f"conveyor up exited with {await proc.wait()} before the stack was up:\n{out}")
            if b"Conveyor is up" in line:
                break

        async def drain() -> None:  # keep the pipe flowing so the launcher never blocks on its own output
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                stack.output.append(line)

        stack.drain = asyncio.create_task(drain())
        return stack

    try:
        yield start
    finally:
        try:
            for stack in stacks:
                if stack.process.returncode is None:  # not stopped by the test itself
                    await stack.stop()
        finally:
            await session.close()


@pytest.fixture
async def start_stack(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """:func:`stack_starter` for one test: its stacks are stopped after it."""
    async with stack_starter(tmp_path) as start:
        yield start
