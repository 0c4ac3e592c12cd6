"""The receptionist in front of a real registry and scheduler (memory stores) on loopback."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from receptionist.app import create_app
from receptionist.jobs import KEY_REUSED
from receptionist.settings import Settings

EXPORT = {"bookId": "book-1", "type": "epub"}
IMPORT = {"bookId": "book-2", "type": "evernote", "url": "https://example.com/notes.enex"}


@pytest.fixture
async def client(aiohttp_client: Any, core: Any, tmp_path: Any) -> Any:
    app = create_app(Settings(registry_url=core.registry_url, scheduler_url=core.scheduler_url,
                              artifacts_dir=str(tmp_path), max_json_bytes=4096))
    return await aiohttp_client(app)


async def registered(core: Any) -> int:
    _, counts = await core.registry("GET", "/counts")
    return sum(counts.values())


async def test_export_is_registered_and_queued(client: Any, core: Any) -> None:
    resp = await client.post("/exports", json=EXPORT)
    assert resp.status == 201
    job = await resp.json()
    assert job["state"] == "pending" and job["bookId"] == "book-1" and job["type"] == "epub"
    assert job["created_at"] == job["updated_at"] and job["resultUrl"] is None
    status, record = await core.registry("GET", f"/jobs/{job['id']}")
    assert status == 200 and record["kind"] == "export" and record["owner"] == "anonymous"
    assert record["request_id"] == resp.headers["X-Request-ID"]
    _, held = await core.scheduler("POST", "/queues/contains", json={"job_ids": [job["id"]]})
    assert held["held"] == [job["id"]]


async def test_import_keeps_its_url(client: Any) -> None:
    resp = await client.post("/imports", json=IMPORT)
    assert resp.status == 201
    assert (await resp.json())["url"] == IMPORT["url"]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/exports", {"bookId": "1", "type": "mobi"}, "type"),
        ("/exports", {"bookId": "", "type": "epub"}, "bookId"),
        ("/exports", {"bookId": 12, "type": "epub"}, "bookId"),
        # An id is written into the book's files: XML (an EPUB's) cannot carry a NUL or most controls.
        ("/exports", {"bookId": "b\u0000", "type": "epub"}, "bookId"),
        ("/exports", {"bookId": "line\nbreak", "type": "pdf"}, "bookId"),
        ("/imports", {"bookId": "\u007f1", "type": "word", "url": "https://x.org/a"}, "bookId"),
        ("/exports", {"bookId": "1"}, "type"),
        ("/exports", {"bookId": "1", "type": "epub", "owner": "mallory"}, "owner"),
        ("/exports", ["bookId", "type"], "body"),
        ("/imports", {"bookId": "1", "type": "word", "url": "file:///etc/passwd"}, "url"),
        ("/imports", {"bookId": "1", "type": "epub", "url": "https://x.org/a"}, "type"),
        ("/imports", {"bookId": "1", "type": "word", "url": "https://x.org/" + "a" * 3000}, "url"),
    ],
)
async def test_bad_payloads_are_400_with_details_and_register_nothing(client: Any, core: Any, route: str,
                                                                     body: Any, field: str) -> None:
    resp = await client.post(route, json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] and field in {detail["field"] for detail in answer["details"]}, answer
    assert all(detail["message"] for detail in answer["details"])
    assert await registered(core) == 0


async def test_post_jobs_takes_a_kind_and_its_payload(client: Any, core: Any) -> None:
    """``POST /jobs {kind, payload}``: a kind's job, validated by its own model, answered as ``GET /jobs/{id}``
    shows the job; ``Idempotency-Key`` as on every submission."""
    headers = {"Idempotency-Key": "generic-1"}
    resp = await client.post("/jobs", json={"kind": "export", "payload": EXPORT}, headers=headers)
    assert resp.status == 201
    job = await resp.json()
    assert (job["kind"], job["type"], job["payload"], job["state"]) == ("export", "epub", EXPORT, "pending")
    assert job == await (await client.get(f"/jobs/{job['id']}")).json()
    _, held = await core.scheduler("POST", "/queues/contains", json={"job_ids": [job["id"]]})
    assert held["held"] == [job["id"]]
    again = await client.post("/jobs", json={"kind": "export", "payload": EXPORT}, headers=headers)
    assert again.status == 200 and (await again.json())["id"] == job["id"]
    resp = await client.post("/jobs", json={"kind": "import", "payload": IMPORT})
    assert resp.status == 201 and (await resp.json())["type"] == "evernote"
    listed = await (await client.get("/jobs", params={"kind": "import"})).json()
    assert [item["kind"] for item in listed["items"]] == ["import"]


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"kind": "export", "payload": {"bookId": "1", "type": "mobi"}}, "payload.type", "'epub' or 'pdf'"),
    ({"kind": "export", "payload": {"bookId": "1"}}, "payload.type", "required"),
    ({"kind": "export", "payload": {"bookId": "1\ufffe", "type": "epub"}}, "payload.bookId", "found U+FFFE"),
    ({"kind": "export", "payload": {**EXPORT, "colour": "red"}}, "payload.colour", "unknown field"),
    ({"kind": "import", "payload": {**IMPORT, "url": "http://127.0.0.1/a"}}, "payload.url", "loopback address"),
    ({"kind": "laundry", "payload": {}}, "kind", "no kind 'laundry' is registered here"),
    ({"kind": "ecg", "payload": {}}, "kind", "submitted with POST /ecgs"),
    ({"kind": "data_import", "payload": {"url": "https://example.com/u.csv"}}, "kind", "with POST /v1/imports"),
    ({"kind": "task", "payload": {"description": "x", "duration_s": -1}}, "payload.duration_s", "greater than"),
    ({"kind": "Export!", "payload": EXPORT}, "kind", "pattern"),
    ({"kind": 7, "payload": EXPORT}, "kind", "string"),
    ({"payload": EXPORT}, "kind", "required"),
    ({"kind": "export"}, "payload", "required"),
    ({"kind": "export", "payload": EXPORT, "owner": "mallory"}, "owner", "unknown field"),
    (["export"], "body", ""),
])
async def test_post_jobs_refuses_bad_submissions_naming_the_field(client: Any, core: Any, body: Any, field: str,
                                                                  message: str) -> None:
    resp = await client.post("/jobs", json=body)
    assert resp.status == 400
    details = {detail["field"]: detail["message"] for detail in (await resp.json())["details"]}
    assert field in details and message in details[field], details
    assert await registered(core) == 0


async def test_post_jobs_takes_the_kinds_with_routes_of_their_own_too(aiohttp_client: Any, core: Any,
                                                                     tmp_path: Any) -> None:
    """A built-in kind with a route of its own is registered by ``POST /jobs`` as by that route (a task gets
    the receptionist's default duration, an export its resource as its type and the formula escaping) and
    answered with the generic job view; its own GET shows it too."""
    client = await aiohttp_client(create_app(Settings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        task_duration_s=0.25, task_fail_probability=0.0, csv_escape_formulas=False, kind_permissions={})))
    resp = await client.post("/jobs", json={"kind": "task", "payload": {"description": "by /jobs"}, "priority": 3})
    assert resp.status == 201
    job = await resp.json()
    assert (job["kind"], job["type"], job["priority"]) == ("task", "task", 3)
    assert job["payload"] == {"description": "by /jobs", "duration_s": 0.25, "fail_probability": 0.0}
    assert job == await (await client.get(f"/jobs/{job['id']}")).json()
    task = await (await client.get(f"/tasks/{job['id']}")).json()
    assert (task["description"], task["status"]) == ("by /jobs", "PENDING")
    own = await (await client.post("/tasks", json={"description": "by /tasks"})).json()
    _, record = await core.registry("GET", f"/jobs/{own['id']}")
    assert record["payload"] == {"description": "by /tasks", "duration_s": 0.25, "fail_probability": 0.0}

    resp = await client.post("/jobs", json={"kind": "data_export", "payload": {"resource": "users", "format": "csv"}})
    assert resp.status == 201
    job = await resp.json()
    assert (job["kind"], job["type"], job["payload"]["csv_escape_formulas"]) == ("data_export", "users", False)
    export = await (await client.get(f"/v1/exports/{job['id']}")).json()
    assert (export["resource"], export["format"], export["state"]) == ("users", "csv", "pending")


async def test_post_jobs_asks_for_the_kinds_permission(client: Any, core: Any) -> None:
    resp = await client.post("/jobs", json={"kind": "data_export", "payload": {"resource": "users", "format": "csv"}})
    assert resp.status == 401 and "exporter" in (await resp.json())["error"], await resp.json()
    assert await registered(core) == 0


async def test_an_unknown_kind_is_no_filter(client: Any) -> None:
    resp = await client.get("/jobs", params={"kind": "laundry"})
    assert resp.status == 400 and [d["field"] for d in (await resp.json())["details"]] == ["kind"]


async def test_unreadable_bodies(client: Any, core: Any) -> None:
    resp = await client.post("/exports", data=b'{"bookId": ', headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"] == "malformed JSON"
    resp = await client.post("/exports", data=b"", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/exports", data=b"bookId=1&type=epub",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    resp = await client.post("/exports", json={"bookId": "x" * 5000, "type": "epub"})
    assert resp.status == 413 and (await resp.json())["details"][0]["field"] == "body"
    assert await registered(core) == 0


async def test_lists_are_grouped_by_state_and_paged(client: Any) -> None:
    ids = []
    for n in range(5):
        resp = await client.post("/exports", json={"bookId": f"b{n}", "type": "pdf"})
        ids.append((await resp.json())["id"])
    await client.post("/imports", json=IMPORT)
    resp = await client.get("/exports")
    groups = await resp.json()
    assert set(groups) == {"pending", "processing", "finished", "failed", "cancelled", "next_cursor"}
    assert groups["next_cursor"] is None and "Link" not in resp.headers
    assert [item["id"] for item in groups["pending"]] == ids[::-1]  # newest first, imports not mixed in
    item = groups["pending"][0]
    assert set(item) >= {"id", "bookId", "type", "state", "created_at", "updated_at", "resultUrl"}

    resp = await client.get("/exports", params={"limit": "2"})
    seen = [i["id"] for i in (await resp.json())["pending"]]
    while "Link" in resp.headers:
        next_url = resp.headers["Link"].split(">")[0].lstrip("<")
        resp = await client.get(next_url)
        seen += [i["id"] for i in (await resp.json())["pending"]]
    assert seen == ids[::-1]

    resp = await client.get("/exports", params={"limit": "0"})
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "limit"


async def test_jobs_are_seen_only_by_their_owner(client: Any) -> None:
    resp = await client.post("/exports", json=EXPORT, headers={"X-Conveyor-User": "alice"})
    job_id = (await resp.json())["id"]
    assert (await client.get(f"/jobs/{job_id}", headers={"X-Conveyor-User": "alice"})).status == 200
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result"):
        resp = await client.get(path, headers={"X-Conveyor-User": "bob"})
        assert resp.status == 404 and (await resp.json())["error"]
    resp = await client.get("/exports", headers={"X-Conveyor-User": "bob"})
    assert not any((await resp.json()).values())


async def test_unknown_job_and_missing_result(client: Any) -> None:
    resp = await client.get(f"/jobs/{uuid.uuid4()}")
    assert resp.status == 404 and (await resp.json())["error"].startswith("no job")
    assert (await client.get("/jobs/12345")).status == 404
    job_id = (await (await client.post("/exports", json=EXPORT)).json())["id"]
    resp = await client.get(f"/jobs/{job_id}/result")
    assert resp.status == 404 and "no result yet" in (await resp.json())["error"]


async def test_idempotency_key(client: Any, core: Any) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/exports", json=EXPORT, headers=headers)
    again = await client.post("/exports", json=EXPORT, headers=headers)
    assert first.status == 201 and again.status == 200
    assert (await first.json())["id"] == (await again.json())["id"]
    clash = await client.post("/exports", json={**EXPORT, "type": "pdf"}, headers=headers)
    assert clash.status == 409 and (await clash.json())["error"]
    # The client sent a header: the answer names it, not the registry's field.
    assert (await clash.json())["details"] == KEY_REUSED
    assert await registered(core) == 1


async def test_unknown_routes_and_methods_answer_json(client: Any) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]
    resp = await client.put("/exports", json=EXPORT)
    assert resp.status == 405 and (await resp.json())["error"]


async def test_without_a_sweeper_a_down_scheduler_means_503_and_no_pending_job(
        aiohttp_client: Any, core: Any, tmp_path: Any, unused_tcp_port: int) -> None:
    app = create_app(Settings(registry_url=core.registry_url, scheduler_url=f"http://127.0.0.1:{unused_tcp_port}",
                              artifacts_dir=str(tmp_path), http_timeout_s=1, sweep_interval_s=0))
    client = await aiohttp_client(app)
    resp = await client.post("/exports", json=EXPORT)
    assert resp.status == 503 and "Retry-After" in resp.headers
    _, counts = await core.registry("GET", "/counts")
    assert counts["pending"] == 0 and counts["failed"] == 1
    health = await client.get("/health")
    assert health.status == 503


@pytest.mark.parametrize("key", [b"\xe9", b"order-\xff42", b"tab\tbed"])
async def test_an_idempotency_key_that_is_not_text_is_a_400_naming_it(client: Any, core: Any, key: bytes) -> None:
    """A key of bytes that are not UTF-8 (aiohttp hands them over as lone surrogates, which the registry
    cannot store: it was a 500) or with a control character is refused by name; a key in any language is
    taken."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    body = b'{"description": "keyed"}'
    writer.write(b"POST /tasks HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 b"X-Conveyor-User: ada\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s" % (key, len(body), body))
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert [d["field"] for d in orjson.loads(payload)["details"]] == ["Idempotency-Key"], payload
    assert await registered(core) == 0
    resp = await client.post("/tasks", json={"description": "keyed"}, headers={"Idempotency-Key": "заказ-42 ✓"})
    assert resp.status == 201


async def test_a_key_in_the_schedules_namespace_is_a_400(client: Any, core: Any) -> None:
    """Schedules fire their jobs under ``schedule:<id>:<due time>``: a client's key there could take a due
    time's key and keep it from firing, so it is refused, as the gateway refuses its own ``gateway:``."""
    resp = await client.post("/tasks", json={"description": "x"},
                             headers={"Idempotency-Key": "schedule:0f8fad5b-d9cb-469f-a165-70867728950e:2030"})
    assert resp.status == 400 and [d["field"] for d in (await resp.json())["details"]] == ["Idempotency-Key"]
    assert await registered(core) == 0


async def test_two_idempotency_keys_are_a_400(client: Any, core: Any) -> None:
    """Two keys on one submission: which one counts is not for the server to guess (the first was taken)."""
    headers = CIMultiDict([("Idempotency-Key", "first"), ("Idempotency-Key", "second")])
    resp = await client.post("/tasks", json={"description": "x"}, headers=headers)
    assert resp.status == 400 and (await resp.json())["details"] == [
        {"field": "Idempotency-Key", "message": "given more than once"}]
    assert await registered(core) == 0
