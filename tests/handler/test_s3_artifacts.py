"""The pipeline with its artifacts on S3 (a real moto server process): the receptionist and the handler each
have a data directory of their own and share nothing on disk, only the object store, the registry and the
scheduler. A book export is downloaded, an ECG analysed, a CSV upload imported, an export job's file
downloaded (whole and by range); a result whose object is gone is a 404 that says so, not a 410."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from handler.app import create_app as handler_app
from handler.settings import Settings as HandlerSettings
from receptionist.app import create_app as receptionist_app
from receptionist.keys import ARTIFACT_SWEEPER, ARTIFACTS
from receptionist.settings import Settings as ReceptionistSettings
from shared.artifacts import open_store
from shared.artifacts.small import SMALL_BYTES
from tests.handler.conftest import IMPORTER
from tests.handler.test_data_import_api import USERS_CSV, finished, submit, upload
from tests.support import wait_until

ECG = {"id": "10", "date": "2023-07-30T10:15:00Z",
       "leads": [{"name": "I", "signal": [1, -1, 2, -2, 0, 3]}, {"name": "II", "signal": [5, 5, -5]}]}


@pytest.fixture
async def s3_pipeline(aiohttp_client: Any, core: Any, tmp_path: Path, s3_url: str) -> Any:
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(host_a / "artifacts"),
        artifacts_url=s3_url, data_store_url=f"sqlite:///{host_a}/data.db", sweep_interval_s=0, time_scale=0)), headers=IMPORTER)
    await aiohttp_client(handler_app(HandlerSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(host_b / "artifacts"),
        artifacts_url=s3_url, data_store_url=f"sqlite:///{host_b}/data.db", time_scale=0.0, poll_wait_s=1.0)))
    return receptionist, host_a, host_b


async def wait_finished(core: Any, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        _, record = await core.registry("GET", f"/jobs/{job_id}")
        assert record["state"] not in ("failed", "cancelled"), record
        return record if record["state"] == "finished" else None

    return await wait_until(done, what=f"job {job_id} finished")


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and p.name != "data.db" and not p.name.startswith("data.db")]


async def test_book_ecg_and_import_with_artifacts_on_s3(s3_pipeline: Any, core: Any, s3_url: str) -> None:
    receptionist, host_a, host_b = s3_pipeline
    export = await (await receptionist.post("/exports", json={"bookId": "b1", "type": "epub"})).json()
    ecg = await (await receptionist.post("/ecgs", json=ECG)).json()
    imported = await submit(receptionist, "users", upload(USERS_CSV))

    record = await wait_finished(core, export["id"])
    resp = await receptionist.get(f"/jobs/{export['id']}/result")
    assert resp.status == 200 and resp.content_type == "application/epub+zip"
    body = await resp.read()
    assert body[:2] == b"PK" and len(body) == record["result"]["size"]

    ecg_record = await wait_finished(core, ecg["id"])
    assert ecg_record["result"] == {"leads": [{"name": "I", "zero_crossings": 4}, {"name": "II", "zero_crossings": 1}]}

    view = await finished(receptionist, imported["id"])
    assert view["counters"] == {"read": 4, "imported": 2, "rejected": 2}
    report = await receptionist.get(view["error_report_url"])
    assert report.status == 200
    assert [orjson.loads(line)["line"] for line in (await report.read()).splitlines()] == [4, 5]

    # Every artifact is in the bucket; neither host's disk holds one.
    store = open_store(s3_url)
    try:
        keys = sorted([info.key async for info in store.list_older(float("inf"))])
    finally:
        await store.close()
    assert record["result"]["artifact"] in keys and ecg_record["payload"]["signals"] in keys
    assert any(key.endswith("upload.csv") for key in keys) and any(key.endswith("errors.ndjson") for key in keys)
    assert files_under(host_a) == [] and files_under(host_b) == []


async def test_a_large_export_file_streams_from_s3_whole_and_by_range(s3_pipeline: Any, core: Any) -> None:
    """A book export's artifact replaced by a 12 MiB object: the download streams it, and a Range header
    gets that range (206)."""
    receptionist, _, _ = s3_pipeline
    export = await (await receptionist.post("/exports", json={"bookId": "big", "type": "pdf"})).json()
    record = await wait_finished(core, export["id"])
    data = os.urandom(12 * 1024 * 1024)
    await receptionist.app[ARTIFACTS].write(record["result"]["artifact"], data)
    resp = await receptionist.get(f"/jobs/{export['id']}/result")
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
    digest = hashlib.sha256()
    async for chunk in resp.content.iter_chunked(1024 * 1024):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    part = await receptionist.get(f"/jobs/{export['id']}/result", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert await part.read() == data[1000:2000]
    beyond = await receptionist.get(f"/jobs/{export['id']}/result", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416


async def exported(aiohttp_client: Any, core: Any, pipeline: Any, backend: str, tmp_path: Path, request: Any,
                   book_id: str) -> tuple[Any, dict[str, Any]]:
    """A receptionist and a handler on the ``backend`` artifact store, and an EPUB export submitted to them."""
    artifacts_url = request.getfixturevalue("s3_url") if backend == "s3" else str(tmp_path)
    _, start_handler = pipeline
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_url=artifacts_url,
        sweep_interval_s=0, time_scale=0)))
    await start_handler(artifacts_url=artifacts_url)
    export = await (await receptionist.post("/exports", json={"bookId": book_id, "type": "epub"})).json()
    return receptionist, export


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_result_whose_object_is_gone_is_404_missing_not_410(aiohttp_client: Any, core: Any, tmp_path: Path,
                                                                    pipeline: Any, backend: str,
                                                                    request: Any) -> None:
    receptionist, export = await exported(aiohttp_client, core, pipeline, backend, tmp_path, request, "gone")
    record = await wait_finished(core, export["id"])
    await receptionist.app[ARTIFACTS].delete([record["result"]["artifact"]])
    resp = await receptionist.get(f"/jobs/{export['id']}/result")
    assert resp.status == 404
    answer = await resp.json()
    assert "missing" in answer["error"] and "expired" not in answer["error"], answer
    assert answer["details"][0]["field"] == "job_id"


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_range_is_a_206_a_416_naming_range_or_of_another_unit_ignored(aiohttp_client: Any, core: Any,
                                                                                tmp_path: Path, pipeline: Any,
                                                                                backend: str, request: Any) -> None:
    """RFC 9110 §14: one byte range is a 206; one that cannot be satisfied (a last byte before the first, a
    suffix of 0 bytes, a start past the end, several ranges) is a 416 with ``Content-Range: bytes */<size>``
    and the JSON error naming ``Range``; a Range of a unit other than bytes is ignored (the whole file, 200).
    On the local store a small result is a row, a large one a file: both are checked."""
    receptionist, export = await exported(aiohttp_client, core, pipeline, backend, tmp_path, request, "ranged")
    key = (await wait_finished(core, export["id"]))["result"]["artifact"]
    url = f"/jobs/{export['id']}/result"
    store = receptionist.app[ARTIFACTS]
    small = await (await receptionist.get(url)).read()
    for data in (small, os.urandom(SMALL_BYTES + 1000)):
        if data is not small:
            await store.write(key, data)
        if backend == "local":
            assert (store.local_path(key) is None) == (data is small)  # a row, then a file
        size = len(data)
        for spec, part in (("bytes=2-5", (2, 6)), ("bytes=-3", (size - 3, size)),
                           (f"bytes={size - 2}-", (size - 2, size)),
                           ("BYTES=0-999999999", (0, size)), ("bytes=-999999999", (0, size)),
                           ("bytes=1-" + "9" * 5000, (1, size))):
            resp = await receptionist.get(url, headers={"Range": spec})
            assert resp.status == 206, (spec[:30], dict(resp.headers))
            assert resp.headers["Content-Range"] == f"bytes {part[0]}-{part[1] - 1}/{size}", spec[:30]
            assert await resp.read() == data[part[0]:part[1]], spec[:30]
        for spec in ("bytes=5-2", "bytes=-0", f"bytes={size}-", "bytes=0-1,3-4", "bytes=x-", "bytes=-",
                     "bytes=" + "9" * 5000 + "-"):
            resp = await receptionist.get(url, headers={"Range": spec})
            assert resp.status == 416, (spec[:20], size, dict(resp.headers))
            assert resp.headers["Content-Range"] == f"bytes */{size}" and resp.content_type == "application/json"
            answer = await resp.json()
            assert answer["error"] and [d["field"] for d in answer["details"]] == ["Range"], answer
            assert answer["details"][0]["message"], answer
        for spec in ("items=0-5", "0-5"):
            resp = await receptionist.get(url, headers={"Range": spec})
            assert resp.status == 200 and "Content-Range" not in resp.headers, (spec, dict(resp.headers))
            assert await resp.read() == data, spec


async def test_results_on_s3_expire_and_the_sweep_deletes_them(aiohttp_client: Any, core: Any, pipeline: Any,
                                                               s3_url: str) -> None:
    _, start_handler = pipeline
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_url=s3_url,
        sweep_interval_s=0, artifact_sweep_interval_s=0, artifact_ttl_s=1.0, time_scale=0)), headers=IMPORTER)
    await start_handler(artifacts_url=s3_url, queues=["export"])  # imports stay pending: nobody takes them
    export = await (await receptionist.post("/exports", json={"bookId": "old", "type": "epub"})).json()
    waiting = await submit(receptionist, "users", upload(USERS_CSV))
    record = await wait_finished(core, export["id"])
    store = receptionist.app[ARTIFACTS]
    assert await store.exists(record["result"]["artifact"])

    async def gone() -> bool:
        return (await receptionist.get(f"/jobs/{export['id']}/result")).status == 410

    await wait_until(gone, timeout_s=10, interval_s=0.1, what="the result to expire")
    sweeper = receptionist.app[ARTIFACT_SWEEPER]
    await wait_until(sweeper.sweep_once, timeout_s=10, interval_s=0.2, what="the sweep to delete the result")
    assert not await store.exists(record["result"]["artifact"])
    _, pending = await core.registry("GET", f"/jobs/{waiting['id']}")
    assert await store.exists(pending["payload"]["upload"])  # the input of a job still waiting stays


async def test_an_ecg_whose_signals_are_gone_fails_saying_so(aiohttp_client: Any, core: Any, tmp_path: Path,
                                                             s3_url: str) -> None:
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_url=s3_url,
        sweep_interval_s=0, time_scale=0)))
    ecg = await (await receptionist.post("/ecgs", json=ECG)).json()
    _, record = await core.registry("GET", f"/jobs/{ecg['id']}")
    await receptionist.app[ARTIFACTS].delete([record["payload"]["signals"]])
    await aiohttp_client(handler_app(HandlerSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_url=s3_url, time_scale=0.0,
        poll_wait_s=1.0, data_store_url=f"sqlite:///{tmp_path}/data.db")))

    async def failed() -> dict[str, Any] | None:
        _, current = await core.registry("GET", f"/jobs/{ecg['id']}")
        return current if current["state"] == "failed" else None

    current = await wait_until(failed, what="the ECG to fail")
    assert current["error"] == f"ArtifactMissing: artifact {record['payload']['signals']} is missing"
