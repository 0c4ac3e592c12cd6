"""``conveyor up``: the whole stack on one machine, or one host's part of it (``--only``), one process a service.

It starts the services in dependency order (logging, registry and scheduler, receptionists, handlers,
gateway), waits until each answers ``/health``, prints where everything is and writes it to
``<data dir>/stack.json``. A service that dies is restarted with backoff. On Ctrl-C or SIGTERM every
service is stopped in reverse order (SIGTERM, then SIGKILL after a grace period), none left behind; the
children also get SIGTERM from the kernel if the launcher itself is killed (Linux ``PR_SET_PDEATHSIG``).

Before it starts anything it claims the data dir and the ports (:meth:`Launcher.claim`): a data dir whose
stack still runs, or a port that something else holds, is refused with the reason (:class:`StackRefused`)
and nothing is written; only the ports of the services it starts are checked. The claim on the data dir is
an ``flock`` on ``<data dir>/conveyor.lock``, held for the launcher's life: the kernel drops it when the
launcher dies, however it dies, so a killed stack leaves no stale lock behind. A data dir is one launcher's,
whatever services it starts: two parts of a deployment on one machine take a data dir each.

What runs here, on which address and port, and where it finds the services run elsewhere (``--only``) is
:mod:`shared.plan`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from loguru import logger

from shared.autoscale import Autoscaler, Policy, Scaler, scheduler_link
from shared.logs import LogShipper
from shared.plan import (
    Options,
    Service,
    StackRefused,
    instance_problems,
    missing_token,
    missing_urls,
    new_password,
    plan,
    service_token,
    taken_port,
)
from shared.table import table


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


LOCK_NAME = "conveyor.lock"


def _log_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a service's log (its own words on why it stopped), or why there are none."""
    if path is None:
        return "(no log)"
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read it: {exc.strerror or exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class Launcher:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.data_dir = opts.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.stopping = asyncio.Event()
        self.services: list[Service] = []
        self._monitors: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        self.autoscaler: Autoscaler | None = None
        self._scaling: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: The launcher's own lines for the central log (service ``launcher``), kept from its start.
        self.shipper: LogShipper | None = None
        self._stopped = False

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

    async def _spawn(self, svc: Service, *, restart: bool = False) -> None:
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
        events = logger.bind(instance=svc.name, pid=svc.process.pid)
        if restart:
            events.bind(restarts=svc.restarts).info("restarted {} (pid {}, restart #{})", svc.name,
                                                    svc.process.pid, svc.restarts)
        else:
            events.info("started {} (pid {})", svc.name, svc.process.pid)

    async def _wait_healthy(self, session: aiohttp.ClientSession, svc: Service) -> None:
        deadline = time.monotonic() + self.opts.health_timeout_s
        while time.monotonic() < deadline:
            if svc.process is not None and svc.process.returncode is not None:
                # The log's end goes with the error: a bench's data dir, and the log in it, goes right after.
                raise RuntimeError(f"{svc.name} exited with code {svc.process.returncode}; the end of "
                                   f"{svc.log_path}:\n{_log_tail(svc.log_path)}")
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
        await self._keep_logs()
        async with aiohttp.ClientSession() as session:
            for group in sorted({svc.group for svc in self.services}):
                members = [svc for svc in self.services if svc.group == group and not svc.standby]
                for svc in members:
                    await self._spawn(svc)
                await asyncio.gather(*(self._wait_healthy(session, svc) for svc in members))
                if self.shipper is not None and any(svc.module == "logging_service" for svc in members):
                    await self.shipper.start()
                if any(svc.module == "registry" for svc in members):
                    await self._first_admin(session)
        self._monitors = [asyncio.create_task(self._monitor(svc), name=f"monitor-{svc.name}")
                          for svc in self.services if not svc.standby]
        if self.opts.max_handlers and any(svc.module == "handler" for svc in self.services):
            self._start_autoscaler()
        self._write_state()

    async def _keep_logs(self) -> None:
        """Keep the launcher's lines from its start (each service started, crashed, restarted, scaled,
        stopped) for the central log: shipped at once to a logging service run elsewhere, else once the one
        started here is healthy (:meth:`start`), until it stops (:meth:`stop`)."""
        if (url := self.logging_url()) is not None:
            self.shipper = LogShipper(url, "launcher", headers={"X-Service-Token": service_token(self.data_dir)})
            self.shipper.attach()
            if not any(svc.module == "logging_service" for svc in self.services):
                await self.shipper.start()

    # -- autoscaled handlers (shared.autoscale) ------------------------------------------------------------

    def logging_url(self) -> str | None:
        """The central log's URL: the logging service of this stack, else the one given, else None."""
        return next((svc.url for svc in self.services if svc.module == "logging_service"), None) or (
            self.opts.remote_url("logging"))

    def _handlers(self, *, standby: bool) -> list[Service]:
        return [svc for svc in self.services if svc.module == "handler" and svc.standby == standby]

    def _start_autoscaler(self) -> None:
        scheduler = next((svc.url for svc in self.services if svc.name == "scheduler"), None)
        scheduler = scheduler or self.opts.remote_url("scheduler")
        assert scheduler is not None  # missing_urls() refused the options otherwise
        headers = {"X-Service-Token": service_token(self.data_dir)}
        self._session = aiohttp.ClientSession()
        session = self._session
        policy = Policy(self.opts.handlers, self.opts.handler_slots, quiet_s=self.opts.scale_quiet_s)
        name = f"launcher@{socket.gethostname()}:{self.opts.port_base}"
        read, publish = scheduler_link(session, scheduler, headers, name,
                                       lambda: [svc.url for svc in self._handlers(standby=False)])
        self.autoscaler = Autoscaler(Scaler(policy), read, lambda: len(self._handlers(standby=False)),
                                     self._scale_up, self._scale_down, publish=publish)
        self._scaling = asyncio.create_task(self.autoscaler.run(self.stopping), name="autoscaler")

    async def _scale_up(self, reason: str) -> None:
        svc = self._handlers(standby=True)[0]
        svc.standby = False
        await self._spawn(svc)
        assert self._session is not None
        try:
            await self._wait_healthy(self._session, svc)
        except RuntimeError as exc:  # its monitor restarts it with backoff, as any service that dies
            logger.warning("autoscale: {} did not come up: {}", svc.name, exc)
        self._monitors.append(asyncio.create_task(self._monitor(svc), name=f"monitor-{svc.name}"))
        self._write_state()

    async def _scale_down(self, reason: str) -> None:
        """The last handler started stops gracefully (its running jobs finish or go back to the queue);
        standby first, so that its monitor does not restart it."""
        svc = self._handlers(standby=False)[-1]
        svc.standby = True
        await self._stop_one(svc)
        self._write_state()

    async def _first_admin(self, session: aiohttp.ClientSession) -> None:
        """On a registry with no users, make ``admin``: its password is ``CONVEYOR_ADMIN_PASSWORD``, or one
        made now and printed this once (it is kept nowhere)."""
        registry = next(svc for svc in self.services if svc.module == "registry")
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
            if self.stopping.is_set() or svc.standby:  # stopping, or stopped by the autoscaler
                return
            if time.monotonic() - svc.started_at > 60:
                backoff_s = 1.0
            logger.bind(instance=svc.name, pid=svc.process.pid, exit_code=code, backoff_s=backoff_s).warning(
                "{} (pid {}) exited with code {}{}; restarting in {:.0f}s", svc.name, svc.process.pid, code,
                _signal_name(code), backoff_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=backoff_s)
            if self.stopping.is_set():
                return
            backoff_s = min(backoff_s * 2, 30.0)
            svc.restarts += 1
            await self._spawn(svc, restart=True)
            self._write_state()

    def _write_state(self) -> None:
        gateway = next((s.url for s in self.services if s.name == "gateway"), None)
        state = {
            "gateway": gateway,  # None on a host that runs no gateway (--only)
            "services": [{"name": s.name, "url": s.url, "pid": s.process.pid if s.process else None,
                          "restarts": s.restarts, "log": str(s.log_path), "standby": s.standby}
                         for s in self.services],
        }
        if self.autoscaler is not None:
            state["autoscale"] = self.autoscaler.report()
        # Written aside, then renamed over: a reader never sees half a file.
        tmp = self.data_dir / "stack.json.tmp"
        tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.data_dir / "stack.json")

    def table(self) -> str:
        rows = [("service", "url", "pid", "log")]
        rows += [(s.name, s.url, str(s.process.pid if s.process else "-"), str(s.log_path)) for s in self.services
                 if not s.standby]
        return table(rows)

    async def stop(self) -> None:
        """Stop every service, last started first; the launcher's last lines go to the central log before
        the logging service stops. Safe twice."""
        if not self._stopped:
            self._stopped = True
            logger.info("stopping the stack")
        self.stopping.set()
        if self._scaling is not None:
            with contextlib.suppress(BaseException):
                await self._scaling  # a step under way (a handler starting or stopping) ends first
        if self._session is not None:
            await self._session.close()
        for group in sorted({svc.group for svc in self.services}, reverse=True):
            members = [svc for svc in self.services if svc.group == group]
            if self.shipper is not None and any(svc.module == "logging_service" for svc in members):
                await self.shipper.stop()
            await asyncio.gather(*(self._stop_one(svc) for svc in members))
        if self.shipper is not None:  # a logging service run elsewhere
            await self.shipper.stop()
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
        logger.bind(instance=svc.name, pid=proc.pid, exit_code=proc.returncode).info(
            "stopped {} (pid {}, exit code {}{})", svc.name, proc.pid, proc.returncode, _signal_name(proc.returncode))


def _signal_name(code: int | None) -> str:
    """`` (SIGKILL)`` for the exit code of a process a signal ended (-9), else nothing."""
    if code is None or code >= 0:
        return ""
    try:
        return f" ({signal.Signals(-code).name})"
    except ValueError:
        return ""


async def up(opts: Options) -> int:
    """Run the stack until Ctrl-C or SIGTERM: 0 after a clean stop, 1 when it could not start (when its
    data dir or a port is taken, or a kind is misconfigured, said on stderr, and nothing was started or
    written), 2 when ``opts`` lack
    what a host part needs (a URL of a service run elsewhere, the deployment's service token)."""
    problems = missing_urls(opts) + instance_problems(opts)
    if problem := missing_token(opts):
        problems.append(problem)
    for problem in problems:
        print(f"conveyor up: {problem}", file=sys.stderr, flush=True)
    if problems:
        return 2
    if problem := kinds_problem(opts):
        print(f"conveyor up: {problem}", file=sys.stderr, flush=True)
        return 1
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
        return 0
    except RuntimeError as exc:
        logger.error("could not start the stack: {}", exc)
        return 1
    finally:
        await launcher.stop()
        logger.info("stack stopped")


def kinds_problem(opts: Options) -> str | None:
    """Why the kinds of this environment (``CONVEYOR_KINDS``, the ``conveyor.kinds`` entry points) would
    stop the services that load them, or None: checked before anything starts, as each service checks at
    its own start."""
    if not opts.only & {"receptionist", "handler", "gateway"}:
        return None
    from shared.kinds import KindError, load_kinds

    try:
        load_kinds()
    except KindError as exc:
        return str(exc)
    return None


def stack_state(data_dir: Path) -> dict[str, Any]:
    """What ``conveyor up`` wrote about the running stack."""
    return orjson.loads((data_dir / "stack.json").read_bytes())
