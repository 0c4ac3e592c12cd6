"""Periodic schedules through a real receptionist in front of a real registry and scheduler (memory stores) on
loopback: made, read, listed, paused, resumed and removed by their owner; validated like a ``POST /jobs``
of their kind, with the cron expression and the time zone; seen by operators without their payload; and
fired by two receptionists at once, each due time once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from receptionist.app import create_app
from receptionist.settings import Settings
from shared.contract import utcnow
from shared.schedules import idempotency_key
from tests.support import wait_until

ADA = {"X-Conveyor-User": "ada-id", "X-Conveyor-Username": "ada", "X-Conveyor-Roles": "user"}
BOB = {"X-Conveyor-User": "bob-id", "X-Conveyor-Username": "bob", "X-Conveyor-Roles": "user"}
OPS = {"X-Conveyor-User": "olga-id", "X-Conveyor-Username": "olga", "X-Conveyor-Roles": "operator"}
ADMIN = {"X-Conveyor-User": "adam-id", "X-Conveyor-Username": "adam", "X-Conveyor-Roles": "admin"}
EXPORT = {"kind": "export", "payload": {"bookId": "b-1", "type": "epub"}}
FIELDS = {"id", "kind", "payload", "cron", "every_s", "timezone", "priority", "paused", "next_run_at",
          "last_fired_at", "created_at", "updated_at", "owner", "job_type", "max_attempts"}


def receptionist(core: Any, tmp_path: Any, poll_s: float = 0) -> Any:
    return create_app(Settings(registry_url=core.registry_url, scheduler_url=core.scheduler_url,
                               artifacts_dir=str(tmp_path), sweep_interval_s=0, schedule_poll_s=poll_s))


@pytest.fixture
async def client(aiohttp_client: Any, core: Any, tmp_path: Any) -> Any:
    return await aiohttp_client(receptionist(core, tmp_path))


async def make(client: Any, body: dict[str, Any], headers: dict[str, str] = ADA, status: int = 201) -> dict[str, Any]:
    resp = await client.post("/schedules", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return dict(await resp.json())


def fields_named(answer: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in answer["details"]}


async def test_a_schedule_is_made_read_listed_paused_resumed_and_removed(client: Any) -> None:
    before = utcnow()
    made = await make(client, {**EXPORT, "cron": "*/5 * * * *", "timezone": "Europe/Paris", "priority": 3})
    assert set(made) == FIELDS
    assert (made["kind"], made["payload"], made["cron"], made["every_s"], made["timezone"], made["priority"],
            made["paused"], made["last_fired_at"], made["owner"]) == (
        "export", {"bookId": "b-1", "type": "epub"}, "*/5 * * * *", None, "Europe/Paris", 3, False, None, "ada-id")
    next_run = datetime.fromisoformat(made["next_run_at"])
    assert before < next_run <= before + timedelta(minutes=5) and next_run.minute % 5 == 0 and next_run.second == 0

    resp = await client.get(f"/schedules/{made['id']}", headers=ADA)
    assert resp.status == 200 and await resp.json() == made  # the POST's view is the GET's

    paused = await (await client.post(f"/schedules/{made['id']}/pause", headers=ADA)).json()
    assert paused["paused"] is True
    resp = await client.post(f"/schedules/{made['id']}/resume", headers=ADA)
    assert resp.status == 200
    resumed = await resp.json()
    assert resumed["paused"] is False and datetime.fromisoformat(resumed["next_run_at"]) > before

    other = await make(client, {**EXPORT, "every_s": 3600})
    page = await (await client.get("/schedules", headers=ADA)).json()
    assert [s["id"] for s in page["items"]] == [other["id"], made["id"]] and page["next_cursor"] is None
    resp = await client.get("/schedules?limit=1", headers=ADA)
    first = await resp.json()
    assert [s["id"] for s in first["items"]] == [other["id"]]
    assert resp.headers["Link"] == f'</schedules?limit=1&cursor={first["next_cursor"]}>; rel="next"'
    rest = await (await client.get(f"/schedules?limit=1&cursor={first['next_cursor']}", headers=ADA)).json()
    assert [s["id"] for s in rest["items"]] == [made["id"]] and rest["next_cursor"] is None

    resp = await client.delete(f"/schedules/{made['id']}", headers=ADA)
    assert resp.status == 204
    assert (await client.get(f"/schedules/{made['id']}", headers=ADA)).status == 404
    assert (await client.delete(f"/schedules/{made['id']}", headers=ADA)).status == 404


@pytest.mark.parametrize(("body", "fields"), [
    ({**EXPORT}, {"cron", "every_s"}),
    ({**EXPORT, "cron": "* * * * *", "every_s": 5}, {"cron", "every_s"}),
    ({**EXPORT, "cron": "61 * * * *"}, {"cron"}),
    ({**EXPORT, "cron": "* * * * * *"}, {"cron"}),
    ({**EXPORT, "cron": "not cron"}, {"cron"}),
    ({**EXPORT, "cron": "0 0 31 2 *"}, {"cron"}),  # well formed, and never comes
    ({**EXPORT, "cron": 5}, {"cron"}),
    ({**EXPORT, "every_s": 0.5}, {"every_s"}),
    ({**EXPORT, "every_s": "5"}, {"every_s"}),
    ({**EXPORT, "every_s": 10, "timezone": "Mars/Olympus"}, {"timezone"}),
    ({**EXPORT, "every_s": 10, "timezone": "../../etc/passwd"}, {"timezone"}),
    # A host's own names (its zone directory has them): the same name would be another zone on each host
    # whose receptionist fires the schedule; right/ counts leap seconds, 27 s off every other clock.
    *(({**EXPORT, "cron": "0 9 * * *", "timezone": name}, {"timezone"})
      for name in ("localtime", "posixrules", "right/Europe/Paris", "posix/UTC", "LocalTime")),
    ({**EXPORT, "every_s": 10, "priority": 101}, {"priority"}),
    ({**EXPORT, "every_s": 10, "surprise": 1}, {"surprise"}),
    ({"kind": "export", "payload": {"bookId": "b-1", "type": "mobi"}, "every_s": 10}, {"payload.type"}),
    ({"kind": "export", "payload": {"bookId": "b-1"}, "every_s": 10}, {"payload.type"}),
    ({"kind": "export", "payload": [], "every_s": 10}, {"payload"}),
    ({"kind": "nosuch.kind", "payload": {}, "every_s": 10}, {"kind"}),
    ({"kind": "data_import", "payload": {"url": "https://example.com/u.csv"}, "every_s": 10}, {"kind"}),
    ({"kind": "import", "payload": {"bookId": "b", "type": "word", "url": "http://127.0.0.1/a.docx"}, "every_s": 10},
     {"payload.url"}),
])
async def test_a_bad_schedule_is_a_400_naming_the_field_and_keeps_nothing(client: Any, body: dict[str, Any],
                                                                        fields: set[str]) -> None:
    answer = await make(client, body, status=400)
    assert fields <= fields_named(answer), answer
    assert (await (await client.get("/schedules", headers=ADA)).json())["items"] == []


async def test_a_scheduled_task_is_registered_as_post_tasks_registers_it(client: Any) -> None:
    """A kind with a route of its own may be scheduled like any other; its jobs get what that route gives
    them (a task the receptionist's default duration and failure odds)."""
    made = await make(client, {"kind": "task", "payload": {"description": "nightly"}, "every_s": 60})
    assert made["payload"] == {"description": "nightly", "duration_s": 1.0, "fail_probability": 0.1}
    assert made["job_type"] == "task"


async def test_a_kind_s_permission_is_needed_to_schedule_it(aiohttp_client: Any, core: Any, tmp_path: Any) -> None:
    app = create_app(Settings(registry_url=core.registry_url, scheduler_url=core.scheduler_url,
                              artifacts_dir=str(tmp_path), sweep_interval_s=0, schedule_poll_s=0,
                              kind_permissions={"export": "exporter"}))
    client = await aiohttp_client(app)
    body = {**EXPORT, "every_s": 60}
    resp = await client.post("/schedules", json=body, headers=ADA)
    assert resp.status == 403 and fields_named(await resp.json()) == {"permission"}
    await make(client, body, headers={**ADA, "X-Conveyor-Permissions": "exporter"})


async def test_others_see_nothing_operators_see_states_and_change_nothing(client: Any) -> None:
    mine = await make(client, {**EXPORT, "every_s": 60})
    path = f"/schedules/{mine['id']}"
    for method, suffix in (("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
        assert (await client.request(method, path + suffix, headers=BOB)).status == 404
    assert (await (await client.get("/schedules", headers=BOB)).json())["items"] == []
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        assert (await client.get(f"/schedules/{unknown}", headers=ADA)).status == 404

    seen = await (await client.get(path, headers=OPS)).json()
    assert seen == {**mine, "payload": None}
    assert [s["id"] for s in (await (await client.get("/schedules", headers=OPS)).json())["items"]] == [mine["id"]]
    for method, suffix in (("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
        assert (await client.request(method, path + suffix, headers=OPS)).status == 403
    assert (await client.post("/schedules", json={**EXPORT, "every_s": 60}, headers=OPS)).status == 403

    for method, route in (("GET", "/schedules"), ("GET", path), ("POST", "/schedules")):
        assert (await client.request(method, route, json={**EXPORT, "every_s": 60}, headers=ADMIN)).status == 403
    assert (await client.get(path, headers=ADA)).status == 200  # unchanged by all of that
    assert not (await (await client.get(path, headers=ADA)).json())["paused"]


async def test_an_unknown_list_parameter_or_cursor_is_a_400(client: Any) -> None:
    assert fields_named(await (await client.get("/schedules?owner=bob-id", headers=ADA)).json()) == {"owner"}
    assert fields_named(await (await client.get("/schedules?cursor=nope", headers=ADA)).json()) == {"cursor"}


async def test_two_receptionists_fire_each_due_time_once(aiohttp_client: Any, core: Any, tmp_path: Any) -> None:
    first = await aiohttp_client(receptionist(core, tmp_path, poll_s=0.02))
    await aiohttp_client(receptionist(core, tmp_path, poll_s=0.02))
    schedule = await make(first, {**EXPORT, "every_s": 1})

    async def fired_jobs() -> list[dict[str, Any]]:
        _, page = await core.registry("GET", "/jobs", params={"owner": "ada-id", "limit": 1000})
        return list(page["items"])

    jobs = await wait_until(lambda: _at_least(fired_jobs, 3), timeout_s=15)
    keys = [job["idempotency_key"] for job in jobs]
    assert len(set(keys)) == len(keys)
    assert all(job["schedule_id"] == schedule["id"] and job["kind"] == "export" and job["type"] == "epub"
               for job in jobs)
    now = await (await first.get(f"/schedules/{schedule['id']}", headers=ADA)).json()
    assert now["last_fired_at"] is not None
    assert idempotency_key(schedule["id"], datetime.fromisoformat(now["last_fired_at"])) in keys
    # Every due time fired is one of the schedule's grid, counted from its creation.
    created = datetime.fromisoformat(schedule["created_at"])
    for key in keys:
        due = datetime.fromisoformat(key.split(":", 2)[2])
        assert (due - created).total_seconds() % 1 == pytest.approx(0, abs=1e-6)
    # Each fired job was queued.
    _, states = await core.scheduler("POST", "/queues/states", json={"job_ids": [job["id"] for job in jobs]})
    assert all(states["states"][job["id"]] is not None for job in jobs)


async def _at_least(fetch: Any, n: int) -> list[dict[str, Any]] | None:
    jobs = await fetch()
    return jobs if len(jobs) >= n else None


async def test_a_schedule_fires_only_what_its_owner_may_still_submit(aiohttp_client: Any, core: Any,
                                                                     tmp_path: Any) -> None:
    """A schedule fires in its owner's name: once the owner has lost the user role, the next due time pauses
    it instead of firing (a warning; the owner resumes it with the role back), and removing a user removes
    their schedules, which nobody else may remove. Jobs already fired stay."""
    firer = await aiohttp_client(receptionist(core, tmp_path, poll_s=0.02))
    users = {}
    for name in ("dave", "erin"):
        _, user = await core.registry("POST", "/users", json={"username": name, "password": "a-password-1",
                                                               "roles": ["user"]})
        users[name] = {"X-Conveyor-User": user["id"], "X-Conveyor-Username": name, "X-Conveyor-Roles": "user"}
    task = {"kind": "task", "payload": {"description": "every second"}, "every_s": 1}
    daves, erins = await make(firer, task, headers=users["dave"]), await make(firer, task, headers=users["erin"])

    async def fired(owner: dict[str, str]) -> int:
        _, page = await core.registry("GET", "/jobs", params={"owner": owner["X-Conveyor-User"], "limit": 1000})
        return len(page["items"])

    await wait_until(lambda: _positive(fired, users["dave"]), timeout_s=15)
    await core.registry("PUT", "/users/dave/roles", json={"roles": ["operator"]})

    async def paused() -> bool:
        _, schedule = await core.registry("GET", f"/schedules/{daves['id']}")
        return bool(schedule["paused"])

    await wait_until(paused, timeout_s=15)
    made = await fired(users["dave"])
    status = await (await firer.get("/status")).json()
    assert status["schedules"]["paused"] == 1
    # Paused, it is no longer due: later polls fire nothing in dave's name.
    polls = status["schedules"]["polls"]

    async def polled_on() -> bool:
        return (await (await firer.get("/status")).json())["schedules"]["polls"] >= polls + 5

    await wait_until(polled_on)
    assert await fired(users["dave"]) == made
    # Removing erin removes her schedule with her; her jobs stay.
    await wait_until(lambda: _positive(fired, users["erin"]), timeout_s=15)
    async with core.session.delete(core.registry_url + "/users/erin") as resp:
        assert resp.status == 204
    status_code, _ = await core.registry("GET", f"/schedules/{erins['id']}")
    assert status_code == 404 and await fired(users["erin"]) >= 1


async def _positive(fetch: Any, owner: dict[str, str]) -> int | None:
    return (await fetch(owner)) or None
