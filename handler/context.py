"""The :class:`~shared.kinds.base.JobContext` a handler gives each running job."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from loguru import logger

from shared.artifacts import ArtifactStore, ArtifactWriter, artifact_key, safe_filename
from shared.contract import Delivery
from shared.errors import Unavailable, UpstreamError
from shared.fetching import FetchPolicy
from shared.http import ServiceClient
from shared.kinds.base import JobCancelled


class RunningJob:
    """One delivery being worked on: its cancel signal, its progress reports, its artifacts."""

    def __init__(self, delivery: Delivery, *, registry: ServiceClient, artifacts: ArtifactStore,
                 time_scale: float, progress_interval_s: float, datastore: Any = None,
                 fetch_policy: FetchPolicy | None = None) -> None:
        self.delivery = delivery
        self.job = delivery.job
        self.attempt = delivery.attempt
        self.registry = registry
        self.artifacts = artifacts
        self.datastore = datastore
        self.fetch_policy = fetch_policy or FetchPolicy()
        self.time_scale = time_scale
        self.progress_interval_s = progress_interval_s
        self.cancelled = asyncio.Event()
        #: Why the work was stopped from outside: "cancelled" (the client), "lease lost", "stopping".
        self.stop_reason: str | None = None
        self.artifacts_written: list[str] = []
        self._last_progress = time.monotonic()
        self._log = logger.bind(job_id=str(self.job.id), kind=str(self.job.kind), attempt=self.attempt)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancelled.set()

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    async def sleep(self, seconds: float) -> None:
        delay = self.scaled(seconds)
        self.check_cancelled()
        if delay <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.cancelled.wait(), timeout=delay)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled(self.stop_reason or "cancelled")

    async def progress(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.progress_interval_s or fraction >= 1.0:
            return
        self._last_progress = now
        try:
            await self.registry.call("PATCH", f"/jobs/{self.job.id}",
                                     json={"attempt": self.attempt, "progress": round(fraction, 4)}, timeout_s=5)
        except UpstreamError as exc:
            if exc.upstream_status == 409:
                # The registry refuses this attempt: another one took over or the job ended.
                self.stop("lease lost")
                self.check_cancelled()
            self._log.warning("progress report failed: {}", exc)

    def log(self, message: str, **meta: Any) -> None:
        self._log.bind(**meta).info(message)

    async def write_artifact(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        self.check_cancelled()
        key = artifact_key(self.job.kind, self.job.id, self.attempt, name)
        size = await self.artifacts.write(key, data)
        self.artifacts_written.append(key)
        return {"artifact": key, "filename": safe_filename(name), "content_type": content_type, "size": size}

    async def read_artifact(self, key: str) -> bytes:
        return await self.artifacts.read(key)

    def artifact_file(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        return self.artifacts.local_file(key)

    def new_artifact(self, name: str) -> ArtifactWriter:
        self.check_cancelled()
        out = self.artifacts.writer(artifact_key(self.job.kind, self.job.id, self.attempt, name))
        self.artifacts_written.append(out.key)
        return out

    async def discard_artifacts(self) -> None:
        """Remove what this attempt wrote: it did not finish, or its report was refused. A store that
        cannot be reached leaves them to the expiry sweep."""
        keys, self.artifacts_written = self.artifacts_written, []
        try:
            await self.artifacts.delete(keys)
        except Unavailable as exc:
            self._log.warning("artifacts of the attempt not removed: {}", exc)
