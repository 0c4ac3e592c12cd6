"""Artifacts sent to clients: streamed from the store a chunk at a time, whole or one byte range
(``Range: bytes=…``, answered 206), never read whole into memory. A range that cannot be satisfied is a 416
naming ``Range``, whatever the backend; a ``Range`` of another unit is ignored (RFC 9110 §14.2).

A local store's whole file goes out as a ``FileResponse`` (sendfile); anything else (a range of it, an object
store's object, a local store's row) is a stream of the store's chunks, ranged when the client asked for a
range, copied to the client.
"""

from __future__ import annotations

import contextlib
import re

from aiohttp import hdrs, web

from shared.artifacts import ArtifactMissing, ArtifactStore
from shared.errors import NotFound
from shared.web import error_response

#: One range of bytes: ASCII digits only, as aiohttp's own reading of the header (``FileResponse``).
BYTE_RANGE = re.compile(r"(\d*)-(\d*)", re.ASCII)
#: Beyond any file: what a position of more digits stands for (Python converts at most 4,300).
BEYOND = 10**30


def _range(request: web.Request, size: int) -> tuple[int, int] | web.Response | None:
    """The byte range ``[start, end)`` the client asked for; None for the whole object (no ``Range``, or one
    of another unit: RFC 9110 §14.2 has a server ignore a unit it does not support); or the 416 answer,
    naming ``Range`` and why, with ``Content-Range: bytes */<size>`` (RFC 9110 §15.5.17)."""
    header = request.headers.get(hdrs.RANGE)
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.lower() != "bytes":
        return None
    wanted = _byte_range(spec, size)
    if isinstance(wanted, str):
        return error_response(416, "range not satisfiable", [{"field": "Range", "message": wanted}],
                              headers={"Content-Range": f"bytes */{size}"})
    return wanted


def _byte_range(spec: str, size: int) -> tuple[int, int] | str:
    """``first-last``, ``first-`` or ``-length`` as ``[start, end)`` within ``size`` bytes, or why it is not
    one (RFC 9110 §14.1.1: a last byte before the first is invalid, a suffix of 0 bytes unsatisfiable)."""
    match = BYTE_RANGE.fullmatch(spec)
    if match is None or match.groups() == ("", ""):
        return "one range: bytes=first-last, bytes=first- or bytes=-length"
    first_digits, last_digits = match.groups()
    first, last = _position(first_digits), _position(last_digits)
    if first is None:
        if not last:
            return "a suffix of 0 bytes is empty"
        start, stop = max(size - last, 0), size
    else:
        start, stop = first, size if last is None else min(last + 1, size)
        if last is not None and last < first:
            return f"the last byte ({last_digits}) is before the first ({first_digits})"
    if start >= size:
        return f"it starts past the end of the file's {size} bytes"
    return start, stop


def _position(digits: str) -> int | None:
    if not digits:
        return None
    return int(digits) if len(digits) <= 30 else BEYOND


async def send_artifact(request: web.Request, store: ArtifactStore, key: str, *, content_type: str, filename: str,
                        missing: NotFound) -> web.StreamResponse:
    """Send ``key`` to the client as an attachment named ``filename``; ``missing`` (a 404 that says the
    file is missing) when the store has no such object."""
    headers = {"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{filename}"'}
    if hdrs.RANGE not in request.headers and (local := store.local_path(key)) is not None:
        # A whole file: sendfile. A Range is read by _range for every backend alike (aiohttp's reading of
        # it answers 416 with no body, and refuses a unit it should ignore).
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
