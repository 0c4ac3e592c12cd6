"""Times at the calendar's edge, from a client: a moment that exists with its offset but not once in UTC
(the first hours of year 1 at a positive offset, the last of year 9999 at a negative one) is a 400 naming
its field or cursor, never a 500. The real receptionist, registry, scheduler and logging service on loopback."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from logging_service.app import create_app as logging_app
from logging_service.settings import Settings as LoggingSettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from shared.contract import DATE_TIME_MESSAGE

USER = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "exporter"}
OPERATOR = {"X-Conveyor-User": "olga", "X-Conveyor-Roles": "operator"}
BEFORE_THE_CALENDAR = "0001-01-01T00:00:00+05:00"
AFTER_THE_CALENDAR = "9999-12-31T23:59:59-05:00"


def cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


@pytest.fixture
async def client(aiohttp_server: Any, aiohttp_client: Any, core: Any, tmp_path: Path) -> Any:
    logs = await aiohttp_server(logging_app(LoggingSettings(store_url="memory://")))
    return await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url,
        logging_url=str(logs.make_url("")).rstrip("/"), artifacts_dir=str(tmp_path), sweep_interval_s=0)))


async def refused(client: Any, method: str, path: str, field: str, **kwargs: Any) -> None:
    resp = await client.request(method, path, **kwargs)
    body = await resp.json()
    assert resp.status == 400 and field in {detail["field"] for detail in body["details"]}, (resp.status, body)


@pytest.mark.parametrize("moment", [BEFORE_THE_CALENDAR, AFTER_THE_CALENDAR])
async def test_a_list_cursor_outside_the_calendar_is_a_400(client: Any, moment: str) -> None:
    """The registry decodes a jobs cursor into a moment in UTC: one that has none is not a cursor it made."""
    for path in ("/jobs", "/tasks", "/exports"):
        await refused(client, "GET", path, "cursor", params={"cursor": cursor(moment, str(uuid.uuid4()))},
                      headers=USER)


async def test_a_log_cursor_outside_the_calendar_or_beside_an_until_without_offset(client: Any) -> None:
    """A logs cursor is a time and a count: one outside the calendar is a 400. ``until`` without an offset is
    UTC, as the logging service reads it, and compares with a cursor's time (it was a 500)."""
    job = await (await client.post("/tasks", json={"description": "logged"}, headers=USER)).json()
    for path, headers in (("/logs", OPERATOR), (f"/jobs/{job['id']}/logs", USER)):
        for made_elsewhere in (cursor(AFTER_THE_CALENDAR, 0), cursor("2026-12-03T16:27:00", 0),
                               cursor("2026-12-03T16:27:00+00:00", True)):  # no offset; a bool for a count
            await refused(client, "GET", path, "cursor", params={"cursor": made_elsewhere}, headers=headers)
        resp = await client.get(path, headers=headers, params={
            "cursor": cursor("2026-12-03T16:27:00+00:00", 0), "until": "2099-01-01T00:00:00"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["items"] == []  # nothing was logged before the cursor's time


@pytest.mark.parametrize("run_at", [BEFORE_THE_CALENDAR, "0001-01-01T04:59:59.999999+05:00"])
async def test_a_run_at_before_the_calendar_is_a_400_naming_it(client: Any, run_at: str) -> None:
    for route, body in (("/tasks", {"description": "x"}), ("/exports", {"bookId": "b", "type": "epub"})):
        await refused(client, "POST", route, "run_at", json={**body, "run_at": run_at}, headers=USER)
    await refused(client, "POST", "/jobs", "run_at", headers=USER,
                  json={"kind": "task", "payload": {"description": "x"}, "run_at": run_at})


async def test_a_time_finer_than_a_microsecond_is_a_400_not_cut(client: Any) -> None:
    """Python keeps a time to the microsecond, and pydantic cut a finer fraction without a word: a
    ``run_at`` of ``….123456789Z`` became ``….123456Z``. A time is refused instead, in a body and in a query,
    as an import refuses it; six decimals are taken as sent."""
    finer, micro = "2026-01-01T12:00:00.123456789Z", "2026-01-01T12:00:00.123456Z"
    for route, body in (("/tasks", {"description": "x"}), ("/exports", {"bookId": "b", "type": "epub"})):
        await refused(client, "POST", route, "run_at", json={**body, "run_at": finer}, headers=USER)
    await refused(client, "POST", "/jobs", "run_at", headers=USER,
                  json={"kind": "task", "payload": {"description": "x"}, "run_at": finer})
    await refused(client, "GET", "/logs", "since", params={"since": finer}, headers=OPERATOR)
    resp = await client.post("/tasks", json={"description": "x", "run_at": finer}, headers=USER)
    assert (await resp.json())["details"] == [{"field": "run_at", "message": DATE_TIME_MESSAGE}]
    resp = await client.post("/tasks", json={"description": "x", "run_at": micro}, headers=USER)
    assert resp.status == 201, await resp.text()
    job = await (await client.get(f"/jobs/{(await resp.json())['id']}", headers=USER)).json()
    assert job["run_at"] == micro
