"""The live stack (``conveyor up``, real processes) with its artifacts on S3 (a real moto server process),
chosen the way an operator does, by ``RECEPTIONIST_ARTIFACTS_URL`` and ``HANDLER_ARTIFACTS_URL``: through the
gateway a book export is downloaded (whole, and a range of it), an ECG analysed, a CSV upload imported, a data export downloaded; the
stack's data directory holds no artifact."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.artifacts import open_store
from tests.e2e.test_kinds_e2e import ADMIN_PASSWORD, USERS_CSV, login, until_state


async def test_every_artifact_on_s3_through_the_gateway(start_stack: Any, s3_url: str) -> None:
    stack = await start_stack("--handlers", "2", "--time-scale", "0", "--rate-limit", "0", env={
        "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD, "RECEPTIONIST_ARTIFACTS_URL": s3_url,
        "HANDLER_ARTIFACTS_URL": s3_url})
    admin = await login(stack, "admin", ADMIN_PASSWORD)
    status, body, _ = await stack.request("POST", "/users", headers=admin, json={
        "username": "alice", "password": "alice password", "roles": ["user"], "permissions": ["exporter", "importer"]})
    assert status == 201, body
    alice = await login(stack, "alice", "alice password")

    status, book, _ = await stack.request("POST", "/exports", headers=alice, json={"bookId": "s3", "type": "pdf"})
    assert status == 201, book
    status, ecg, _ = await stack.request("POST", "/ecgs", headers=alice, json={
        "id": "s3-ecg", "date": "2026-11-22T10:00:00Z", "leads": [{"name": "I", "signal": [1, -1, 0, 2, -3]}]})
    assert status == 201, ecg
    form = aiohttp.FormData()
    form.add_field("file", USERS_CSV.encode(), filename="users.csv", content_type="text/csv")
    status, imported, _ = await stack.request("POST", "/v1/imports", params={"resource": "users"},
                                              headers=alice, data=form)
    assert status == 201, imported

    done = await until_state(stack, f"/jobs/{book['id']}", alice, "finished")
    status, pdf, headers = await stack.request("GET", f"/jobs/{book['id']}/result", headers=alice)
    assert status == 200 and pdf.startswith(b"%PDF") and headers["Content-Type"] == "application/pdf", done
    status, head, headers = await stack.request("GET", f"/jobs/{book['id']}/result", headers={
        **alice, "Range": "bytes=0-3"})
    assert (status, head, headers["Content-Range"]) == (206, b"%PDF", f"bytes 0-3/{len(pdf)}")
    analysed = await until_state(stack, f"/ecgs/{ecg['id']}", alice, "finished")
    assert analysed["result"] == {"leads": [{"name": "I", "zero_crossings": 3}]}
    report = await until_state(stack, f"/v1/imports/{imported['id']}", alice, "finished")
    assert report["counters"] == {"read": 3, "imported": 2, "rejected": 1}
    status, errors, _ = await stack.request("GET", report["error_report_url"], headers=alice)
    assert status == 200 and b'"line":3' in errors

    status, export, _ = await stack.request("POST", "/v1/exports", headers=alice, json={
        "resource": "users", "format": "csv", "fields": ["id", "email"]})
    assert status == 201, export
    finished = await until_state(stack, f"/v1/exports/{export['id']}", alice, "finished")
    status, data, _ = await stack.request("GET", finished["download_url"], headers=alice)
    assert status == 200 and data.decode().splitlines() == ["id,email", "u1,ada@example.com", "u3,cy@example.com"]

    store = open_store(s3_url)
    try:
        keys = [info.key async for info in store.list_older(float("inf"))]
    finally:
        await store.close()
    assert {key.split("/", 1)[0] for key in keys} == {"export", "ecg", "data_import", "data_export"}
    local = stack.data_dir / "artifacts"
    assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()]
