"""What keeps a handler's reports ones the registry takes: the requests they travel in, an error cut to
size, and a request the registry refuses whole sent again a report at a time, so that one report it
cannot read fails alone instead of every job whose report shared its request."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from handler.app import WORKER
from handler.reports import MAX_RESULT_BYTES, REPORTS_BYTES, by_size, cut_error, encode_result, send_reports
from shared.contract import MAX_ERROR_CHARS
from shared.errors import UpstreamError
from tests.support import wait_until


def test_reports_travel_in_requests_the_registry_takes() -> None:
    small = [(str(i), {"attempt": 1, "state": "processing"}) for i in range(100)]
    assert by_size(small) == [small]
    failed = [(str(i), {"attempt": 1, "state": "pending", "error": "é" * MAX_ERROR_CHARS}) for i in range(100)]
    assert len(by_size(failed)) > 1
    for chunk in by_size(failed):
        assert len(orjson.dumps({"updates": [{"id": i, **update} for i, update in chunk]})) <= REPORTS_BYTES
    largest = encode_result({"text": "a" * (MAX_RESULT_BYTES - 20)})
    big = [(str(i), {"attempt": 1, "state": "finished", "result": largest}) for i in range(20)]
    chunks = by_size(big)
    assert [item for chunk in chunks for item in chunk] == big and len(chunks) > 1
    for chunk in chunks:
        body = orjson.dumps({"updates": [{"id": i, **update} for i, update in chunk]})
        assert len(body) <= REPORTS_BYTES < 1024**2


def test_an_error_is_cut_to_what_a_report_carries() -> None:
    assert cut_error("short") == "short"
    assert cut_error("e" * MAX_ERROR_CHARS) == "e" * MAX_ERROR_CHARS
    cut = cut_error("e" * 25_000)
    assert len(cut) <= MAX_ERROR_CHARS and cut.endswith(" ... (15,100 more characters cut)")


async def test_a_report_the_registry_cannot_read_fails_alone(pipeline: Any, core: Any) -> None:
    _, start_handler = pipeline
    handler = await start_handler()
    worker = handler.server.app[WORKER]
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in ids:  # registered, never queued: only these reports touch them
        status, body = await core.registry("POST", "/jobs", json={
            "id": job_id, "kind": "export", "type": "epub", "payload": {}, "owner": "anonymous"})
        assert status == 201, body
    outcomes = await send_reports(worker.registry, [
        (ids[0], {"attempt": 1, "state": "processing"}),
        (ids[1], {"attempt": 1, "state": "processing", "error": "e" * (MAX_ERROR_CHARS + 1)}),  # refused: too long
        (ids[2], {"attempt": 1, "state": "processing"}),
    ])
    assert [o["state"] for o in (outcomes[0], outcomes[2])] == ["processing", "processing"]  # type: ignore[index]
    assert isinstance(outcomes[1], UpstreamError) and outcomes[1].upstream_status == 400
    states = [(await core.registry("GET", f"/jobs/{job_id}"))[1]["state"] for job_id in ids]
    assert states == ["processing", "pending", "processing"]


async def test_a_result_naming_a_file_not_its_jobs_is_not_served(pipeline: Any, core: Any) -> None:
    """A result stored before handlers checked it may name another job's file, or no key at all: its
    download is a 404, not the other job's file (nor a 500)."""
    receptionist, start_handler = pipeline
    await start_handler()
    resp = await receptionist.post("/exports", json={"bookId": "theirs", "type": "pdf"})
    assert resp.status == 201
    theirs = (await resp.json())["id"]

    async def their_file() -> str | None:
        _, job = await core.registry("GET", f"/jobs/{theirs}")
        return job["result"]["artifact"] if job["state"] == "finished" else None

    key = await wait_until(their_file, what="the export to finish")
    assert (await receptionist.get(f"/jobs/{theirs}/result")).status == 200
    for artifact in (key, 5, "../../etc/passwd"):
        job_id = str(uuid.uuid4())
        status, _ = await core.registry("POST", "/jobs", json={
            "id": job_id, "kind": "export", "type": "pdf", "payload": {}, "owner": "anonymous"})
        assert status == 201
        for update in ({"attempt": 1, "state": "processing"},
                       {"attempt": 1, "state": "finished", "result_url": f"/jobs/{job_id}/result",
                        "result": {"artifact": artifact, "filename": "x.pdf", "content_type": "application/pdf"}}):
            assert (await core.registry("PATCH", f"/jobs/{job_id}", json=update))[0] == 200
        resp = await receptionist.get(f"/jobs/{job_id}/result")
        assert resp.status == 404, artifact
        assert (await resp.json())["details"] == [
            {"field": "job_id", "message": "its result names no file of this job's"}]
