"""Artifacts sent to clients: streamed from the store a chunk at a time, whole or one byte range
(``Range: bytes=…``, answered 206), never read whole into memory.

A local store's file goes out as a ``FileResponse`` (sendfile, with aiohttp's own range handling); an object
store's is a GetObject stream (ranged when the client asked for a range) copied to the client.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from shared.artifacts import ArtifactMissing, ArtifactStore
from shared.errors import NotFound
from shared.web import error_response


def _range(request: web.Request, size: int) -> tuple[int, int] | web.Response | None:
    """The byte range ``[start, end)`` the client asked for, None for the whole object, or the 416 answer."""
    if "Range" not in request.headers:
        return None
    unsatisfiable = error_response(416, "range not satisfiable", [
        {"field": "Range", "message": f"one range bytes=start-end within the {size} bytes of the file"}],
        headers={"Content-Range": f"bytes */{size}"})
    try:
        wanted = request.http_range
    except ValueError:
        return unsatisfiable
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return None
    if start is not None and start < 0:  # bytes=-N: the last N bytes
        start, stop = max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        return unsatisfiable
    return start, stop


async def send_artifact(request: web.Request, store: ArtifactStore, key: str, *, content_type: str, filename: str,
                        missing: NotFound) -> web.StreamResponse:
    """Send ``key`` to the client as an attachment named ``filename``; ``missing`` (a 404 that says the
    file is missing) when the store has no such object."""
    headers = {"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{filename}"'}
    local = store.local_path(key)
    if local is not None:
        if not local.is_file():
            raise missing
        return web.FileResponse(local, headers=headers)
    info = await store.stat(key)
    if info is None:
        raise missing
    wanted = _range(request, info.size)
    if isinstance(wanted, web.Response):
        return wanted
    start, stop = wanted or (0, info.size)
    chunks = store.stream(key, start, stop)
    try:
        first = await anext(chunks, b"")  # a missing object is known before anything is sent
    except ArtifactMissing:
        raise missing from None
    response = web.StreamResponse(status=206 if wanted else 200, headers={**headers, "Accept-Ranges": "bytes"})
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{info.size}"
    response.content_length = stop - start
    async with contextlib.aclosing(chunks):
        await response.prepare(request)
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response
