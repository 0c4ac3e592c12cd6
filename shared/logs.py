"""Logging for every service: loguru to stderr, plus a shipper that sends structured lines to the
logging service in batches from a bounded buffer.

What does not log through loguru (the standard library's logging, warnings, an uncaught exception) is sent
to it by :func:`capture_stray_output`, so that a service's stderr holds its JSON lines and nothing else.

The shipper never blocks nor fails the service: the loguru sink only appends to a bounded deque (and
counts what it had to drop when full); a background task posts batches and, when the logging service is
slow or down, keeps at most ``log_buffer`` lines waiting and drops the oldest beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from datetime import timezone
from enum import StrEnum
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from loguru import logger

#: The request id of the request being served; middlewares set it, logs and outgoing calls read it.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

class LogLevel(StrEnum):
    """Loguru's levels, least severe first (a ``min_level`` filter means this one or a later one)."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


_STDERR_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[service]}</cyan> {message} <dim>{extra}</dim>"
)


def _patch(record: Any) -> None:
    rid = request_id_var.get()
    if rid is not None and "request_id" not in record["extra"]:
        record["extra"]["request_id"] = rid


def setup_logging(service: str, level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Send this process's logs to stderr, tagged with the service name, in place of any sinks before
    (a service's start, :mod:`shared.entry`, calls it first with the service's name, then with its settings).

    The lines are JSON (``{timestamp, service, level, message, meta}``, as the central log keeps them,
    with an error's traceback in ``meta.traceback``) when ``json_lines`` says so; None: as
    ``CONVEYOR_LOG_FORMAT`` (``json`` or ``text``) says, else JSON unless stderr is a terminal (the launcher
    sends a service's stderr to its log file, a container runtime to its log collector)."""
    if json_lines is None:
        chosen = os.environ.get("CONVEYOR_LOG_FORMAT", "").strip().lower()
        json_lines = chosen == "json" or (chosen != "text" and not sys.stderr.isatty())
    logger.level(level.upper())  # an unknown level raises here, before the sinks there are go
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_patch)
    if json_lines:
        logger.add(_json_sink(service), level=level.upper(), format="{message}", backtrace=False, diagnose=False)
    else:
        # Whatever ``sys.stderr`` is when a line is written (a test's capture, swapped and closed, stays
        # behind otherwise), coloured when it was a terminal at setup.
        logger.add(_write_stderr, level=level.upper(), format=_STDERR_FORMAT, colorize=sys.stderr.isatty(),
                   backtrace=False, diagnose=False)


def _write_stderr(message: str) -> None:
    sys.stderr.write(message)


class InterceptHandler(logging.Handler):
    """A standard library log record (asyncio's, aiohttp's, a warning) sent on to loguru, as loguru's
    documentation does it: one line of the same shape, with the logger's name in ``meta.logger``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        exc_info = record.exc_info if record.exc_info and record.exc_info[0] is not None else None
        logger.opt(exception=exc_info).bind(logger=record.name).log(level, record.getMessage())


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def capture_stray_output(level: str = "INFO") -> None:
    """Send to loguru what would otherwise reach stderr in its own format: the standard library's logging
    (``level`` and above) and warnings, an uncaught exception in the main thread or any other, and an
    exception Python ignores (in a ``__del__``). Each is then one line like any other, its traceback in
    ``meta.traceback``. For a service's process (:mod:`shared.entry`), after :func:`setup_logging`."""
    logging.basicConfig(handlers=[InterceptHandler()], level=logger.level(level.upper()).no, force=True)
    logging.captureWarnings(True)

    def uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        exc: _ExcInfo = (kind, value, tb)
        logger.opt(exception=exc).critical("stopped by an uncaught {}", kind.__name__)

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):
            return
        exc: _ExcInfo = (args.exc_type, args.exc_value, args.exc_traceback)
        logger.opt(exception=exc).bind(thread=args.thread.name if args.thread else None).error(
            "uncaught {} in a thread", args.exc_type.__name__)

    def unraisable(args: Any) -> None:
        exc: _ExcInfo | None = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value else None
        logger.opt(exception=exc).bind(object=repr(args.object), where=args.err_msg).warning(
            "ignored an uncaught {}", args.exc_type.__name__ if args.exc_type else "exception")

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    sys.unraisablehook = unraisable


def _json_sink(service: str) -> Callable[[Any], None]:
    def write(message: Any) -> None:
        line = record_to_wire(message.record, service)
        if message.record["exception"] is not None:
            exc = message.record["exception"]
            # A copy: the line is the shipper's too, which sends no traceback.
            line = {**line, "meta": {**line["meta"], "traceback": "".join(
                traceback.format_exception(exc.type, exc.value, exc.traceback))}}
        sys.stderr.write(orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        sys.stderr.flush()

    return write


#: Where :func:`record_to_wire` keeps a record's line: loguru hands one record to every sink, and the
#: stderr sink and the shipper would otherwise each build the same line.
_WIRE_KEY = "conveyor_wire"


def record_to_wire(record: Any, service: str) -> dict[str, Any]:
    """A loguru record as the logging service's ``{timestamp, service, level, message, meta}``, built once
    per record (callers must not change it)."""
    line = record.get(_WIRE_KEY)
    if line is not None and line["service"] == service:
        return line
    meta = {k: v for k, v in record["extra"].items() if k != "service"}
    if record["exception"] is not None:
        exc = record["exception"]
        meta["exception"] = f"{exc.type.__name__ if exc.type else 'Exception'}: {exc.value}"
    line = record[_WIRE_KEY] = {
        "timestamp": record["time"].astimezone(timezone.utc).isoformat(),
        "service": service,
        "level": record["level"].name.lower(),
        "message": record["message"],
        "meta": meta,
    }
    return line


class LineBuffer:
    """A bounded, thread-safe buffer of log lines: loguru may call a sink from any thread. When full, the
    oldest line makes room for the newest, and is counted in ``dropped``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._lines: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._lines)

    def append(self, line: dict[str, Any]) -> int:
        """Add a line; returns how many wait now."""
        with self._lock:
            if len(self._lines) >= self.capacity:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(line)
            return len(self._lines)

    def take(self, most: int | None = None) -> list[dict[str, Any]]:
        """Remove and return the oldest lines, ``most`` at most (all when None)."""
        with self._lock:
            n = len(self._lines) if most is None else min(most, len(self._lines))
            return [self._lines.popleft() for _ in range(n)]

    def give_back(self, lines: list[dict[str, Any]]) -> None:
        """Put lines taken out back in front, as many as there is room for (the rest are dropped)."""
        with self._lock:
            room = self.capacity - len(self._lines)
            keep = lines[len(lines) - room:] if room < len(lines) else lines
            self.dropped += len(lines) - len(keep)
            self._lines.extendleft(reversed(keep))


class LogShipper:
    """A loguru sink plus the task that posts its lines to ``{url}/logs`` in batches."""

    def __init__(self, url: str, service: str, *, level: str = "INFO", buffer: int = 10_000,
                 batch: int = 500, interval_s: float = 0.5, headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/") + "/logs"
        self.service = service
        self.level = level.upper()
        self.batch = batch
        self.interval_s = interval_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.lines = LineBuffer(buffer)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.shipped = 0
        self.refused = 0  # lines the logging service refused, or that could not be sent at all
        self.failed_posts = 0
        self._in_flight = 0  # lines taken out for the post under way: they still wait to be delivered

    @property
    def dropped(self) -> int:
        return self.lines.dropped + self.refused

    def sink(self, message: Any) -> None:
        waiting = self.lines.append(record_to_wire(message.record, self.service))
        if waiting >= self.batch and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stats(self) -> dict[str, int]:
        return {"shipped": self.shipped, "dropped": self.dropped, "failed_posts": self.failed_posts,
                "waiting": len(self.lines) + self._in_flight}

    async def _post(self, session: aiohttp.ClientSession, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post ``lines``; the lines still to send (all of them, or those after a part that could not be
        sent) when the logging service cannot be reached, else none.

        A batch that cannot be encoded or that the logging service refuses for what it holds (a 400: a line
        it cannot store; a 413: too large) is sent again in halves, so that only the line at fault is lost, not the lines
        that shared its batch (a job's state changes among them)."""
        try:
            # Values bound with ``logger.bind`` can be any object: those JSON lacks are sent as text.
            body = orjson.dumps(lines, default=str, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # an integer past 64 bits
            return await self._refused(session, lines)
        try:
            async with session.post(self.url, data=body, headers=self.headers) as resp:
                if resp.status < 300:
                    self.shipped += len(lines)
                    return []
                if 400 <= resp.status < 500:
                    self.failed_posts += 1
                    if resp.status in (400, 413):  # a line at fault, perhaps: look for it
                        return await self._refused(session, lines)
                    self.refused += len(lines)  # not the lines' fault: sending them again cannot help
                    return []
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        self.failed_posts += 1
        return lines

    async def _refused(self, session: aiohttp.ClientSession, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Lines that cannot be sent together: each half on its own, down to the line at fault, which is
        dropped (sending it again cannot help)."""
        if len(lines) == 1:
            self.refused += 1
            return []
        half = len(lines) // 2
        left = await self._post(session, lines[:half])
        return left + lines[half:] if left else await self._post(session, lines[half:])

    async def _run(self, session: aiohttp.ClientSession) -> None:
        backoff_s = self.interval_s
        while True:
            if backoff_s > self.interval_s:
                # The last post failed: wait the backoff out, a filling buffer must not cut it short.
                await asyncio.sleep(backoff_s)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff_s)
            self._wake.clear()
            while lines := self.lines.take(self.batch):
                post = asyncio.ensure_future(self._post(session, lines))
                self._in_flight = len(lines)
                try:
                    left = await asyncio.shield(post)
                except asyncio.CancelledError:
                    # Stopping (:meth:`stop`): the post under way ends first (within the session's timeout),
                    # else its lines would be neither shipped nor left for the last flush.
                    if left := await post:
                        self.lines.give_back(left)
                    raise
                finally:
                    self._in_flight = 0
                if left:
                    self.lines.give_back(left)
                    backoff_s = min(backoff_s * 2, 10.0)
                    break
            else:
                backoff_s = self.interval_s

    async def flush(self, session: aiohttp.ClientSession) -> None:
        """Post what is waiting, once; used at shutdown."""
        while lines := self.lines.take(self.batch):
            if left := await self._post(session, lines):
                self.refused += len(left)
                return

    def attach(self) -> None:
        """Keep this process's lines from now on (as many as the buffer holds), before :meth:`start` ships
        them: the launcher logs before the logging service it starts can take a line. Safe twice."""
        if self._sink_id is None:
            self._loop = asyncio.get_running_loop()
            self._sink_id = logger.add(self.sink, level=self.level, format="{message}", catch=True)

    async def start(self) -> None:
        """Keep lines (:meth:`attach`) and ship them, those kept before first, until :meth:`stop`. Safe
        twice."""
        self.attach()
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            self._task = asyncio.create_task(self._run(self._session), name="log-shipper")
            if len(self.lines):
                self._wake.set()  # what was kept before goes at once

    async def stop(self) -> None:
        """Keep no more lines, and ship those waiting in one last flush (bounded in time). Safe twice."""
        if self._sink_id is not None:
            logger.remove(self._sink_id)
            self._sink_id = None
        task, session, self._task, self._session = self._task, self._session, None, None
        if task is None or session is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(session), timeout=2)
        finally:
            await session.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LogShipper]:
        """Ship while the block runs (:meth:`start`, :meth:`stop`)."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()
