"""``conveyor up``: the whole stack on one machine, or one host's part of it (``--only``), one process a service.

It starts the services in dependency order (logging, registry and scheduler, receptionists, handlers,
gateway), waits until each answers ``/health``, prints where everything is and writes it to
``<data dir>/stack.json``. A service that dies is restarted with backoff. On Ctrl-C or SIGTERM every
service is stopped in reverse order (SIGTERM, then SIGKILL after a grace period), none left behind; the
children also get SIGTERM from the kernel if the launcher itself is killed (Linux ``PR_SET_PDEATHSIG``).

Before it starts anything it claims the data dir and the ports (:meth:`Launcher.claim`): a data dir whose
stack still runs, or a port that something else holds, is refused with the reason (:class:`StackRefused`)
and nothing is written. Only the ports of the services it starts are checked. The claim on the data dir is an ``flock`` on ``<data dir>/conveyor.lock``, held
for the launcher's life: the kernel drops it when the launcher dies, however it dies, so a killed stack
leaves no stale lock behind.

Hosts: ``--only`` names the services this host runs (:data:`SERVICES`); every service it starts binds
``--host`` (else its own ``<PREFIX>_HOST``, else 127.0.0.1). A service this host does not run is reached at
the URL its :class:`Options` field names (``--registry-url``, or ``CONVEYOR_REGISTRY_URL`` ...); nothing is
assumed local (:func:`missing_urls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from loguru import logger

from shared.table import table

#: The services ``--only`` may name, in start order.
SERVICES = ("logging", "registry", "scheduler", "receptionist", "handler", "gateway")
#: The services each one calls, so needs the URL of when another host runs it.
NEEDS = {"logging": (), "registry": ("logging",), "scheduler": ("logging",),
         "receptionist": ("logging", "registry", "scheduler"), "handler": ("logging", "registry", "scheduler"),
         "gateway": ("logging", "registry", "receptionist")}
#: Where the URL of a service run elsewhere is read from, when no flag gives it.
URL_ENV = {"logging": "CONVEYOR_LOGGING_URL", "registry": "CONVEYOR_REGISTRY_URL",
           "scheduler": "CONVEYOR_SCHEDULER_URL", "receptionist": "CONVEYOR_RECEPTIONIST_URLS"}
#: Settings an operator's environment sets for the launcher to keep (the backends), by setting name.
OPERATORS_CHOICE = ("store_url", "data_store_url", "artifacts_dir", "artifacts_url")


@dataclass
class Options:
    receptionists: int = 2
    handlers: int = 2
    time_scale: float = 1.0
    data_dir: Path = Path("var")
    port_base: int = 8080
    #: The address every service started here binds; None: each its own ``<PREFIX>_HOST``, else 127.0.0.1.
    host: str | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    health_timeout_s: float = 60.0
    #: The services this host runs (:data:`SERVICES`); the others run elsewhere, at the URLs below.
    only: frozenset[str] = frozenset(SERVICES)
    #: Base URLs of the services run elsewhere (None: from ``URL_ENV``); a comma-separated list for receptionists.
    registry_url: str | None = None
    scheduler_url: str | None = None
    logging_url: str | None = None
    receptionist_urls: str | None = None

    def remote_url(self, service: str) -> str | None:
        """The URL given for ``service`` (a flag, else its ``URL_ENV`` variable), or None."""
        given = getattr(self, "receptionist_urls" if service == "receptionist" else f"{service}_url")
        return given or os.environ.get(URL_ENV[service]) or None


def missing_urls(opts: Options) -> list[str]:
    """What stops ``opts`` from being planned, one line each: a service the started ones call that is neither
    started here nor given a URL, or a URL given for a service that is started here (which would win?)."""
    problems = []
    for service in sorted({need for started in opts.only for need in NEEDS[started]} - opts.only):
        if opts.remote_url(service) is None:
            flag = "--receptionist-url" if service == "receptionist" else f"--{service}-url"
            users = ", ".join(s for s in SERVICES if s in opts.only and service in NEEDS[s])
            problems.append(f"the {users} need{'s' if ',' not in users else ''} the {service} service, which "
                            f"this host does not start (--only): give {flag} or set {URL_ENV[service]}")
    for service in sorted(opts.only & URL_ENV.keys()):
        if opts.remote_url(service) is not None:
            problems.append(f"a {service} URL is given ({URL_ENV[service]} or its flag), but this host starts "
                            "the {service} itself: drop one".replace("{service}", service))
    return problems


def reachable(host: str) -> str:
    """The address a client on this host reaches a server bound to ``host`` at (any address: loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass
class Service:
    name: str  # instance name: "receptionist-1"
    module: str  # python -m <module>
    port: int
    env: dict[str, str]
    group: int  # start order; stopped in reverse
    host: str = "127.0.0.1"  # the address it binds
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://{reachable(self.host)}:{self.port}"


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


def new_password() -> str:
    """A password made for a user: 16 URL-safe characters, never starting with ``-`` (which a command line
    would take for an option: ``--password -x…``)."""
    while (password := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return password


def service_token(data_dir: Path) -> str:
    """The internal service token: ``CONVEYOR_SERVICE_TOKEN``, else ``<data dir>/service_token``."""
    return kept_secret(data_dir, "service_token", "CONVEYOR_SERVICE_TOKEN")


def missing_token(opts: Options) -> str | None:
    """Why this host cannot have the service token, or None: a host that calls services run elsewhere must
    be given theirs (a token made here would be refused there)."""
    remote = {need for started in opts.only for need in NEEDS[started]} - opts.only
    if not remote or os.environ.get("CONVEYOR_SERVICE_TOKEN") or (opts.data_dir / "service_token").exists():
        return None
    return (f"this host calls the {', '.join(sorted(remote))} service(s) of another host: set "
            "CONVEYOR_SERVICE_TOKEN to that deployment's token (the other host's <data dir>/service_token)")


class StackRefused(RuntimeError):
    """The stack cannot start here: its data dir is in use by a running stack, or a port is taken."""


LOCK_NAME = "conveyor.lock"


#: Each service's env prefix, and the instance names and port offsets (from the port base) of its processes.
PREFIXES = {"logging": "LOGGING_", "registry": "REGISTRY_", "scheduler": "SCHEDULER_",
            "receptionist": "RECEPTIONIST_", "handler": "HANDLER_", "gateway": "GATEWAY_"}


def bind_host(opts: Options, service: str) -> str:
    """The address ``service`` binds: ``--host``, else its own ``<PREFIX>_HOST``, else 127.0.0.1."""
    return opts.host or os.environ.get(f"{PREFIXES[service]}HOST") or "127.0.0.1"


def service_ports(opts: Options) -> list[tuple[str, str, int]]:
    """``(service, host, port)`` of every service this host starts, gateway first."""
    base = opts.port_base
    instances = {"gateway": [("gateway", base)],
                 "receptionist": [(f"receptionist-{i}", base + i) for i in range(1, opts.receptionists + 1)],
                 "scheduler": [("scheduler", base + 10)], "registry": [("registry", base + 11)],
                 "logging": [("logging_service", base + 12)],
                 "handler": [(f"handler-{i}", base + 19 + i) for i in range(1, opts.handlers + 1)]}
    return [(name, bind_host(opts, service), port)
            for service in ("gateway", "receptionist", "scheduler", "registry", "logging", "handler")
            if service in opts.only for name, port in instances[service]]


def taken_port(opts: Options) -> tuple[str, str, int] | None:
    """The first service whose port cannot be bound now (something listens there), else None. Bound the
    way the services bind (``SO_REUSEADDR``), so a port that only lingers in TIME_WAIT counts as free."""
    for name, host, port in service_ports(opts):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return name, host, port
                raise StackRefused(f"cannot listen on {host}:{port} for {name}: {exc.strerror}") from exc
    return None


def plan(opts: Options) -> list[Service]:
    """The services this host starts, with their ports and environments. Every URL a service is given is
    one of a service started here or one given in ``opts`` (see :func:`missing_urls`, checked first)."""
    if problems := missing_urls(opts):
        raise StackRefused("; ".join(problems))
    data = opts.data_dir.resolve()
    ports = {name: port for name, _, port in service_ports(opts)}
    token = service_token(data)
    only = opts.only

    def url(service: str, name: str) -> str:
        if service in only:
            return f"http://{reachable(bind_host(opts, service))}:{ports[name]}"
        given = opts.remote_url(service)
        assert given is not None  # missing_urls said so
        return given.rstrip("/")

    log_url = url("logging", "logging_service")
    registry_url = url("registry", "registry") if only & {"receptionist", "handler", "gateway"} else ""
    scheduler_url = url("scheduler", "scheduler") if only & {"receptionist", "handler"} else ""
    artifacts = str(data / "artifacts")
    inherited = dict(os.environ)

    def env(service: str, instance: str, port: int, **values: str) -> dict[str, str]:
        prefix = PREFIXES[service]
        out = dict(inherited)
        out.update({f"{prefix}PORT": str(port), f"{prefix}HOST": bind_host(opts, service),
                    f"{prefix}INSTANCE": instance, f"{prefix}SERVICE_TOKEN": token, f"{prefix}LOG_URL": log_url,
                    "PYTHONUNBUFFERED": "1"})
        for key, value in values.items():
            name = f"{prefix}{key.upper()}"
            if key in OPERATORS_CHOICE and name in inherited:
                continue  # an operator's choice of backend wins over the embedded default
            out[name] = value
        return out

    def service(kind: str, name: str, module: str, group: int, **values: str) -> Service:
        return Service(name, module, ports[name], env(kind, name, ports[name], **values), group=group,
                       host=bind_host(opts, kind))

    services = []
    if "logging" in only:
        services.append(service("logging", "logging_service", "logging_service", 0,
                                store_url=f"sqlite:///{data}/logs.db"))
    if "registry" in only:
        services.append(service("registry", "registry", "registry", 1, store_url=f"sqlite:///{data}/registry.db"))
    if "scheduler" in only:
        services.append(service("scheduler", "scheduler", "scheduler", 1,
                                store_url=f"sqlite:///{data}/scheduler.db"))
    receptionist_urls = []
    if "receptionist" in only:
        for i in range(1, opts.receptionists + 1):
            name = f"receptionist-{i}"
            receptionist_urls.append(url("receptionist", name))
            services.append(service(
                "receptionist", name, "receptionist", 2, registry_url=registry_url, scheduler_url=scheduler_url,
                logging_url=log_url, artifacts_dir=artifacts, data_store_url=f"sqlite:///{data}/data.db",
                time_scale=str(opts.time_scale)))
    elif "gateway" in only:
        receptionist_urls = [u.strip().rstrip("/") for u in (opts.remote_url("receptionist") or "").split(",")
                             if u.strip()]
    if "handler" in only:
        for i in range(1, opts.handlers + 1):
            services.append(service(
                "handler", f"handler-{i}", "handler", 3, registry_url=registry_url, scheduler_url=scheduler_url,
                artifacts_dir=artifacts, data_store_url=f"sqlite:///{data}/data.db", time_scale=str(opts.time_scale)))
    if "gateway" in only:
        gateway_values = {"receptionists": ",".join(receptionist_urls), "registry_url": registry_url,
                          "jwt_secret": kept_secret(data, "jwt_secret", "CONVEYOR_JWT_SECRET")}
        if opts.rate_limit_per_s is not None:
            gateway_values["rate_limit_per_s"] = str(opts.rate_limit_per_s)
        if opts.rate_limit_burst is not None:
            gateway_values["rate_limit_burst"] = str(opts.rate_limit_burst)
        services.append(service("gateway", "gateway", "gateway", 4, **gateway_values))
    return services


class Launcher:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.data_dir = opts.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.stopping = asyncio.Event()
        self.services: list[Service] = []
        self._monitors: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None

    def _lock(self) -> None:
        """Take ``<data dir>/conveyor.lock`` (an exclusive ``flock``) and write our pid in it."""
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackRefused(f"the stack in {self.data_dir} is already running (launcher pid {holder}); "
                               "stop it first, or give another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def claim(self) -> None:
        """Make sure this stack may start, before anything is started or written: the data dir is not
        in use by a running stack (its lock is free) and no port of the stack is taken. The lock is kept
        until :meth:`stop`. Raises :class:`StackRefused` saying why not. Safe twice."""
        if self._lock_fd is not None:
            return
        try:
            if (self.data_dir / LOCK_NAME).exists():  # a running stack has one: no lock file, no stack
                self._lock()
            if taken := taken_port(self.opts):
                name, host, port = taken
                raise StackRefused(f"port {port} on {host}, which {name} needs, is already in use; stop what "
                                   "listens there, or give another --port-base")
            if self._lock_fd is None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._lock()
        except OSError as exc:
            self._unlock()
            raise StackRefused(f"cannot use the data dir {self.data_dir}: {exc.strerror or exc}") from exc
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor drops the flock
            self._lock_fd = None

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
        self.claim()
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
        password = password or new_password()
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
        gateway = next((s.url for s in self.services if s.name == "gateway"), None)
        state = {
            "gateway": gateway,  # None on a host that runs no gateway (--only)
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
        self._unlock()

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
    """Run the stack until Ctrl-C or SIGTERM: 0 after a clean stop, 1 when it could not start (when its
    data dir or a port is taken, said on stderr, and nothing was started or written), 2 when ``opts`` lack
    what a host part needs (a URL of a service run elsewhere, the deployment's service token)."""
    problems = missing_urls(opts)
    if problem := missing_token(opts):
        problems.append(problem)
    for problem in problems:
        print(f"conveyor up: {problem}", file=sys.stderr, flush=True)
    if problems:
        return 2
    launcher = Launcher(opts)
    try:
        launcher.claim()
    except StackRefused as exc:
        print(f"conveyor up: {exc}", file=sys.stderr, flush=True)
        return 1
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
            gateway = next((s.url for s in launcher.services if s.name == "gateway"), None)
            where = gateway or f"{', '.join(sorted(opts.only))} of this host"
            print(f"\nConveyor is up: {where}  (Ctrl-C stops it; data in {launcher.data_dir})", flush=True)
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
