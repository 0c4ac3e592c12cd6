"""``conveyor up``: the whole stack on one machine, one process a service.

It starts the services in dependency order (logging, registry and scheduler, receptionists, handlers,
gateway), waits until each answers ``/health``, prints where everything is and writes it to
``<data dir>/stack.json``. A service that dies is restarted with backoff. On Ctrl-C or SIGTERM every
service is stopped in reverse order (SIGTERM, then SIGKILL after a grace period), none left behind; the
children also get SIGTERM from the kernel if the launcher itself is killed (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from loguru import logger

from shared.table import table


@dataclass
class Options:
    receptionists: int = 2
    handlers: int = 2
    time_scale: float = 1.0
    data_dir: Path = Path("var")
    port_base: int = 8080
    host: str = "127.0.0.1"
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    health_timeout_s: float = 60.0
    #: The bulk data store of handlers and receptionists (default: ``sqlite:///<data dir>/data.db``).
    data_store_url: str | None = None


@dataclass
class Service:
    name: str  # instance name: "receptionist-1"
    module: str  # python -m <module>
    port: int
    env: dict[str, str]
    group: int  # start order; stopped in reverse
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def kept_secret(data_dir: Path, name: str, env: str) -> str:
    """The secret in ``env``, else the one kept in ``<data dir>/<name>`` (made once, owner-only)."""
    if value := os.environ.get(env):
        return value
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def service_token(data_dir: Path) -> str:
    """The internal service token: ``CONVEYOR_SERVICE_TOKEN``, else ``<data dir>/service_token``."""
    return kept_secret(data_dir, "service_token", "CONVEYOR_SERVICE_TOKEN")


def plan(opts: Options) -> list[Service]:
    """The services of the stack, with their ports and environments."""
    data = opts.data_dir.resolve()
    base = opts.port_base
    token = service_token(data)
    log_url = f"http://127.0.0.1:{base + 12}"
    registry_url = f"http://127.0.0.1:{base + 11}"
    scheduler_url = f"http://127.0.0.1:{base + 10}"
    artifacts = str(data / "artifacts")
    data_store = opts.data_store_url or f"sqlite:///{data}/data.db"
    inherited = dict(os.environ)

    def env(prefix: str, instance: str, port: int, host: str = "127.0.0.1", **values: str) -> dict[str, str]:
        out = dict(inherited)
        out.update({f"{prefix}PORT": str(port), f"{prefix}HOST": host, f"{prefix}INSTANCE": instance,
                    f"{prefix}SERVICE_TOKEN": token, f"{prefix}LOG_URL": log_url, "PYTHONUNBUFFERED": "1"})
        for key, value in values.items():
            name = f"{prefix}{key.upper()}"
            if key.endswith("store_url") and name in inherited:
                continue  # an operator's choice of backend wins over the embedded default
            out[name] = value
        return out

    services = [
        Service("logging_service", "logging_service", base + 12,
                env("LOGGING_", "logging_service", base + 12, store_url=f"sqlite:///{data}/logs.db"), group=0),
        Service("registry", "registry", base + 11,
                env("REGISTRY_", "registry", base + 11, store_url=f"sqlite:///{data}/registry.db"), group=1),
        Service("scheduler", "scheduler", base + 10,
                env("SCHEDULER_", "scheduler", base + 10, store_url=f"sqlite:///{data}/scheduler.db"), group=1),
    ]
    receptionist_urls = []
    for i in range(1, opts.receptionists + 1):
        name, port = f"receptionist-{i}", base + i
        receptionist_urls.append(f"http://127.0.0.1:{port}")
        services.append(Service(name, "receptionist", port, env(
            "RECEPTIONIST_", name, port, registry_url=registry_url, scheduler_url=scheduler_url,
            logging_url=log_url, artifacts_dir=artifacts, data_store_url=data_store,
            time_scale=str(opts.time_scale)), group=2))
    for i in range(1, opts.handlers + 1):
        name, port = f"handler-{i}", base + 19 + i
        services.append(Service(name, "handler", port, env(
            "HANDLER_", name, port, registry_url=registry_url, scheduler_url=scheduler_url,
            artifacts_dir=artifacts, data_store_url=data_store, time_scale=str(opts.time_scale)),
            group=3))
    gateway_values = {"receptionists": ",".join(receptionist_urls), "registry_url": registry_url,
                      "jwt_secret": kept_secret(data, "jwt_secret", "CONVEYOR_JWT_SECRET")}
    if opts.rate_limit_per_s is not None:
        gateway_values["rate_limit_per_s"] = str(opts.rate_limit_per_s)
    if opts.rate_limit_burst is not None:
        gateway_values["rate_limit_burst"] = str(opts.rate_limit_burst)
    services.append(Service("gateway", "gateway", base, env("GATEWAY_", "gateway", base, host=opts.host,
                                                             **gateway_values), group=4))
    return services


class Launcher:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.data_dir = opts.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.stopping = asyncio.Event()
        self.services: list[Service] = []
        self._monitors: list[asyncio.Task[None]] = []

    async def _spawn(self, svc: Service) -> None:
        svc.log_path = self.log_dir / f"{svc.name}.log"
        log = open(svc.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            svc.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", svc.module, env=svc.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        svc.started_at = time.monotonic()

    async def _wait_healthy(self, session: aiohttp.ClientSession, svc: Service) -> None:
        deadline = time.monotonic() + self.opts.health_timeout_s
        while time.monotonic() < deadline:
            if svc.process is not None and svc.process.returncode is not None:
                raise RuntimeError(f"{svc.name} exited with code {svc.process.returncode}; see {svc.log_path}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(svc.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{svc.name} was not healthy after {self.opts.health_timeout_s:g}s; see {svc.log_path}")

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.services = plan(self.opts)
        async with aiohttp.ClientSession() as session:
            for group in sorted({svc.group for svc in self.services}):
                members = [svc for svc in self.services if svc.group == group]
                for svc in members:
                    await self._spawn(svc)
                await asyncio.gather(*(self._wait_healthy(session, svc) for svc in members))
                if any(svc.name == "registry" for svc in members):
                    await self._first_admin(session)
        self._monitors = [asyncio.create_task(self._monitor(svc), name=f"monitor-{svc.name}")
                          for svc in self.services]
        self._write_state()

    async def _first_admin(self, session: aiohttp.ClientSession) -> None:
        """On a registry with no users, make ``admin``: its password is ``CONVEYOR_ADMIN_PASSWORD``, or one
        made now and printed this once (it is kept nowhere)."""
        registry = next(svc for svc in self.services if svc.name == "registry")
        headers = {"X-Service-Token": service_token(self.data_dir)}
        async with session.get(registry.url + "/users", headers=headers) as resp:
            if (await resp.json())["items"]:
                return
        password = os.environ.get("CONVEYOR_ADMIN_PASSWORD") or None
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        async with session.post(registry.url + "/users", headers=headers,
                                json={"username": "admin", "password": password, "roles": ["admin"]}) as resp:
            if resp.status not in (201, 409):
                raise RuntimeError(f"could not create the first admin: {resp.status} {await resp.text()}")
        if generated:
            print(f"\nFirst start: created the user 'admin' with the password {password}\n"
                  "(shown this once; set CONVEYOR_ADMIN_PASSWORD to choose it)\n", flush=True)
        logger.info("created the first admin user")

    async def _monitor(self, svc: Service) -> None:
        """Restart ``svc`` whenever it dies, with backoff (reset after a minute of good health)."""
        backoff_s = 1.0
        while True:
            assert svc.process is not None
            code = await svc.process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - svc.started_at > 60:
                backoff_s = 1.0
            logger.warning("{} (pid {}) exited with code {}; restarting in {:.0f}s", svc.name, svc.process.pid,
                           code, backoff_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=backoff_s)
            if self.stopping.is_set():
                return
            backoff_s = min(backoff_s * 2, 30.0)
            await self._spawn(svc)
            svc.restarts += 1
            logger.info("{} restarted (pid {}, restart #{})", svc.name, svc.process.pid, svc.restarts)
            self._write_state()

    def _write_state(self) -> None:
        state = {
            "gateway": f"http://{self.opts.host}:{self.opts.port_base}",
            "services": [{"name": s.name, "url": s.url, "pid": s.process.pid if s.process else None,
                          "restarts": s.restarts, "log": str(s.log_path)} for s in self.services],
        }
        # Written aside, then renamed over: a reader never sees half a file.
        tmp = self.data_dir / "stack.json.tmp"
        tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.data_dir / "stack.json")

    def table(self) -> str:
        rows = [("service", "url", "pid", "log")]
        rows += [(s.name, s.url, str(s.process.pid if s.process else "-"), str(s.log_path)) for s in self.services]
        return table(rows)

    async def stop(self) -> None:
        """Stop every service, last started first. Safe twice."""
        self.stopping.set()
        for group in sorted({svc.group for svc in self.services}, reverse=True):
            members = [svc for svc in self.services if svc.group == group]
            await asyncio.gather(*(self._stop_one(svc) for svc in members))
        for task in self._monitors:
            task.cancel()
        await asyncio.gather(*self._monitors, return_exceptions=True)

    async def _stop_one(self, svc: Service, grace_s: float = 20.0) -> None:
        proc = svc.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace_s)
        except TimeoutError:
            logger.warning("{} did not stop in {:.0f}s; killing it", svc.name, grace_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def up(opts: Options) -> int:
    launcher = Launcher(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, launcher.stopping.set)
    try:
        starting = asyncio.create_task(launcher.start())
        stop_wait = asyncio.create_task(launcher.stopping.wait())
        done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            print(launcher.table(), flush=True)
            print(f"\nConveyor is up: http://{opts.host}:{opts.port_base}  (Ctrl-C stops it; data in {launcher.data_dir})",
                  flush=True)
            await launcher.stopping.wait()
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        logger.info("stopping the stack")
        return 0
    except RuntimeError as exc:
        logger.error("could not start the stack: {}", exc)
        return 1
    finally:
        await launcher.stop()
        logger.info("stack stopped")


def stack_state(data_dir: Path) -> dict[str, Any]:
    """What ``conveyor up`` wrote about the running stack."""
    return orjson.loads((data_dir / "stack.json").read_bytes())
