"""Artifacts in a directory of this machine (the embedded default; on many machines, only a shared volume
makes it work: use the S3 backend there).

No directory is made per job: on real disks creating one costs more than writing a small file. A small
write (up to 64 KiB: most jobs' results) makes no file at all: it is a row of ``<root>/.small.db``
(:mod:`shared.artifacts.small`), committed with the other small writes of the same moment. A streamed write
goes to a hidden ``.<name>.<random>.partial`` file beside its target and is renamed over it on commit, so
readers never see half a file. A key is a row or a file, never both: a file's commit removes a row of its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from shared.artifacts.base import CHUNK_BYTES, ArtifactInfo, ArtifactMissing, ArtifactStore, ArtifactWriter, check_key
from shared.artifacts.small import SMALL_BYTES, SmallBlobs

#: Writes up to this size are made on the event loop: page-cache writes take microseconds, less than the
#: hop to a worker thread.
_INLINE_BYTES = 256 * 1024


def _open_new(path: Path, buffering: int = -1) -> IO[bytes]:
    try:
        return open(path, "wb", buffering=buffering)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb", buffering=buffering)


def _write_all(fh: IO[bytes], chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[fh.write(view) or 0:]


class _LocalWriter(ArtifactWriter):
    def __init__(self, key: str, target: Path, small: SmallBlobs) -> None:
        super().__init__(key)
        self.target = target
        self.small = small
        self.partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        self._fh: IO[bytes] | None = None

    async def write(self, chunk: bytes) -> None:
        if self._fh is None:
            # Unbuffered: chunks come whole (a page, a part of an upload), and what was written shows.
            self._fh = _open_new(self.partial, buffering=0)
        if len(chunk) <= _INLINE_BYTES:
            _write_all(self._fh, chunk)
        else:
            await asyncio.to_thread(_write_all, self._fh, chunk)
        self.size += len(chunk)

    async def _commit(self) -> None:
        if self._fh is None:
            self._fh = _open_new(self.partial, buffering=0)
        self._fh.close()
        os.replace(self.partial, self.target)
        self.small.delete([self.key])  # the key's older, smaller version, if it has one

    async def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.small = SmallBlobs(self.root / ".small.db")

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """Where ``key``'s file is (whether or not it exists); a ValueError for a malformed key."""
        return self.root.joinpath(*check_key(key).parts)

    def local_path(self, key: str) -> Path | None:
        """The key's file; None when it has none (a small one is a row: :meth:`stat` and :meth:`stream`)."""
        path = self.path(key)
        return path if path.is_file() else None

    async def write(self, key: str, data: bytes) -> int:
        """A small ``data`` is a row, committed with the other small writes of this moment; a large one goes
        through a partial file like any stream."""
        if len(data) <= SMALL_BYTES:
            path = self.path(key)  # checks the key
            await self.small.put(key, data)
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():  # a key is a row or a file: a larger, older version goes
                    path.unlink()
            return len(data)
        return await super().write(key, data)

    def writer(self, key: str) -> ArtifactWriter:
        return _LocalWriter(key, self.path(key), self.small)

    async def stream(self, key: str, start: int = 0, end: int | None = None,
                     chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        data = self.small.get(str(check_key(key)))
        if data is not None:
            stop = len(data) if end is None else min(end, len(data))
            for at in range(start, stop, chunk_bytes):
                yield data[at:min(at + chunk_bytes, stop)]
            return
        try:
            fh = open(self.path(key), "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactMissing(key) from None
        with fh:
            fh.seek(start)
            left = None if end is None else max(end - start, 0)
            while left is None or left > 0:
                want = chunk_bytes if left is None else min(chunk_bytes, left)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def read(self, key: str) -> bytes:
        data = self.small.get(str(check_key(key)))
        if data is not None:
            return data
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactMissing(key) from None

    async def stat(self, key: str) -> ArtifactInfo | None:
        info = self.small.stat(str(check_key(key)))
        if info is not None:
            return info
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ArtifactInfo(key, st.st_size, st.st_mtime) if os.path.isfile(self.path(key)) else None

    async def delete(self, keys: list[str]) -> None:
        self.small.delete([str(check_key(key)) for key in keys])
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(key))

    def _older(self, cutoff: float) -> list[ArtifactInfo]:
        found: list[ArtifactInfo] = []
        if not self.root.is_dir():
            return found
        for folder, _, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):  # a write in progress
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(path)
                    if st.st_mtime < cutoff:
                        key = Path(path).relative_to(self.root).as_posix()
                        found.append(ArtifactInfo(key, st.st_size, st.st_mtime))
        return found

    def _remove_stale(self, cutoff: float) -> int:
        removed = 0
        if not self.root.is_dir():
            return removed
        for folder, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".partial"):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
        return removed

    async def remove_stale_writes(self, cutoff: float) -> int:
        return await asyncio.to_thread(self._remove_stale, cutoff)

    async def list_older(self, cutoff: float) -> AsyncIterator[ArtifactInfo]:
        for info in self.small.older(cutoff):
            yield info
        for info in await asyncio.to_thread(self._older, cutoff):
            yield info

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """The file itself, nothing copied; a small one's temporary copy."""
        path = self.path(key)
        if path.is_file():
            yield path
            return
        if self.small.stat(str(check_key(key))) is None:
            raise ArtifactMissing(key)
        async with super().local_file(key) as copy:
            yield copy

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        self.small.close()

