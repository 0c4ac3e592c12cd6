"""A lean HTTP/1.1 client on kept-alive connections: the gateway's relays, and the calls services make to
each other (:class:`shared.http.ServiceClient`, when given one).

aiohttp's ``ClientSession`` cost the gateway about 170 µs of CPU per relayed request (a ``ClientRequest``
object, its headers and cookies, tracing hooks, timers and a payload writer per call): more than the rest
of a relay. The requests the gateway may send twice (see :mod:`gateway.proxy`: a GET or HEAD without a
body, a submission whose body it holds) go out through this client instead. It writes the request's head
and body in one write, parses the answer's head once, reads the body whole or streams it
(``Content-Length``, chunked, or until the connection closes), and keeps the connection for the next
request when the answer was read to its end. Measured beside aiohttp's client, in one run, with the same
aiohttp server in front: about 125 against 300 µs of CPU per relayed request (see the README's benchmark).

In the gateway, everything else keeps aiohttp's client: uploads streamed on a new connection, health
probes, the dashboard's reads. The receptionists' and the handlers' calls to the registry, the scheduler
and the central log go through one too (:func:`upstream_client_ctx`): in the benchmark that took about a
tenth of their CPU per job. Only ``http://`` upstreams are taken (:meth:`UpstreamClient.takes`).

Errors keep the meanings the proxy relies on: :class:`UpstreamRefused` when nothing was sent (the
connection was refused or did not open in time), :class:`UpstreamBroken` (an ``aiohttp.ClientError``, as
aiohttp's own would be) when the connection broke or the answer was malformed after the request was
sent, and ``TimeoutError`` when the receptionist was silent for longer than the read timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: Largest answer head (status line and headers) read; a longer one is a broken answer.
MAX_HEAD_BYTES = 64 * 1024
#: Reading from a connection pauses while this much of its answer waits unread (a download to a slow
#: client), and resumes below a quarter of it.
PAUSE_BYTES = 256 * 1024
#: A kept-alive connection idle for this long is closed rather than reused: well within the receptionist's
#: own keep-alive (aiohttp's server keeps an idle one for an hour), and short enough that connections to a
#: receptionist that went away do not linger. One the receptionist closed meanwhile is sent again
#: (:mod:`gateway.proxy`).
IDLE_S = 15.0
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamRefused(Exception):
    """The request was never sent: the connection was refused or did not open in time."""


class UpstreamBroken(aiohttp.ClientConnectionError):
    """The connection broke, or the answer was malformed, after the request was sent."""


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.lost = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def fill(self, timeout_s: float) -> None:
        """Wait for more bytes: TimeoutError after ``timeout_s`` of silence, UpstreamBroken once the
        connection has closed."""
        if self.lost:
            raise UpstreamBroken("the receptionist closed the connection")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer handle, not ``asyncio.timeout``: that costs 6-10 µs more a wait (a Timeout object, a
        # rescheduled handle, the task's cancel count), and every relayed request waits at least once.
        timer = loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.lost and not self.buffer:
            raise UpstreamBroken("the receptionist closed the connection")

    def take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        if self._paused and len(self.buffer) < PAUSE_BYTES // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """An answer: ``status``, ``reason``, ``headers``, ``content_length`` and ``content_type`` as
    aiohttp's ``ClientResponse`` has them, the body by :meth:`read` or ``content.iter_chunked``, and
    :meth:`release` (the connection goes back to the pool when the body was read to its end) or
    :meth:`close`."""

    def __init__(self, client: UpstreamClient, key: str, conn: _Connection, status: int, reason: str,
                 headers: CIMultiDict[str], *, length: int | None, chunked: bool, keep_alive: bool,
                 read_timeout_s: float) -> None:
        self._client = client
        self._key = key
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        self.content_length = None if chunked else length
        self._left = length  # body bytes still to read; None: until close (or chunked)
        self._chunked = chunked
        self._keep_alive = keep_alive and (chunked or length is not None)
        self._timeout_s = read_timeout_s
        self._done = length == 0 and not chunked

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value else "application/octet-stream"

    @property
    def content(self) -> UpstreamResponse:
        return self  # ``resp.content.iter_chunked(n)``, as on aiohttp's answers

    async def read(self) -> bytes:
        """The whole body. One that has all come already is taken at once; a longer one is taken as it
        comes, which lifts the pause on reading (waiting for all of it in the buffer would wait forever
        once the body is larger than :data:`PAUSE_BYTES`)."""
        if self._left is not None and not self._chunked:
            conn = self._connection()
            if len(conn.buffer) >= self._left:
                body = conn.take(self._left)
                self._left = 0
                self._done = True
                return body
        return b"".join([chunk async for chunk in self.iter_chunked(PAUSE_BYTES)])

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``n`` bytes, as they arrive."""
        if self._chunked:
            async for piece in self._chunks(n):
                yield piece
            return
        conn = self._connection()
        while not self._done:
            if not conn.buffer:
                if self._left is None and conn.lost:  # read until close: the close is the end
                    self._done = True
                    return
                try:
                    await conn.fill(self._timeout_s)
                except UpstreamBroken:
                    if self._left is None:
                        self._done = True
                        return
                    raise
                continue
            size = min(n, len(conn.buffer)) if self._left is None else min(n, len(conn.buffer), self._left)
            piece = conn.take(size)
            if self._left is not None:
                self._left -= size
                self._done = self._left == 0
            yield piece

    async def _chunks(self, n: int) -> AsyncIterator[bytes]:
        conn = self._connection()
        while not self._done:
            line = await self._line(conn)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise UpstreamBroken(f"bad chunk size {line[:40]!r}") from None
            if size == 0:
                while await self._line(conn):  # trailers, up to the empty line
                    pass
                self._done = True
                return
            while size:
                if not conn.buffer:
                    await conn.fill(self._timeout_s)
                    continue
                piece = conn.take(min(n, size, len(conn.buffer)))
                size -= len(piece)
                yield piece
            if await self._line(conn):
                raise UpstreamBroken("a chunk did not end with CRLF")

    async def _line(self, conn: _Connection) -> bytes:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_HEAD_BYTES:
                raise UpstreamBroken("a chunk line is too long")
            await conn.fill(self._timeout_s)
        return conn.take(end + 2)[:-2]

    def _connection(self) -> _Connection:
        if self._conn is None:
            raise UpstreamBroken("the answer was closed")
        return self._conn

    def release(self) -> None:
        """Done with the answer: its connection is kept when it was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._client._returned(self._key, conn, reuse=self._done and self._keep_alive and not conn.buffer)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._returned(self._key, conn, reuse=False)


class UpstreamClient:
    """Kept-alive connections to each upstream, at most ``limit`` in use at a time over all of them."""

    def __init__(self, *, limit: int, connect_timeout_s: float, read_timeout_s: float,
                 idle_s: float = IDLE_S) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[str, list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, tuple[str, int]]] = {}
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_s = idle_s
        self.opened = 0

    @staticmethod
    def takes(base_url: str) -> bool:
        return base_url.startswith("http://")

    async def request(self, method: str, base_url: str, target: str, headers: Iterable[tuple[str, str]],
                      body: bytes | None) -> UpstreamResponse:
        """Send ``method target`` (a path and query, already encoded) with ``headers`` and ``body`` to
        ``base_url``, and read the answer's head."""
        host, address = self._address(base_url)
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
        for name, value in headers:
            if name.lower() == "content-length":  # the body's own is written below
                continue
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} has a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        # Header text is as aiohttp's server decoded it (UTF-8, with any other byte kept as a surrogate):
        # encoded back the same way, the receptionist gets the bytes the client sent.
        head = "".join(lines).encode("utf-8", "surrogateescape")
        await self._slots.acquire()
        try:
            conn = await self._connection(host, address)
        except BaseException:
            self._slots.release()
            raise
        try:
            assert conn.transport is not None
            conn.transport.write(head + body if body else head)
            return await self._answer(host, conn, head_only=method == "HEAD")
        except BaseException:
            conn.close()
            self._slots.release()
            raise

    def _address(self, base_url: str) -> tuple[str, tuple[str, int]]:
        """The ``Host`` header's value (an IPv6 address in brackets) and the address to connect to."""
        address = self._addresses.get(base_url)
        if address is None:
            url = URL(base_url)
            assert url.host is not None and url.port is not None, base_url
            address = self._addresses[base_url] = (f"{url.host_subcomponent}:{url.port}", (url.host, url.port))
        return address

    async def _connection(self, key: str, address: tuple[str, int]) -> _Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.idle_s:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, *address)
        except (OSError, TimeoutError) as exc:
            raise UpstreamRefused(f"{key}: {exc!r}") from exc
        self.opened += 1
        return conn

    async def _answer(self, key: str, conn: _Connection, *, head_only: bool) -> UpstreamResponse:
        while True:  # an interim answer (1xx) is passed over
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                if len(conn.buffer) > MAX_HEAD_BYTES:
                    raise UpstreamBroken("the answer's head is too long")
                await conn.fill(self.read_timeout_s)
            raw = conn.take(end + 4)[:-4].decode("utf-8", "surrogateescape").split("\r\n")
            version, _, rest = raw[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise UpstreamBroken(f"bad status line {raw[0][:60]!r}")
            status = int(code)
            if status >= 200:
                break
        headers: CIMultiDict[str] = CIMultiDict()
        for line in raw[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise UpstreamBroken(f"bad header line {line[:60]!r}")
            headers.add(name, value.strip())
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length: int | None = None
        if head_only or status in _NO_BODY_STATUS:
            length, chunked = 0, False
        elif not chunked and "Content-Length" in headers:
            try:
                length = int(headers["Content-Length"])
            except ValueError:
                raise UpstreamBroken("bad Content-Length") from None
        connection = headers.get("Connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        return UpstreamResponse(self, key, conn, status, reason, headers, length=length, chunked=chunked,
                                keep_alive=keep_alive, read_timeout_s=self.read_timeout_s)

    def _returned(self, key: str, conn: _Connection, *, reuse: bool) -> None:
        self._slots.release()
        if reuse and not conn.lost:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports close on the loop's next turn


def upstream_client_ctx(key: web.AppKey[UpstreamClient], *, limit: int = 200, connect_timeout_s: float = 3.0
                        ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry holding an :class:`UpstreamClient` under ``key`` for a service's
    :class:`~shared.http.ServiceClient` calls (each call bounds its own time; the read timeout here is only
    a backstop), closing its connections at cleanup."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = app[key] = UpstreamClient(limit=limit, connect_timeout_s=connect_timeout_s, read_timeout_s=3600.0)
        yield
        await client.close()

    return ctx
