"""Artifacts: the files jobs produce (converted books, exports, reports). Handlers write them, the
receptionist streams them to clients. On one machine this is a directory; on many, a shared volume.

Keys are relative POSIX paths (``export/<job id>/book.epub``); a key never escapes the root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str) -> ArtifactStore:
        """``file:///abs/path`` or a plain directory path."""
        return cls(url.removeprefix("file://") if url.startswith("file://") else url)

    def path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or any(part in ("..", "") for part in parts) or PurePosixPath(key).is_absolute():
            raise ValueError(f"bad artifact key {key!r}")
        return self.root.joinpath(*parts)

    def _write(self, key: str, data: bytes) -> int:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)  # readers never see half a file
        return len(data)

    async def write(self, key: str, data: bytes) -> int:
        """Write ``data`` under ``key`` atomically; returns its size."""
        if len(data) <= 64 * 1024:
            return self._write(key, data)  # a small file costs less than the thread hop
        return await asyncio.to_thread(self._write, key, data)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (a job's folder, when its work is abandoned)."""
        target = self.path(prefix)
        await asyncio.to_thread(shutil.rmtree, target, True)
