"""The artifact store interface: what every backend offers, and the key rules they share.

A store holds objects under keys (relative POSIX paths, :func:`artifact_key`). Large objects stream both
ways: :meth:`ArtifactStore.writer` takes chunks and makes the object visible only once committed (a
reader never sees half of one), :meth:`ArtifactStore.stream` gives chunks of an object or of a byte range.
Code that needs a path on disk (numpy, the csv module) asks :meth:`ArtifactStore.local_file`: the file
itself on a local store, a temporary copy streamed down otherwise.

Errors: a key that names nothing raises :class:`ArtifactMissing` (a ``FileNotFoundError``); a backend
that cannot be reached raises :class:`shared.errors.Unavailable`; a malformed key is a ``ValueError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: How much one read of a stream asks for.
CHUNK_BYTES = 1024 * 1024


def safe_filename(name: str, limit: int = 100) -> str:
    """``name`` reduced to characters that are safe in a path and in a Content-Disposition header."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "result"
    return cleaned[-limit:]


def artifact_key(kind: str, job_id: uuid.UUID | str, attempt: int, name: str) -> str:
    """The key of a job attempt's file: the kind, a two-character shard of the job id, then one flat name
    that starts with the job id (so the expiry sweep tells whose a file is).

    The shard is the id's last two hex digits, which are random in every id Conveyor makes. Its first two
    are the creation time's in a time-ordered id (:func:`shared.ids.uuid7`), the same for years: a shard
    of those put every file of a kind in one directory, where creating a file costs several times more."""
    job = str(job_id)
    return f"{kind}/{job[-2:]}/{job}-{attempt}-{safe_filename(name)}"


def check_key(key: str) -> PurePosixPath:
    """``key`` as a relative path without ``.``/``..`` parts; a ValueError otherwise."""
    posix = PurePosixPath(key)
    if posix.is_absolute() or not posix.parts or any(part in ("..", ".", "") for part in posix.parts) \
            or "\\" in key or "//" in key or key.endswith("/"):
        raise ValueError(f"bad artifact key {key!r}")
    return posix


class ArtifactMissing(FileNotFoundError):
    """No object under this key: never written, or deleted (not the same as expired)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"artifact {key} is missing")
        self.key = key


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int
    #: When it was written, in seconds since the epoch.
    modified: float


class ArtifactWriter(ABC):
    """One object being written as a stream: :meth:`write` chunks, then :meth:`commit` (it appears whole)
    or :meth:`abort` (nothing appears). As an async context manager it commits on a clean exit and aborts
    on an exception."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 0
        self.closed = False

    @abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    async def _commit(self) -> None: ...

    @abstractmethod
    async def _abort(self) -> None: ...

    async def commit(self) -> int:
        """Make the object visible under its key; returns its size."""
        if not self.closed:
            self.closed = True
            await self._commit()
        return self.size

    async def abort(self) -> None:
        if not self.closed:
            self.closed = True
            await self._abort()

    async def __aenter__(self) -> ArtifactWriter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.abort()


class ArtifactStore(ABC):
    """Where artifacts live. :func:`shared.artifacts.open_store` picks the backend by URL."""

    @abstractmethod
    def writer(self, key: str) -> ArtifactWriter:
        """A streamed write of ``key`` (an existing object is replaced on commit)."""

    @abstractmethod
    def stream(self, key: str, start: int = 0, end: int | None = None,
               chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of ``key`` (to its end when ``end`` is None), a chunk at a time.
        Raises :class:`ArtifactMissing` before the first chunk when there is no such object."""

    @abstractmethod
    async def stat(self, key: str) -> ArtifactInfo | None:
        """Its size and age, or None when there is no such object."""

    @abstractmethod
    async def delete(self, keys: list[str]) -> None:
        """Remove these objects; missing ones are fine."""

    @abstractmethod
    def list_older(self, cutoff: float) -> AsyncIterator[ArtifactInfo]:
        """Every object written before ``cutoff`` (seconds since the epoch): what expiry looks at."""

    @abstractmethod
    async def remove_stale_writes(self, cutoff: float) -> int:
        """End the streamed writes begun before ``cutoff`` and never committed nor aborted (their process
        died): a partial file. Returns how many (0 from a backend that cannot see them: S3's multipart
        uploads are left to the bucket's lifecycle rule)."""

    async def write(self, key: str, data: bytes) -> int:
        """Write ``data`` whole under ``key``; returns its size."""
        async with self.writer(key) as out:
            await out.write(data)
        return out.size

    async def read(self, key: str) -> bytes:
        """A small object whole (use :meth:`stream` or :meth:`local_file` for large ones)."""
        return b"".join([chunk async for chunk in self.stream(key)])

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    def local_path(self, key: str) -> Path | None:
        """The object's own file, on a backend that keeps files on this machine; None otherwise."""
        return None

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """A path on this machine holding the object, for code that reads files (numpy, csv): a temporary
        copy, streamed down a chunk at a time and removed afterwards."""
        fd, name = tempfile.mkstemp(prefix="conveyor-artifact-")
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in self.stream(key):
                    fh.write(chunk)
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    async def check(self) -> None:
        """Raise :class:`shared.errors.Unavailable` when the backend cannot be used (for ``/health``)."""
        return None

    async def close(self) -> None:
        """Release what the store opened (connections); it may be used again after."""
        return None
