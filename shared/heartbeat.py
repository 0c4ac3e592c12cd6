"""The heartbeat every service process runs: it registers the instance with the registry once the process
listens, heartbeats every ``<P>_INSTANCE_HEARTBEAT_S`` with a snapshot of the service's own status, and
deregisters it on a clean stop (see :mod:`shared.instances` for the wire).

It never takes the service down. A registry that cannot be reached is logged once as a warning (and once
more when it answers again); the heartbeat then tries again with backoff, from one interval up to five, with
jitter, so a registry that comes back hears from everyone within seconds without being hammered meanwhile.
While an instance starts (``startup_grace_s``) a registry that does not answer yet is only noted: services
start in turns (the logging service before the registry), and that is no fault.

:func:`shared.web.create_service_app` makes one for every app (:data:`HEARTBEAT`), and
:func:`shared.server.run` starts it with the instance's advertised URL (:func:`advertised_url`) once its
port is bound; an app under test heartbeats only when a test starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from loguru import logger

from shared.instances import MAX_STATUS_BYTES, InstanceBeat, InstanceKind
from shared.settings import ServiceSettings

#: How long a deregistration may hold up the stop of a service.
LEAVE_TIMEOUT_S = 2.0
#: How long a starting instance waits for the registry before its silence is a warning.
STARTUP_GRACE_S = 30.0


def conveyor_version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout without install
        return "unknown"


def advertised_url(settings: ServiceSettings, port: int) -> str | None:
    """Where the other services reach this instance: ``<P>_ADVERTISE_URL``, else ``http://<host>:<port>`` of
    the address it binds, port the one it got. None when it binds every address (``0.0.0.0``, ``::``): which
    of them the others reach is not ours to guess (no hidden 127.0.0.1)."""
    if settings.advertise_url:
        return settings.advertise_url
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        return None
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class InstanceSink(Protocol):
    """Where heartbeats go: the registry over HTTP (:class:`RegistrySink`), or the registry's own store."""

    async def put(self, instance_id: uuid.UUID, beat: InstanceBeat) -> None:
        """Register, or heartbeat: raise when it did not reach the registry."""

    async def remove(self, instance_id: uuid.UUID) -> None:
        """Deregister (an unknown id is no error)."""

    async def close(self) -> None:
        """Release what the sink holds. Safe twice."""


class RegistrySink:
    """Heartbeats to the registry at ``url``, on a small session of their own (opened at the first one)."""

    def __init__(self, url: str, *, token: str | None, timeout_s: float) -> None:
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None

    def _registry(self) -> Any:
        from shared.http import ServiceClient  # shared.http imports shared.web, which imports this module

        if self._client is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4))
            # One try a beat: the heartbeat loop retries with its own backoff.
            self._client = ServiceClient("registry", self.url, self._session, token=self.token, attempts=1,
                                         timeout_s=self.timeout_s)
        return self._client

    async def put(self, instance_id: uuid.UUID, beat: InstanceBeat) -> None:
        from shared.http import path

        await self._registry().call("PUT", path("instances", instance_id), json=beat, ok=(200,))

    async def remove(self, instance_id: uuid.UUID) -> None:
        from shared.http import path

        await self._registry().call("DELETE", path("instances", instance_id), ok=(204, 404))

    async def close(self) -> None:
        if self._session is not None:
            session, self._session, self._client = self._session, None, None
            await session.close()


class Heartbeat:
    """One process's registration. ``snapshot`` returns the small status dict sent with each beat (it is
    called on the event loop: it must be cheap)."""

    def __init__(self, kind: InstanceKind | str, name: str, sink: InstanceSink, *, interval_s: float,
                 snapshot: Callable[[], dict[str, Any]], startup_grace_s: float = STARTUP_GRACE_S) -> None:
        self.id = uuid.uuid4()
        self.kind = InstanceKind(kind)
        self.name = name
        self.sink = sink
        self.interval_s = interval_s
        self.snapshot = snapshot
        self.startup_grace_s = startup_grace_s
        self.started_at = datetime.now(timezone.utc)
        self.version = conveyor_version()
        self.url: str | None = None
        self.beats = 0  # heartbeats the registry took
        self.failures = 0  # heartbeats that did not reach it
        self._task: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, Any]:
        """For ``/status``: who this instance is to the registry, and how its heartbeats fare."""
        return {"id": str(self.id), "url": self.url, "beats": self.beats, "failures": self.failures}

    def beat(self) -> InstanceBeat:
        try:
            status = self.snapshot()
            if len(orjson.dumps(status)) > MAX_STATUS_BYTES:
                status = {"snapshot": f"over {MAX_STATUS_BYTES} bytes"}
        except Exception as exc:  # a bug in a snapshot must not stop the heartbeats
            logger.opt(exception=exc).error("the status snapshot failed")
            status = {"snapshot": f"failed: {type(exc).__name__}"}
        assert self.url is not None
        return InstanceBeat(name=self.name, kind=self.kind, url=self.url, version=self.version,
                            started_at=self.started_at, heartbeat_s=self.interval_s, status=status)

    async def start(self, url: str) -> None:
        """Register as reachable at ``url`` and heartbeat until :meth:`stop`. Returns at once."""
        if self._task is not None:
            return
        self.url = url
        self._task = asyncio.create_task(self._run(), name="instance-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeats and deregister (within :data:`LEAVE_TIMEOUT_S`, or the registry drops the
        instance once it is gone). Safe twice, and before :meth:`start`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                async with asyncio.timeout(LEAVE_TIMEOUT_S):
                    await self.sink.remove(self.id)
                logger.info("deregistered from the registry")
            except Exception as exc:
                # Not a warning: when a whole stack stops, the registry may stop first. The instance is then
                # listed gone after its silence, and dropped later.
                logger.info("could not deregister from the registry ({}); it will list this instance gone",
                            _reason(exc))
        await self.sink.close()

    async def _run(self) -> None:
        failures = 0
        warned = False
        max_delay_s = 5 * self.interval_s
        starting_until = time.monotonic() + self.startup_grace_s
        while True:
            try:
                await self.sink.put(self.id, self.beat())
            except Exception as exc:
                failures += 1
                self.failures += 1
                if not warned and (self.beats > 0 or time.monotonic() >= starting_until):
                    logger.warning("cannot heartbeat to the registry ({}); trying again with backoff", _reason(exc))
                    warned = True
                elif failures == 1:
                    logger.info("the registry does not answer yet ({}); trying again", _reason(exc))
                delay_s = min(self.interval_s * 2 ** (failures - 1), max_delay_s) * random.uniform(0.5, 1.0)
            else:
                if self.beats == 0:
                    logger.info("registered with the registry as {} {} at {}", self.kind.value, self.id, self.url)
                elif warned:
                    logger.info("heartbeats reach the registry again, after {} failed", failures)
                self.beats += 1
                failures = 0
                warned = False
                delay_s = self.interval_s
            await asyncio.sleep(delay_s)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


#: The app's heartbeat (None when it has none: heartbeats off, or no registry to send them to).
HEARTBEAT = web.AppKey("heartbeat", Heartbeat | None)
