"""Operators' actions at the receptionist: pausing and resuming a queue, discarding dead letters. A real
receptionist, registry and scheduler (memory stores) on loopback; every backend's store runs the same
contract (tests/scheduler/test_queue_store_operators.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from receptionist import operators
from receptionist.app import create_app
from tests.receptionist.test_reliability import settings

OPERATOR = {"X-Conveyor-Roles": "operator", "X-Conveyor-User": "u-7", "X-Conveyor-Username": "olga"}
USER = {"X-Conveyor-User": "mallory"}


@pytest.fixture
async def client(aiohttp_client: Any, core: Any, tmp_path: Any) -> Any:
    return await aiohttp_client(create_app(settings(core, tmp_path)))


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """The receptionist's log records (what ships to the central log), as loguru hands them to a sink."""
    lines: list[dict[str, Any]] = []
    sink = logger.add(lambda message: lines.append(message.record), level="INFO")
    yield lines
    logger.remove(sink)


async def kill(client: Any, core: Any) -> str:
    """A task job that used its three attempts: failed in the registry, dead in the scheduler."""
    job = await (await client.post("/tasks", json={"description": "doomed"})).json()
    for attempt in (1, 2, 3):
        _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["task"]})
        (delivery,) = taken["deliveries"]
        await core.registry("PATCH", f"/jobs/{job['id']}", json={"attempt": attempt, "state": "processing"})
        await core.registry("PATCH", f"/jobs/{job['id']}", json={
            "attempt": attempt, "state": "failed" if attempt == 3 else "pending", "error": f"boom {attempt}"})
        await core.scheduler("POST", "/leases/nack", json={"job_id": job["id"], "lease_id": delivery["lease_id"],
                                                          "error": f"boom {attempt}", "delay_s": 0})
    return str(job["id"])


async def queue_of(client: Any, name: str) -> dict[str, Any]:
    """The queue ``name`` as ``GET /queues`` lists it, whatever page it is on."""
    params: dict[str, str] = {"limit": "1"}
    while True:
        resp = await client.get("/queues", params=params, headers=OPERATOR)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        for item in page["items"]:
            if item["queue"] == name:
                return dict(item)
        assert page["next_cursor"], f"no queue {name}"
        params["cursor"] = page["next_cursor"]


async def test_an_operator_pauses_and_resumes_a_queue(client: Any, core: Any,
                                                      log_lines: list[dict[str, Any]]) -> None:
    resp = await client.post("/queues/task/pause", headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["paused"] is True
    assert (await (await client.post("/queues/task/pause", headers=OPERATOR)).json())["paused"] is True

    job = await (await client.post("/tasks", json={"description": "waits"}, headers=USER)).json()
    assert job["status"] == "PENDING"  # a paused queue takes jobs...
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["task"]})
    assert taken["deliveries"] == []  # ...and hands none out
    queues = {q["queue"]: q for q in (await (await client.get("/queues", headers=OPERATOR)).json())["items"]}
    assert (queues["task"]["paused"], queues["task"]["ready"]) == (True, 1)

    resumed = await (await client.post("/queues/task/resume", headers=OPERATOR)).json()
    assert (resumed["queue"], resumed["paused"], resumed["ready"]) == ("task", False, 1)
    _, taken = await core.scheduler("POST", "/dequeue", json={"queues": ["task"]})
    assert [d["job"]["id"] for d in taken["deliveries"]] == [job["id"]]
    assert (await queue_of(client, "task"))["paused"] is False

    told = [(r["message"], r["extra"].get("operator")) for r in log_lines if r["extra"].get("queue") == "task"]
    assert ("queue task paused by olga", "olga") in told and ("queue task resumed by olga", "olga") in told


async def test_a_kinds_queue_can_be_paused_before_it_held_a_job(client: Any) -> None:
    snapshot = await (await client.post("/queues/export/pause", headers=OPERATOR)).json()
    assert (snapshot["paused"], snapshot["ready"], snapshot["enqueued"]) == (True, 0, 0)
    assert (await queue_of(client, "export"))["paused"] is True


@pytest.mark.parametrize("name", ["nowhere", "a%20b", "-x", "x" * 101])
async def test_pausing_an_unknown_queue_is_a_404(client: Any, name: str) -> None:
    for action in ("pause", "resume"):
        resp = await client.post(f"/queues/{name}/{action}", headers=OPERATOR)
        assert resp.status == 404, await resp.text()
        assert (await resp.json())["details"][0]["field"] == "name"


async def test_pausing_is_for_operators(client: Any) -> None:
    assert (await client.post("/queues/task/pause")).status == 401
    assert (await client.post("/queues/task/pause", headers=USER)).status == 403
    assert (await client.post("/queues/task/resume", headers=USER)).status == 403
    assert (await client.post("/dead/discard", json={"all": True}, headers=USER)).status == 403


async def test_an_operator_discards_dead_letters_and_the_jobs_stay_failed(
        client: Any, core: Any, log_lines: list[dict[str, Any]]) -> None:
    first, second, third = await kill(client, core), await kill(client, core), await kill(client, core)

    resp = await client.post("/dead/discard", json={"job_ids": [second]}, headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"discarded": [second]}
    dead = await (await client.get("/dead", headers=OPERATOR)).json()
    assert [item["job_id"] for item in dead["items"]] == [first, third]
    _, record = await core.registry("GET", f"/jobs/{second}")
    assert record["state"] == "failed" and len(record["errors"]) == 3  # its history kept
    assert any(r["extra"].get("job_id") == second and r["extra"].get("operator") == "olga" for r in log_lines)

    assert await (await client.post("/dead/discard", json={"job_ids": [second]}, headers=OPERATOR)).json() == {
        "discarded": []}  # gone already
    everything = await (await client.post("/dead/discard", json={"all": True, "queue": "task"},
                                           headers=OPERATOR)).json()
    assert everything == {"discarded": [first, third]}
    assert (await (await client.get("/dead", headers=OPERATOR)).json())["items"] == []
    assert (await queue_of(client, "task"))["dead"] == 0


@pytest.mark.parametrize(("body", "field"), [({}, "job_ids"), ({"job_ids": ["x"]}, "job_ids.0"),
                                             ({"all": True, "queue": "a b"}, "queue"),
                                             ({"job_ids": ["00000000-0000-0000-0000-000000000001"], "queue": "task"},
                                              "queue"),
                                             ({"all": True, "colour": "red"}, "colour"),
                                             # A job named twice was answered (and logged) twice as redriven.
                                             ({"job_ids": ["00000000-0000-0000-0000-000000000001"] * 2}, "job_ids")])
async def test_discard_and_requeue_refuse_an_unclear_selection(client: Any, body: dict[str, Any], field: str) -> None:
    for route in ("/dead/discard", "/dead/requeue"):
        resp = await client.post(route, json=body, headers=OPERATOR)
        assert resp.status == 400, route
        assert field in [d["field"] for d in (await resp.json())["details"]], route


async def test_the_queues_are_a_list_paged_by_name(client: Any, core: Any) -> None:
    for name in ("task", "export", "ecg"):
        assert (await client.post(f"/queues/{name}/pause", headers=OPERATOR)).status == 200
    resp = await client.get("/queues", params={"limit": "2"}, headers=OPERATOR)
    first = await resp.json()
    assert set(first) == {"items", "next_cursor"} and [q["queue"] for q in first["items"]] == ["ecg", "export"]
    assert f"cursor={first['next_cursor']}" in resp.headers["Link"] and "limit=2" in resp.headers["Link"]
    resp = await client.get("/queues", params={"limit": "2", "cursor": first["next_cursor"]}, headers=OPERATOR)
    second = await resp.json()
    assert [q["queue"] for q in second["items"]] == ["task"] and second["next_cursor"] is None
    assert "Link" not in resp.headers
    assert all(q["paused"] is True and q["ready"] == 0 for q in first["items"] + second["items"])
    for params, field in (({"limit": "0"}, "limit"), ({"cursor": "bogus"}, "cursor"), ({"queue": "task"}, "queue")):
        resp = await client.get("/queues", params=params, headers=OPERATOR)
        assert resp.status == 400 and field in [d["field"] for d in (await resp.json())["details"]], params


async def test_dead_letters_page_through_the_scheduler_and_redrive_all_in_batches(
        client: Any, core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    killed = [await kill(client, core) for _ in range(5)]
    seen, params = [], {"limit": "2"}
    while True:
        resp = await client.get("/dead", params=params, headers=OPERATOR)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [item["job_id"] for item in page["items"]]
        if not page["next_cursor"]:
            assert "Link" not in resp.headers
            break
        assert len(page["items"]) == 2 and "rel=\"next\"" in resp.headers["Link"]
        params["cursor"] = page["next_cursor"]
    assert seen == killed  # oldest death first, each once
    resp = await client.get("/dead", params={"cursor": "bogus"}, headers=OPERATOR)
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "cursor"

    monkeypatch.setattr(operators, "REDRIVE_BATCH", 2)  # all of them, two at a time
    answer = await (await client.post("/dead/requeue", json={"all": True, "queue": "task"}, headers=OPERATOR)).json()
    assert sorted(answer["requeued"]) == sorted(killed) and answer["skipped"] == []
    assert (await (await client.get("/dead", headers=OPERATOR)).json())["items"] == []
    assert (await queue_of(client, "task"))["ready"] == 5


@pytest.mark.parametrize("path", ["/dead/requeue", "/dead/discard"])
async def test_all_of_a_queue_that_does_not_exist_is_a_404_naming_it(client: Any, path: str) -> None:
    """As pausing it is: an operator who mistypes a queue hears so, not "nothing to do"."""
    resp = await client.post(path, json={"all": True, "queue": "nosuch"}, headers=OPERATOR)
    assert resp.status == 404
    assert [d["field"] for d in (await resp.json())["details"]] == ["queue"]
