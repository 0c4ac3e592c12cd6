"""Priorities and delays on every job-submitting route (``POST /jobs`` too, beside ``kind`` and ``payload``):
a real receptionist in front of a real registry and scheduler (memory stores) on loopback. What a
submission asks is kept on the job (its GET view shows ``priority`` and ``run_at``) and carried to the
scheduler's entry; a bad value is a 400 naming its field that registers nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import FormData

from receptionist.app import create_app
from receptionist.queueing import queued_job
from receptionist.settings import Settings
from shared.contract import utcnow

USER = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "exporter,importer"}
ECG = {"id": "e-1", "date": "2024-05-01T10:00:00Z", "leads": [{"name": "I", "signal": [1, -1, 2]}]}
#: Each JSON submission route with a valid body.
JSON_ROUTES = [
    ("/exports", {"bookId": "b-1", "type": "epub"}),
    ("/imports", {"bookId": "b-2", "type": "word", "url": "https://example.com/a.docx"}),
    ("/tasks", {"description": "later"}),
    ("/ecgs", ECG),
    ("/v1/exports", {"resource": "users"}),
    ("/v1/imports?resource=users", {"url": "https://example.com/users.csv"}),
    ("/jobs", {"kind": "import", "payload": {"bookId": "b-3", "type": "pdf", "url": "https://example.com/b.pdf"}}),
]


@pytest.fixture
async def client(aiohttp_client: Any, core: Any, tmp_path: Any) -> Any:
    app = create_app(Settings(registry_url=core.registry_url, scheduler_url=core.scheduler_url,
                              artifacts_dir=str(tmp_path), sweep_interval_s=0))
    return await aiohttp_client(app)


async def submit(client: Any, route: str, body: dict[str, Any], status: int = 201, headers: dict[str, str] = USER,
                 **kwargs: Any) -> dict[str, Any]:
    resp = await client.post(route, json=body, headers=headers, **kwargs)
    assert resp.status == status, await resp.text()
    return dict(await resp.json())


async def job_view(client: Any, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/jobs/{job_id}", headers=USER)
    assert resp.status == 200
    return dict(await resp.json())


async def entry_state(core: Any, job_id: str) -> str:
    _, answer = await core.scheduler("POST", "/queues/states", json={"job_ids": [job_id]})
    return str(answer["states"][job_id])


async def registered(core: Any) -> int:
    _, counts = await core.registry("GET", "/counts")
    return sum(counts.values())


@pytest.mark.parametrize(("route", "body"), JSON_ROUTES)
async def test_a_delayed_submission_waits_with_its_priority(client: Any, core: Any, route: str,
                                                             body: dict[str, Any]) -> None:
    before = utcnow()
    job = await submit(client, route, {**body, "priority": 7, "delay_s": 60} if "?" not in route else body,
                       params={"priority": "7", "delay_s": "60"} if "?" in route else None)
    after = utcnow()

    view = await job_view(client, job["id"])
    assert view["priority"] == 7
    run_at = datetime.fromisoformat(view["run_at"])
    assert before + timedelta(seconds=60) <= run_at <= after + timedelta(seconds=60)
    assert "priority" not in view["payload"] and "delay_s" not in view["payload"]
    assert await entry_state(core, job["id"]) == "delayed"
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": [view["kind"]], "max": 10})
    assert taken["deliveries"] == []


@pytest.mark.parametrize(("route", "body"), JSON_ROUTES)
async def test_a_prioritised_submission_is_ready_at_once(client: Any, core: Any, route: str,
                                                          body: dict[str, Any]) -> None:
    job = await submit(client, route, {**body, "priority": -100} if "?" not in route else body,
                       params={"priority": "-100"} if "?" in route else None)

    view = await job_view(client, job["id"])
    assert (view["priority"], view["run_at"]) == (-100, None)
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": [view["kind"]], "max": 10})
    ((delivery),) = taken["deliveries"]
    assert (delivery["job"]["id"], delivery["job"]["priority"], delivery["job"]["run_at"]) == (job["id"], -100, None)


async def test_a_plain_submission_has_priority_zero_and_no_time(client: Any) -> None:
    job = await submit(client, "/tasks", {"description": "plain"})
    view = await job_view(client, job["id"])
    assert (view["priority"], view["run_at"]) == (0, None)


async def test_run_at_is_kept_in_utc_and_a_past_one_means_now(client: Any, core: Any) -> None:
    soon = (datetime.now(timezone(timedelta(hours=2))) + timedelta(minutes=5)).replace(microsecond=0)
    job = await submit(client, "/tasks", {"description": "soon", "run_at": soon.isoformat()})
    view = await job_view(client, job["id"])
    assert view["run_at"].endswith("Z") and datetime.fromisoformat(view["run_at"]) == soon
    assert await entry_state(core, job["id"]) == "delayed"

    past = await submit(client, "/tasks", {"description": "past", "run_at": "2001-02-03T04:05:06Z"})
    assert (await job_view(client, past["id"]))["run_at"] == "2001-02-03T04:05:06Z"
    assert await entry_state(core, past["id"]) == "ready"


async def test_a_multipart_upload_takes_them_as_query_parameters(client: Any, core: Any) -> None:
    form = FormData()
    form.add_field("file", b"id,email,name,role,active,created_at,updated_at\n", filename="users.csv",
                   content_type="text/csv")
    resp = await client.post("/v1/imports", data=form, headers=USER,
                             params={"resource": "users", "priority": "3", "run_at": "2001-01-01T00:00:00+00:00"})
    assert resp.status == 201, await resp.text()
    view = await job_view(client, (await resp.json())["id"])
    assert (view["priority"], view["run_at"]) == (3, "2001-01-01T00:00:00Z")

    form = FormData()
    form.add_field("file", b"id\n", filename="users.csv", content_type="text/csv")
    resp = await client.post("/v1/imports", data=form, headers=USER,
                             params={"resource": "users", "priority": "1.5", "delay_s": "ten"})
    assert resp.status == 400
    assert {d["field"] for d in (await resp.json())["details"]} == {"priority", "delay_s"}


async def test_a_repeat_keeps_the_first_submissions_time(client: Any) -> None:
    key = {"Idempotency-Key": "once"}
    first = await submit(client, "/tasks", {"description": "d", "delay_s": 60}, headers={**USER, **key})
    repeat = await submit(client, "/tasks", {"description": "d", "delay_s": 600, "priority": 9}, status=200,
                          headers={**USER, **key})
    assert repeat == first  # the task, as GET /tasks/{id} shows it
    job = await job_view(client, first["id"])  # the first's 60 s stand, not the repeat's 600
    run_at = datetime.fromisoformat(job["run_at"])
    assert job["priority"] == 0 and run_at < datetime.now(timezone.utc) + timedelta(seconds=300)


FAR = (datetime.now(timezone.utc) + timedelta(days=366)).isoformat()
SOON = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(("scheduling", "fields"), [
    ({"priority": 101}, {"priority"}),
    ({"priority": -101}, {"priority"}),
    ({"priority": "5"}, {"priority"}),
    ({"priority": 1.5}, {"priority"}),
    ({"priority": True}, {"priority"}),
    ({"priority": None}, {"priority"}),
    ({"run_at": "tomorrow"}, {"run_at"}),
    ({"run_at": "2030-01-01T12:00:00"}, {"run_at"}),  # no offset: which 12:00?
    ({"run_at": "2030-01-01"}, {"run_at"}),
    ({"run_at": FAR}, {"run_at"}),
    ({"run_at": 1893456000}, {"run_at"}),
    ({"delay_s": -1}, {"delay_s"}),
    ({"delay_s": 31_536_001}, {"delay_s"}),
    ({"delay_s": "60"}, {"delay_s"}),
    ({"delay_s": True}, {"delay_s"}),
    ({"run_at": SOON, "delay_s": 5}, {"run_at", "delay_s"}),
    ({"run_at": "2001-01-01T00:00:00Z", "delay_s": 0}, {"run_at", "delay_s"}),
])
@pytest.mark.parametrize("route", ["/tasks", "/exports", "/ecgs", "/v1/exports", "/jobs"])
async def test_bad_values_are_400_naming_the_field_and_register_nothing(client: Any, core: Any, route: str,
                                                                        scheduling: dict[str, Any],
                                                                        fields: set[str]) -> None:
    body = dict(JSON_ROUTES)[route]
    answer = await submit(client, route, {**body, **scheduling}, status=400)
    assert {d["field"] for d in answer["details"]} == fields, answer
    assert all(d["message"] for d in answer["details"])
    assert await registered(core) == 0


async def test_both_a_time_and_a_delay_on_an_upload_are_refused_before_the_file_is_read(client: Any,
                                                                                       core: Any) -> None:
    resp = await client.post("/v1/imports", data=b"not even multipart", headers={**USER, "Content-Type": "text/csv"},
                             params={"resource": "users", "run_at": SOON, "delay_s": "5"})
    assert resp.status == 400
    answer = await resp.json()
    assert [d["field"] for d in answer["details"]] == ["run_at", "delay_s"]
    assert "not both" in answer["details"][0]["message"]
    assert await registered(core) == 0


def test_a_queued_job_carries_the_records_priority_and_time_unscaled() -> None:
    record = {"id": "0b7e58d6-5a57-4a0b-8f2a-8c8f5b0f4d8e", "kind": "task", "type": "task", "payload": {},
              "owner": "ada", "attempt": 1, "max_attempts": 3, "priority": -4, "run_at": "2030-01-01T00:00:00Z"}
    queued = queued_job(record, time_scale=0.01)
    assert (queued.priority, queued.run_at) == (-4, datetime(2030, 1, 1, tzinfo=timezone.utc))
    # A record written before priorities: priority 0, no time.
    old = queued_job({k: v for k, v in record.items() if k not in ("priority", "run_at")}, time_scale=1.0)
    assert (old.priority, old.run_at) == (0, None)
