"""Two hosts on one machine, for the multi-host test: host B is a network namespace joined to this one by a
veth pair, so a service on B reaches host A only at A's veth address, never over loopback by accident.

- :class:`Link` makes the namespace and the veth pair on a random ``/30`` of ``10.201.0.0/16`` and
  deletes both (:meth:`Link.delete`, safe twice).
- :class:`Forwarder` relays TCP from A's veth address to a server that listens on loopback only (the moto
  S3 server), in a process of its own: run this file as ``python multihost.py HOST TARGET_PORT...``.
- :class:`ServiceProcess` runs one service as ``python -m <service>`` with its settings in the
  environment, in its host's data dir and (for host B) inside the namespace; it can be killed, stopped
  and started again on the same address.

Only root can make namespaces: :func:`netns_unavailable` says why not, for the test to skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def netns_unavailable() -> str | None:
    """Why this process cannot make a network namespace joined by a veth pair, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


@dataclass
class Link:
    """A network namespace (host B) joined to this one (host A) by a veth pair on a ``/30``."""

    namespace: str
    host_veth: str
    host_ip: str  # host A's end
    guest_ip: str  # host B's end, inside the namespace

    @classmethod
    def create(cls) -> Link:
        """A fresh namespace on a random ``10.201.x.y/30`` that no interface here uses yet. Only its veth
        is up in it: its loopback stays down, so anything B sends to 127.0.0.1 fails at once."""
        used = _ip("-4", "-o", "addr", "show").stdout
        for _ in range(100):
            x, y = random.randrange(256), random.randrange(0, 256, 4)
            host_ip, guest_ip = f"10.201.{x}.{y + 1}", f"10.201.{x}.{y + 2}"
            if f" 10.201.{x}." not in used:
                break
        else:
            raise RuntimeError("no free /30 in 10.201.0.0/16")
        tag = uuid.uuid4().hex[:8]
        link = cls(namespace=f"cvy-{tag}", host_veth=f"cvya{tag}", host_ip=host_ip, guest_ip=guest_ip)
        try:
            _ip("netns", "add", link.namespace)
            _ip("link", "add", link.host_veth, "type", "veth", "peer", "name", f"cvyb{tag}")
            _ip("link", "set", f"cvyb{tag}", "netns", link.namespace)
            _ip("addr", "add", f"{host_ip}/30", "dev", link.host_veth)
            _ip("link", "set", link.host_veth, "up")
            _ip("netns", "exec", link.namespace, "ip", "addr", "add", f"{guest_ip}/30", "dev", f"cvyb{tag}")
            _ip("netns", "exec", link.namespace, "ip", "link", "set", f"cvyb{tag}", "up")
        except BaseException:
            link.delete()
            raise
        return link

    @property
    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program on host B (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace]

    def delete(self) -> None:
        """Delete the namespace (which takes its end of the pair with it) and our end. Safe twice."""
        _ip("netns", "delete", self.namespace, check=False)
        _ip("link", "delete", self.host_veth, check=False)

    def exists(self) -> bool:
        return self.namespace in _ip("netns", "list").stdout.split()


class Forwarder:
    """Relays TCP connections to ``listen_host``'s ports to loopback ports, in a process of its own."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.ports: dict[int, int] = {}  # loopback target port -> port on listen_host

    def start(self, listen_host: str, targets: list[int]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, listen_host, *map(str, targets)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the process prints its ports once it listens
        if not line:
            raise RuntimeError(f"the forwarder exited with {self.process.wait()}")
        self.ports = dict(zip(targets, map(int, line.split()), strict=True))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


async def _forward(listen_host: str, targets: list[int]) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def relay(target: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        return handle

    servers = [await asyncio.start_server(relay(target), listen_host, 0) for target in targets]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def free_port(host: str) -> int:
    """A port free on ``host`` right now (an address of this namespace)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """One service of one host: ``python -m <module>`` with ``env``, run in ``cwd`` (its host's data dir)."""

    name: str
    module: str
    url: str  # where it answers /health
    env: dict[str, str]
    cwd: Path
    prefix: list[str] = field(default_factory=list)  # ip netns exec … for host B
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    async def start(self, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        """Start it and wait until its ``/health`` answers 200."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.prefix, sys.executable, "-m", self.module, env=env, cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} was not healthy within {timeout_s:g} s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM it and wait for it to exit (SIGKILL after ``grace_s``). Safe twice."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=grace_s)
        except TimeoutError:
            await self.kill()

    async def restart(self, session: aiohttp.ClientSession) -> None:
        await self.stop()
        await self.start(session)

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


if __name__ == "__main__":
    asyncio.run(_forward(sys.argv[1], [int(port) for port in sys.argv[2:]]))
