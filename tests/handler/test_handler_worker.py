"""A real handler working against a real registry and scheduler (memory stores) on loopback."""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from pathlib import Path
from typing import Any

from shared.artifacts import LocalArtifactStore
from tests.support import wait_until


async def job_state(core: Any, job_id: str) -> dict[str, Any]:
    _, job = await core.registry("GET", f"/jobs/{job_id}")
    return job


async def test_jobs_run_to_finished_with_real_artifacts(pipeline: Any, core: Any, tmp_path: Path) -> None:
    receptionist, start_handler = pipeline
    handler = await start_handler()
    ids = []
    for body in ({"bookId": "a", "type": "epub"}, {"bookId": "b", "type": "pdf"}):
        ids.append((await (await receptionist.post("/exports", json=body)).json())["id"])
    ids.append((await (await receptionist.post("/imports", json={
        "bookId": "c", "type": "pdf", "url": "http://example.com/c.pdf"})).json())["id"])

    async def finished() -> bool:
        states = [(await job_state(core, job_id))["state"] for job_id in ids]
        return states == ["finished"] * len(ids)

    await wait_until(finished, what="three finished jobs")
    epub = await job_state(core, ids[0])
    assert epub["attempt"] == 1 and epub["progress"] == 1.0 and epub["result_url"] == f"/jobs/{ids[0]}/result"
    assert epub["started_at"] and epub["finished_at"]
    store = LocalArtifactStore(tmp_path)  # the handler's store, as another process opens it
    artifact = await store.read(epub["result"]["artifact"])
    assert zipfile.ZipFile(io.BytesIO(artifact)).read("mimetype") == b"application/epub+zip"
    resp = await receptionist.get(epub["result_url"])
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/epub+zip"
    assert await resp.read() == artifact
    assert (await store.read((await job_state(core, ids[1]))["result"]["artifact"])).startswith(b"%PDF-")
    await store.close()

    status = await (await handler.get("/status")).json()
    assert status["succeeded"] == 3 and status["processed"] == 3 and status["failed"] == 0
    _, queues = await core.scheduler("GET", "/status")
    assert queues["queues"]["export"]["acked"] == 2 and queues["queues"]["import"]["acked"] == 1
    assert (await handler.get("/health")).status == 200


async def test_a_failing_job_is_retried_then_failed_and_dead_lettered(pipeline: Any, core: Any) -> None:
    _, start_handler = pipeline
    await start_handler()
    job_id = str(uuid.uuid4())
    # A job whose payload its kind cannot use: every attempt fails inside run().
    status, _ = await core.registry("POST", "/jobs", json={
        "id": job_id, "kind": "export", "type": "epub", "payload": {}, "owner": "anonymous", "max_attempts": 2})
    assert status == 201
    status, _ = await core.scheduler("POST", "/queues/export/jobs", json={"jobs": [{
        "id": job_id, "kind": "export", "type": "epub", "payload": {}, "owner": "anonymous",
        "retry": {"max_attempts": 2, "backoff_base_s": 0.0, "backoff_cap_s": 0.0}}]})
    assert status == 200

    async def failed() -> dict[str, Any] | None:
        job = await job_state(core, job_id)
        return job if job["state"] == "failed" else None

    job = await wait_until(failed, what="the job failed for good")
    assert job["attempt"] == 2
    assert [e["attempt"] for e in job["errors"]] == [1, 2]
    assert "KeyError" in job["error"]
    _, dead = await core.scheduler("GET", "/dead")
    assert [d["job"]["id"] for d in dead["items"]] == [job_id]


async def test_a_job_that_already_ended_is_not_run_again(pipeline: Any, core: Any) -> None:
    receptionist, start_handler = pipeline
    job = await (await receptionist.post("/exports", json={"bookId": "x", "type": "epub"})).json()
    # The registry already holds the outcome (a handler died after reporting, before acking).
    await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": 1, "state": "processing"})
    await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": 1, "state": "failed", "error": "earlier"})
    handler = await start_handler()

    async def skipped() -> bool:
        return (await (await handler.get("/status")).json())["skipped"] == 1

    await wait_until(skipped, what="the handler to skip the ended job")

    async def acked() -> bool:  # acks go in batches: the skip is counted before its ack is sent
        _, queues = await core.scheduler("GET", "/status")
        return queues["queues"]["export"]["acked"] == 1 and queues["queues"]["export"]["ready"] == 0

    await wait_until(acked, what="the ended job's delivery acked")
    after = await job_state(core, job["id"])
    assert after["state"] == "failed" and after["error"] == "earlier"


async def test_a_job_of_a_kind_the_handler_lacks_fails_its_attempt_not_the_handler(pipeline: Any, core: Any) -> None:
    """A job of a plugin's kind that this handler does not load (it came on a queue the handler takes) fails
    the attempt, saying so, and is retried: another handler may have the kind. The handler carries on."""
    receptionist, start_handler = pipeline
    handler = await start_handler()
    job_id = str(uuid.uuid4())
    body = {"id": job_id, "kind": "acme.resize", "type": "acme.resize", "payload": {}, "owner": "anonymous"}
    assert (await core.registry("POST", "/jobs", json={**body, "max_attempts": 2}))[0] == 201
    assert (await core.scheduler("POST", "/queues/export/jobs", json={"jobs": [{
        **body, "retry": {"max_attempts": 2, "backoff_base_s": 0.0, "backoff_cap_s": 0.0}}]}))[0] == 200

    async def failed() -> dict[str, Any] | None:
        job = await job_state(core, job_id)
        return job if job["state"] == "failed" else None

    job = await wait_until(failed, what="the job of an unknown kind to fail")
    assert [e["error"] for e in job["errors"]] == ["UnknownKind: no kind 'acme.resize' is registered here"] * 2
    export = await (await receptionist.post("/exports", json={"bookId": "b", "type": "epub"})).json()

    async def finished() -> bool:
        return (await job_state(core, export["id"]))["state"] == "finished"

    await wait_until(finished, what="the next job to finish")

    async def settled() -> dict[str, Any] | None:  # its ack waits its window (HANDLER_ACK_WINDOW_S) first
        lanes = (await (await handler.get("/status")).json())["lanes"]
        return lanes if lanes["shared"]["settling"] == 0 else None

    assert await wait_until(settled, what="the last ack") == {"shared": {
        "queues": ["data_export", "data_import", "ecg", "export", "import", "task"], "slots": 16, "running": 0,
        "settling": 0}}


async def test_a_slot_takes_the_next_job_while_the_last_ones_outcome_is_reported(
        aiohttp_client: Any, aiohttp_server: Any, core: Any, tmp_path: Any) -> None:
    """With one slot, the second job starts while the first one's ``finished`` report is still on its way
    (held 1.5 s here by a relay in front of the real registry): a slot is busy for the run, not for the
    round trips after it."""
    from aiohttp import web

    from handler.app import create_app as handler_app
    from handler.settings import Settings as HandlerSettings

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/jobs/updates" and b'"finished"' in body:
            await asyncio.sleep(1.5)
        async with core.session.request(request.method, core.registry_url + request.path_qs, data=body,
                                        headers={k: v for k, v in request.headers.items() if k.lower() != "host"}
                                        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)

    relay_app = web.Application()
    relay_app.router.add_route("*", "/{tail:.*}", relay)
    held = await aiohttp_server(relay_app)
    await aiohttp_client(handler_app(HandlerSettings(
        registry_url=str(held.make_url("")).rstrip("/"), scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        data_store_url=f"sqlite:///{tmp_path}/data.db", time_scale=0.0, poll_wait_s=1.0, concurrency=1,
        batch_window_s=0.0005, discovery_interval_s=0)))
    ids = []
    for n in range(2):
        body = {"id": str(uuid.uuid4()), "kind": "export", "type": "epub", "payload": {"bookId": f"b{n}", "type": "epub"},
                "owner": "anonymous"}
        assert (await core.registry("POST", "/jobs", json=body))[0] == 201
        assert (await core.scheduler("POST", "/queues/export/jobs", json={"jobs": [body]}))[0] == 200
        ids.append(body["id"])

    async def both_finished() -> list[dict[str, Any]] | None:
        jobs = [await job_state(core, job_id) for job_id in ids]
        return jobs if all(job["state"] == "finished" for job in jobs) else None

    async def ended() -> bool:
        return all([(await job_state(core, job_id))["state"] in ("finished", "failed") for job_id in ids])

    await wait_until(ended, timeout_s=20, what="both jobs ended")
    assert [(await job_state(core, job_id))["errors"] for job_id in ids] == [[], []]
    first, second = await wait_until(both_finished, timeout_s=20, what="both jobs finished")
    first, second = sorted((first, second), key=lambda job: job["started_at"])
    assert second["started_at"] < first["finished_at"]
