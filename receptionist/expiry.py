"""Artifacts expire: a job's files (its result, the upload or signals it read) are kept ``artifact_ttl_s``
after the job ended, then deleted; a download after that is a 410. Both backends expire the same way:
a listing of the objects older than the TTL (a directory walk, or a paged ListObjectsV2).

The sweeper looks only at files older than the TTL, and deletes one only when its job is in a final state
(or unknown to the registry): an input waiting in a long queue is not taken from its job. Every artifact
key names its job (:func:`shared.artifacts.artifact_key`), so a file tells whose it is.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from loguru import logger

from receptionist.upkeep import every
from shared.artifacts import ArtifactStore
from shared.contract import TERMINAL_STATES, JobState, utcnow
from shared.errors import UpstreamError
from shared.http import ServiceClient


def expired(job: dict[str, Any], ttl_s: float, now: datetime | None = None) -> bool:
    """Whether a job's artifacts have expired: it ended more than ``ttl_s`` ago."""
    if job["state"] not in TERMINAL_STATES or not job.get("finished_at"):
        return False
    return (now or utcnow()) - datetime.fromisoformat(job["finished_at"]) > timedelta(seconds=ttl_s)


def _job_id(filename: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(filename[:36])
    except ValueError:
        return None


class ArtifactSweeper:
    def __init__(self, artifacts: ArtifactStore, registry: ServiceClient, ttl_s: float, interval_s: float) -> None:
        self.artifacts = artifacts
        self.registry = registry
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.deleted = 0

    async def _old_files(self) -> dict[uuid.UUID, list[str]]:
        """Keys of objects older than the TTL, by the job they belong to (a listing of the store)."""
        found: dict[uuid.UUID, list[str]] = {}
        async for info in self.artifacts.list_older(time.time() - self.ttl_s):
            job_id = _job_id(info.key.rsplit("/", 1)[-1])
            if job_id is not None:
                found.setdefault(job_id, []).append(info.key)
        return found

    async def sweep_once(self) -> int:
        """Delete the expired artifacts of ended jobs; returns how many went. Writes left unfinished by a
        process that died (older than the TTL too) are ended as well."""
        stale = await self.artifacts.remove_stale_writes(time.time() - self.ttl_s)
        if stale:
            logger.info("unfinished artifact writes removed: {}", stale)
        old = await self._old_files()
        deleted = 0
        for job_id, keys in old.items():
            try:
                _, job = await self.registry.get(f"/jobs/{job_id}")
            except UpstreamError as exc:
                if exc.upstream_status != 404:
                    raise
                job = None  # a file of no job: nobody will ever ask for it
            if job is not None and (JobState(job["state"]) not in TERMINAL_STATES or not expired(job, self.ttl_s)):
                continue
            await self.artifacts.delete(keys)
            deleted += len(keys)
            logger.bind(job_id=str(job_id)).info("artifacts expired: {} files deleted", len(keys))
        self.deleted += deleted
        return deleted

    async def run(self) -> None:
        await every(self.interval_s, self.sweep_once, "artifact sweep")
