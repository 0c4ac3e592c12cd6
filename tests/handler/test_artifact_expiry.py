"""Artifacts expire a TTL after their job ended: downloads become 410, and the sweeper deletes the files,
never those of a job still waiting to run."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from receptionist.app import create_app as receptionist_app
from receptionist.keys import ARTIFACT_SWEEPER
from receptionist.settings import Settings as ReceptionistSettings
from shared.artifacts import LocalArtifactStore, artifact_key
from tests.support import wait_until


async def test_a_result_expires_and_its_files_are_deleted(aiohttp_client: Any, core: Any, pipeline: Any,
                                                          tmp_path: Path) -> None:
    _, start_handler = pipeline
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, artifact_sweep_interval_s=0, artifact_ttl_s=1.0, time_scale=0)))
    await start_handler(queues=["export"])  # the import below stays pending: no handler takes its queue
    job = await (await receptionist.post("/exports", json={"bookId": "b", "type": "epub"})).json()
    pending = await (await receptionist.post("/imports", json={
        "bookId": "p", "type": "pdf", "url": "https://example.com/p.pdf"})).json()

    async def finished() -> dict[str, Any] | None:
        _, record = await core.registry("GET", f"/jobs/{job['id']}")
        return record if record["state"] == "finished" else None

    record = await wait_until(finished, what="the export to finish")
    first = await receptionist.get(f"/jobs/{job['id']}/result")
    assert first.status == 200
    store = LocalArtifactStore(tmp_path)  # as another process of the machine sees the directory
    artifact = record["result"]["artifact"]
    assert await store.exists(artifact)

    async def gone() -> bool:
        return (await receptionist.get(f"/jobs/{job['id']}/result")).status == 410

    await wait_until(gone, timeout_s=10, interval_s=0.1, what="the result to expire")
    answer = await (await receptionist.get(f"/jobs/{job['id']}/result")).json()
    assert "expired" in answer["error"]

    # An old input of a job that has not run yet stays; a file of no job at all goes.
    waiting = tmp_path / artifact_key("import", pending["id"], 0, "upload.pdf")
    stray = tmp_path / artifact_key("export", uuid.uuid4(), 1, "stray.epub")
    for path in (waiting, stray):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert await receptionist.app[ARTIFACT_SWEEPER].sweep_once() == 2
    assert not await store.exists(artifact) and not stray.exists() and waiting.exists()
    assert await receptionist.app[ARTIFACT_SWEEPER].sweep_once() == 0
    await store.close()
