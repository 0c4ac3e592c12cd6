"""A TCP relay on loopback in front of one server, counting the connections it accepts, which can break
connections the way a dying receptionist does: after reading a request, with or without passing it on."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message with a ``Content-Length`` (or none): its bytes, or b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


@dataclass
class Relay:
    """Passes each request to ``target_port`` and its answer back. ``drop_posts``: a POST is passed on and
    answered upstream, but its client connection closes without the answer. ``one_per_connection``: a
    second request on a connection is read and the connection closed, without passing it on."""

    target_port: int
    drop_posts: bool = False
    one_per_connection: bool = False
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    dropped: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):  # the connections' own tasks then see EOF and end
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.update((writer, up_writer))
        try:
            served = 0
            while request := await _read_message(reader):
                self.requests.append(request)
                if self.one_per_connection and served:
                    self.dropped += 1
                    return
                up_writer.write(request)
                await up_writer.drain()
                answer = await _read_message(up_reader)
                if self.drop_posts and request.startswith(b"POST "):
                    self.dropped += 1
                    return
                writer.write(answer)
                await writer.drain()
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
