"""Artifacts: the files jobs produce (converted books, exports, reports). Handlers write them, the
receptionist streams them to clients. On one machine this is a directory; on many, a shared volume.

Keys are relative POSIX paths (``export/6f/6f1c…-1-book.epub``): the kind, a two-character shard of the job
id, then one flat file a job attempt and name. No directory is made per job: on real disks creating one
costs more than writing a small file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from pathlib import Path, PurePosixPath

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, limit: int = 100) -> str:
    """``name`` reduced to characters that are safe in a path and in a Content-Disposition header."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "result"
    return cleaned[-limit:]


def artifact_key(kind: str, job_id: uuid.UUID | str, attempt: int, name: str) -> str:
    job = str(job_id)
    return f"{kind}/{job[:2]}/{job}-{attempt}-{safe_filename(name)}"


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str) -> ArtifactStore:
        """``file:///abs/path`` or a plain directory path."""
        return cls(url.removeprefix("file://") if url.startswith("file://") else url)

    def path(self, key: str) -> Path:
        posix = PurePosixPath(key)
        if posix.is_absolute() or not posix.parts or any(part in ("..", ".", "") for part in posix.parts):
            raise ValueError(f"bad artifact key {key!r}")
        return self.root.joinpath(*posix.parts)

    def _write(self, key: str, data: bytes) -> int:
        target = self.path(key)
        try:
            fh = open(target, "wb")  # noqa: SIM115 - closed below; the common case needs no mkdir
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = open(target, "wb")  # noqa: SIM115
        with fh:
            fh.write(data)
        return len(data)

    async def write(self, key: str, data: bytes) -> int:
        """Write ``data`` under ``key``; returns its size. Nobody is pointed at a key before its write
        returned (the registry hears of it after), so readers never see half a file."""
        if len(data) <= 64 * 1024:
            return self._write(key, data)  # a small file costs less than the thread hop
        return await asyncio.to_thread(self._write, key, data)

    async def read(self, key: str) -> bytes:
        """The artifact under ``key``, read in a worker thread (it may be tens of megabytes)."""
        return await asyncio.to_thread(self.path(key).read_bytes)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, keys: list[str]) -> None:
        """Remove these artifacts (an abandoned attempt's); missing ones are fine."""
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(key))
