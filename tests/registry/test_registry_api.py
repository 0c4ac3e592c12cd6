"""The registry's HTTP API, served for real on loopback (``aiohttp_client``) over a memory or SQLite store."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from loguru import logger

from registry.app import STORE, create_app
from registry.settings import Settings

ClientMaker = Callable[..., Awaitable[TestClient]]

BOOK = {"kind": "export", "type": "epub", "owner": "alice", "payload": {"bookId": "b1"}}


@pytest.fixture
def make_client(aiohttp_client: Any) -> ClientMaker:
    async def make(**settings: Any) -> TestClient:
        return await aiohttp_client(create_app(Settings(**{"store_url": "memory://", **settings})))

    return make


@pytest.fixture
async def client(make_client: ClientMaker) -> TestClient:
    return await make_client()


async def post_job(client: TestClient, **fields: Any) -> dict[str, Any]:
    resp = await client.post("/jobs", json={**BOOK, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def patch(client: TestClient, job_id: str, expect: int = 200, **update: Any) -> dict[str, Any]:
    resp = await client.patch(f"/jobs/{job_id}", json=update)
    assert resp.status == expect, await resp.text()
    return await resp.json()


def fields_of(body: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in body["details"]}


async def test_create_and_get(client: TestClient) -> None:
    resp = await client.post("/jobs", json={**BOOK, "request_id": "r-1", "max_attempts": 3})
    assert resp.status == 201
    assert resp.content_type == "application/json"
    job = await resp.json()
    assert job["state"] == "pending" and job["attempt"] == 0 and job["max_attempts"] == 3
    assert job["payload"] == {"bookId": "b1"} and job["request_id"] == "r-1"
    uuid.UUID(job["id"])

    resp = await client.get(f"/jobs/{job['id']}")
    assert resp.status == 200
    assert await resp.json() == job


async def test_post_is_idempotent(client: TestClient) -> None:
    job = await post_job(client, idempotency_key="order-7")

    # Same key, same request, fresh id (a retried submit): the registered job, with 200.
    resp = await client.post("/jobs", json={**BOOK, "idempotency_key": "order-7"})
    assert resp.status == 200
    assert await resp.json() == job
    # Same id again: the same.
    resp = await client.post("/jobs", json={**BOOK, "id": job["id"], "idempotency_key": "order-7"})
    assert resp.status == 200 and (await resp.json())["id"] == job["id"]

    resp = await client.post("/jobs", json={**BOOK, "idempotency_key": "order-7", "payload": {"bookId": "b2"}})
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "idempotency key reused with a different request"
    assert fields_of(body) == {"idempotency_key"}

    resp = await client.post("/jobs", json={**BOOK, "id": job["id"], "type": "pdf"})
    assert resp.status == 409
    assert (await resp.json())["error"] == "job id reused with a different request"

    # Another owner's key space is its own.
    other = await post_job(client, owner="bob", idempotency_key="order-7")
    assert other["id"] != job["id"]


async def test_create_refuses_bad_bodies(client: TestClient) -> None:
    resp = await client.post("/jobs", json={**BOOK, "colour": "red"})
    assert resp.status == 400
    body = await resp.json()
    assert body["details"] == [{"field": "colour", "message": "unknown field"}]

    resp = await client.post("/jobs", json={"type": "epub", "owner": "alice", "kind": "Laundry day"})
    assert resp.status == 400
    assert fields_of(await resp.json()) == {"kind"}

    resp = await client.post("/jobs", json={"kind": "export"})
    assert resp.status == 400
    assert fields_of(await resp.json()) == {"type", "owner"}

    resp = await client.post("/jobs", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "malformed JSON" and fields_of(body) == {"body"}

    resp = await client.post("/jobs", data=b"kind=export", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"] == "expected a JSON body"

    resp = await client.post("/jobs", json=[BOOK])
    assert resp.status == 400


async def test_unknown_and_malformed_ids_are_404(client: TestClient) -> None:
    for path in (f"/jobs/{uuid.uuid4()}", "/jobs/not-a-uuid"):
        resp = await client.get(path)
        assert resp.status == 404
        body = await resp.json()
        assert "not found" in body["error"] and fields_of(body) == {"job_id"}
    resp = await client.patch(f"/jobs/{uuid.uuid4()}", json={"attempt": 1, "state": "processing"})
    assert resp.status == 404
    resp = await client.post(f"/jobs/{uuid.uuid4()}/cancel")
    assert resp.status == 404
    resp = await client.get(f"/jobs/{uuid.uuid4()}/events")
    assert resp.status == 404
    resp = await client.get("/jobs/nope/events")
    assert resp.status == 404


async def test_update_moves_a_job_through_its_states(client: TestClient) -> None:
    job = await post_job(client)
    running = await patch(client, job["id"], attempt=1, state="processing")
    assert running["state"] == "processing" and running["started_at"] is not None
    progressed = await patch(client, job["id"], attempt=1, progress=0.5)
    assert progressed["progress"] == 0.5
    done = await patch(client, job["id"], attempt=1, state="finished", result={"pages": 3}, result_url="/r/1")
    assert done["state"] == "finished" and done["result"] == {"pages": 3} and done["progress"] == 1.0
    # A report repeated after a lost answer: accepted, nothing changes.
    replay = await patch(client, job["id"], attempt=1, state="finished", result={"pages": 3})
    assert replay == done
    assert await (await client.get(f"/jobs/{job['id']}")).json() == done


async def test_refused_update_answers_409_with_the_current_job(client: TestClient) -> None:
    job = await post_job(client)
    body = await patch(client, job["id"], expect=409, attempt=0, state="finished")
    assert "cannot move a pending job to finished" in body["error"] and fields_of(body) == {"state"}
    assert body["current"]["id"] == job["id"] and body["current"]["state"] == "pending"

    await patch(client, job["id"], attempt=2, state="processing")
    stale = await patch(client, job["id"], expect=409, attempt=1, state="finished")
    assert "stale attempt" in stale["error"] and fields_of(stale) == {"attempt"}
    assert stale["current"]["attempt"] == 2 and stale["current"]["state"] == "processing"


async def test_update_refuses_bad_bodies(client: TestClient) -> None:
    job = await post_job(client)
    body = await patch(client, job["id"], expect=400, attempt=1, progress=1.5)
    assert fields_of(body) == {"progress"}
    body = await patch(client, job["id"], expect=400, attempt=1, owner="mallory")
    assert body["details"] == [{"field": "owner", "message": "unknown field"}]
    body = await patch(client, job["id"], expect=400, state="processing")
    assert fields_of(body) == {"attempt"}
    resp = await client.patch(f"/jobs/{job['id']}", data=b"", headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def test_cancel(client: TestClient) -> None:
    pending = await post_job(client)
    resp = await client.post(f"/jobs/{pending['id']}/cancel")
    assert resp.status == 200
    assert (await resp.json())["state"] == "cancelled"
    resp = await client.post(f"/jobs/{pending['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"

    running = await post_job(client)
    await patch(client, running["id"], attempt=1, state="processing")
    resp = await client.post(f"/jobs/{running['id']}/cancel")
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "processing" and body["cancel_requested"] is True

    done = await post_job(client)
    await patch(client, done["id"], attempt=1, state="processing")
    await patch(client, done["id"], attempt=1, state="finished")
    resp = await client.post(f"/jobs/{done['id']}/cancel")
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "cannot cancel a finished job" and body["current"]["state"] == "finished"


async def test_list_filters_and_pages(client: TestClient) -> None:
    made = [await post_job(client, owner="alice" if i % 2 else "bob") for i in range(7)]
    await post_job(client, kind="import", type="word", owner="carol")
    await patch(client, made[0]["id"], attempt=1, state="processing")

    resp = await client.get("/jobs", params={"kind": "export", "limit": "3"})
    assert resp.status == 200
    seen: list[str] = []
    page = await resp.json()
    while True:
        assert set(page) == {"items", "next_cursor"}
        seen.extend(job["id"] for job in page["items"])
        if page["next_cursor"] is None:
            break
        page = await (await client.get("/jobs", params={"kind": "export", "limit": "3",
                                                        "cursor": page["next_cursor"]})).json()
    assert sorted(seen) == sorted(job["id"] for job in made) and len(seen) == len(set(seen))

    page = await (await client.get("/jobs", params={"state": "processing"})).json()
    assert [job["id"] for job in page["items"]] == [made[0]["id"]]
    page = await (await client.get("/jobs", params={"owner": "carol"})).json()
    assert [job["kind"] for job in page["items"]] == ["import"]
    # Empty filters mean "any".
    page = await (await client.get("/jobs?kind=&state=&owner=")).json()
    assert len(page["items"]) == 8


@pytest.mark.parametrize(("query", "field"), [
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"kind": "Laundry day"}, "kind"),
    ({"state": "sleeping"}, "state"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"updated_before": "yesterday"}, "updated_before"),
    ({"updated_before": "2030-01-01T00:00:00"}, "updated_before"),  # no offset: ambiguous
    ({"cancel_requested": "maybe"}, "cancel_requested"),
    ({"created_after": "2030-01-01T00:00:00"}, "created_after"),
    ({"created_after": "0001-01-01T00:00:00+05:00"}, "created_after"),
    ({"colour": "red"}, "colour"),
])
async def test_list_refuses_bad_queries(client: TestClient, query: dict[str, str], field: str) -> None:
    resp = await client.get("/jobs", params=query)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid request" and fields_of(body) == {field}


async def test_events(client: TestClient) -> None:
    a = await post_job(client)
    b = await post_job(client)
    await patch(client, a["id"], attempt=1, state="processing")
    await patch(client, a["id"], attempt=1, state="finished")

    resp = await client.get(f"/jobs/{a['id']}/events")
    assert resp.status == 200
    events = (await resp.json())["items"]
    assert [(e["type"], e["state"], e["previous_state"]) for e in events] == [
        ("created", "pending", None), ("updated", "processing", "pending"), ("updated", "finished", "processing")]
    assert events[-1]["job"]["state"] == "finished" and events[-1]["job_id"] == a["id"]

    after = await (await client.get(f"/jobs/{a['id']}/events", params={"after": str(events[0]["seq"])})).json()
    assert after["items"] == events[1:]

    everything = (await (await client.get("/events")).json())["items"]
    assert [e["job_id"] for e in everything] == [a["id"], b["id"], a["id"], a["id"]]
    page = (await (await client.get("/events", params={"after": str(everything[1]["seq"]), "limit": "1"})).json())
    assert page["items"] == [everything[2]]

    resp = await client.get("/events", params={"after": "-1"})
    assert resp.status == 400 and fields_of(await resp.json()) == {"after"}
    resp = await client.get("/events", params={"since": "0"})
    assert resp.status == 400 and fields_of(await resp.json()) == {"since"}


async def test_counts(client: TestClient) -> None:
    await post_job(client)
    running = await post_job(client, kind="import", type="word")
    await patch(client, running["id"], attempt=1, state="processing")

    resp = await client.get("/counts")
    assert resp.status == 200
    assert await resp.json() == {"pending": 1, "processing": 1, "finished": 0, "failed": 0, "cancelled": 0}
    by_kind = await (await client.get("/counts", params={"kind": "import"})).json()
    assert by_kind == {"pending": 0, "processing": 1, "finished": 0, "failed": 0, "cancelled": 0}
    resp = await client.get("/counts", params={"kind": "Laundry day"})
    assert resp.status == 400 and fields_of(await resp.json()) == {"kind"}


async def test_a_kind_is_any_well_formed_name(client: TestClient) -> None:
    """The registry keeps jobs of any kind: which kinds exist is the receptionists' and handlers' to know
    (a plugin's kinds among them), not the system of record's."""
    job = await post_job(client, kind="acme.resize", type="acme.resize", payload={"image": "a.png"})
    assert job["kind"] == "acme.resize"
    page = await (await client.get("/jobs", params={"kind": "acme.resize"})).json()
    assert [item["id"] for item in page["items"]] == [job["id"]]
    counts = await (await client.get("/counts", params={"kind": "acme.resize"})).json()
    assert counts["pending"] == 1


async def test_health_and_status(client: TestClient) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "service": "registry", "checks": {"store": "ok"}}

    job = await post_job(client)
    await client.post("/jobs", json={**BOOK, "id": job["id"]})
    await patch(client, job["id"], attempt=1, state="processing")
    await patch(client, job["id"], attempt=1, state="processing")
    await patch(client, job["id"], expect=409, attempt=0, state="finished")

    status = await (await client.get("/status")).json()
    assert status["service"] == "registry"
    assert status["jobs"] == {"pending": 0, "processing": 1, "finished": 0, "failed": 0, "cancelled": 0}
    assert status["requests"] == {"created": 1, "existing": 1, "updated": 1, "unchanged": 1, "refused": 1}


async def test_service_token_is_required_when_set(make_client: ClientMaker) -> None:
    client = await make_client(service_token="s3cret")
    assert (await client.get("/health")).status == 200
    resp = await client.post("/jobs", json=BOOK)
    assert resp.status == 401
    resp = await client.post("/jobs", json=BOOK, headers={"X-Service-Token": "s3cret"})
    assert resp.status == 201


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(sink)


async def test_logs_one_debug_line_per_creation_and_state_change(client: TestClient,
                                                           captured_logs: list[dict[str, Any]]) -> None:
    job = await post_job(client)
    await patch(client, job["id"], attempt=1, state="processing")
    await patch(client, job["id"], attempt=1, progress=0.3)  # a progress report is not a state change
    await patch(client, job["id"], attempt=1, state="finished")
    lines = [r for r in captured_logs if r["extra"].get("job_id") == job["id"]]
    assert [r["level"].name for r in lines] == ["DEBUG"] * 3  # the actors log these at INFO
    assert "registered" in lines[0]["message"]
    assert "processing" in lines[1]["message"]
    assert "finished" in lines[2]["message"] and "after" in lines[2]["message"]


async def test_sqlite_store_keeps_jobs_across_restarts(make_client: ClientMaker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    first = await make_client(store_url=url)
    job = await post_job(first)
    await patch(first, job["id"], attempt=1, state="processing")
    await first.close()

    second = await make_client(store_url=url)
    resp = await second.get(f"/jobs/{job['id']}")
    assert resp.status == 200
    assert (await resp.json())["state"] == "processing"


async def test_health_is_503_when_the_store_is_gone(make_client: ClientMaker, tmp_path: Path) -> None:
    client = await make_client(store_url=f"sqlite:///{tmp_path}/registry.db")
    await client.app[STORE].close()
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable" and "store" in body["error"]


async def test_batch_updates_answer_each_like_its_single_patch(client: TestClient) -> None:
    running = await post_job(client)
    await patch(client, running["id"], attempt=1, state="processing")
    pending = await post_job(client)
    unknown = str(uuid.uuid4())
    resp = await client.post("/jobs/updates", json={"updates": [
        {"id": running["id"], "attempt": 1, "state": "finished", "result": {"n": 1}},
        {"id": pending["id"], "attempt": 1, "state": "finished"},
        {"id": unknown, "attempt": 1, "state": "processing"},
    ]})
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [(r["id"], r["status"]) for r in results] == [(running["id"], 200), (pending["id"], 409), (unknown, 404)]
    assert results[0]["job"]["state"] == "finished" and results[0]["job"]["result"] == {"n": 1}
    assert results[1]["current"]["state"] == "pending" and results[1]["error"]
    assert (await (await client.get(f"/jobs/{pending['id']}")).json())["state"] == "pending"


async def test_brief_batch_answers_hold_state_and_attempt_only(client: TestClient) -> None:
    running = await post_job(client)
    await patch(client, running["id"], attempt=1, state="processing")
    pending = await post_job(client)
    resp = await client.post("/jobs/updates", json={"answer": "brief", "updates": [
        {"id": running["id"], "attempt": 1, "state": "finished", "result": {"n": 1}},
        {"id": pending["id"], "attempt": 1, "state": "finished"},
    ]})
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert results[0] == {"id": running["id"], "status": 200, "state": "finished", "attempt": 1}
    assert results[1]["status"] == 409 and results[1]["current"]["state"] == "pending"  # a refusal says why, whole
    shown = await (await client.get(f"/jobs/{running['id']}")).json()
    assert shown["state"] == "finished" and shown["result"] == {"n": 1}


@pytest.mark.parametrize("body", [{"updates": []}, {"updates": [{"attempt": 1}]}, {"updates": [{"id": "x"}]},
                                  {"updates": [{"id": str(uuid.uuid4()), "attempt": 1, "colour": 1}]}, {},
                                  {"updates": [{"id": str(uuid.uuid4()), "attempt": 1}], "answer": "short"}])
async def test_batch_updates_refuse_bad_bodies(client: TestClient, body: dict[str, Any]) -> None:
    resp = await client.post("/jobs/updates", json=body)
    assert resp.status == 400
    assert (await resp.json())["details"]


async def fail(client: TestClient, job_id: str, attempt: int = 1) -> dict[str, Any]:
    await patch(client, job_id, attempt=attempt, state="processing")
    return await patch(client, job_id, attempt=attempt, state="failed", error=f"boom {attempt}")


async def test_redrive_puts_a_failed_job_back_to_pending(client: TestClient) -> None:
    job = await post_job(client, max_attempts=2)
    failed = await fail(client, job["id"])

    resp = await client.post(f"/jobs/{job['id']}/redrive", json={"extra_attempts": 2})
    assert resp.status == 200
    redriven = await resp.json()
    assert redriven["state"] == "pending" and redriven["max_attempts"] == 4 and redriven["attempt"] == 1
    assert redriven["error"] is None and redriven["finished_at"] is None
    assert redriven["errors"] == failed["errors"]
    assert await (await client.get(f"/jobs/{job['id']}")).json() == redriven
    events = (await (await client.get(f"/jobs/{job['id']}/events")).json())["items"]
    assert [(e["state"], e["previous_state"]) for e in events][-1] == ("pending", "failed")

    # Repeated while it waits: 200 and nothing changes.
    resp = await client.post(f"/jobs/{job['id']}/redrive", json={"extra_attempts": 2})
    assert resp.status == 200 and await resp.json() == redriven

    # The next attempt runs above the old one.
    await fail(client, job["id"], attempt=2)
    # No body: the default of 3 more attempts.
    resp = await client.post(f"/jobs/{job['id']}/redrive")
    assert resp.status == 200
    body = await resp.json()
    assert (body["state"], body["attempt"], body["max_attempts"]) == ("pending", 2, 7)
    assert [e["attempt"] for e in body["errors"]] == [1, 2]
    resp = await client.post(f"/jobs/{job['id']}/redrive", json={})
    assert resp.status == 200 and (await resp.json())["max_attempts"] == 7

    status = await (await client.get("/status")).json()
    # Four reports and two redrives changed the job; two redrives of a pending job did not.
    assert status["requests"] == {"created": 1, "existing": 0, "updated": 6, "unchanged": 2, "refused": 0}


async def test_redrive_refuses_jobs_that_did_not_fail(client: TestClient) -> None:
    running = await post_job(client)
    await patch(client, running["id"], attempt=1, state="processing")
    finished = await post_job(client)
    await patch(client, finished["id"], attempt=1, state="processing")
    await patch(client, finished["id"], attempt=1, state="finished")
    cancelled = await post_job(client)
    await client.post(f"/jobs/{cancelled['id']}/cancel")
    for job, state in ((running, "processing"), (finished, "finished"), (cancelled, "cancelled")):
        resp = await client.post(f"/jobs/{job['id']}/redrive", json={"extra_attempts": 1})
        assert resp.status == 409
        body = await resp.json()
        assert body["error"] == f"cannot redrive a {state} job: only a failed one"
        assert fields_of(body) == {"state"}
        assert body["current"]["id"] == job["id"] and body["current"]["state"] == state
        assert (await (await client.get(f"/jobs/{job['id']}")).json())["state"] == state

    for path in (f"/jobs/{uuid.uuid4()}/redrive", "/jobs/not-a-uuid/redrive"):
        resp = await client.post(path, json={"extra_attempts": 1})
        assert resp.status == 404 and fields_of(await resp.json()) == {"job_id"}


@pytest.mark.parametrize(("body", "field"), [
    ({"extra_attempts": 0}, "extra_attempts"),
    ({"extra_attempts": 101}, "extra_attempts"),
    ({"extra_attempts": "lots"}, "extra_attempts"),
    ({"extra_attempts": 1, "reason": "x"}, "reason"),
])
async def test_redrive_refuses_bad_bodies(client: TestClient, body: dict[str, Any], field: str) -> None:
    job = await post_job(client)
    failed = await fail(client, job["id"])
    resp = await client.post(f"/jobs/{job['id']}/redrive", json=body)
    assert resp.status == 400 and fields_of(await resp.json()) == {field}
    resp = await client.post(f"/jobs/{job['id']}/redrive", data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await (await client.get(f"/jobs/{job['id']}")).json() == failed


async def test_list_sweep_filters(client: TestClient) -> None:
    older = await post_job(client)
    newer = await post_job(client)
    flagged = await post_job(client)
    await patch(client, flagged["id"], attempt=1, state="processing")
    flagged = await (await client.post(f"/jobs/{flagged['id']}/cancel")).json()
    assert flagged["cancel_requested"] is True

    async def ids(**query: str) -> list[str]:
        resp = await client.get("/jobs", params=query)
        assert resp.status == 200, await resp.text()
        return [job["id"] for job in (await resp.json())["items"]]

    # updated_before is strict; offsets and the Z suffix name moments, whatever the zone.
    cut = datetime.fromisoformat(newer["updated_at"])
    assert await ids(state="pending", updated_before=cut.isoformat()) == [older["id"]]
    just_after = cut + timedelta(microseconds=1)
    assert await ids(state="pending", updated_before=just_after.isoformat()) == [newer["id"], older["id"]]
    as_z = just_after.isoformat().replace("+00:00", "Z")
    assert await ids(state="pending", updated_before=as_z) == [newer["id"], older["id"]]
    elsewhere = just_after.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert await ids(state="pending", updated_before=elsewhere) == [newer["id"], older["id"]]

    assert await ids(cancel_requested="true") == [flagged["id"]]
    assert await ids(cancel_requested="false") == [newer["id"], older["id"]]
    assert await ids(cancel_requested="true", state="pending") == []
    assert await ids(cancel_requested="", updated_before="") == [flagged["id"], newer["id"], older["id"]]


async def test_batch_creation_answers_each_like_its_single_post(client: TestClient) -> None:
    first = await post_job(client, idempotency_key="k")
    new_id = str(uuid.uuid4())
    resp = await client.post("/jobs/batch", json={"jobs": [
        {**BOOK, "id": new_id},
        {**BOOK, "idempotency_key": "k"},  # the same request again: the first job, 200
        {**BOOK, "idempotency_key": "k", "payload": {"bookId": "other"}},  # the key taken by another: 409
    ]})
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [r["status"] for r in results] == [201, 200, 409]
    assert results[0]["job"]["id"] == new_id and results[1]["job"]["id"] == first["id"]
    assert results[2]["details"][0]["field"] == "idempotency_key"
    assert (await client.post("/jobs/batch", json={"jobs": []})).status == 400
