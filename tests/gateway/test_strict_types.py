"""Strict types on every public route, through the real gateway, receptionist, registry and scheduler on
loopback: a value of the wrong JSON type is a 400 naming its field, never coerced (``true`` is not 1.0,
``"1"`` is not 1, ``2.0`` is not 2); query parameters take only the canonical text of their type."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings

TOKEN = "internal-token-for-tests"
SECRET = "s" * 48
PASSWORD = "correct horse battery"
ECG = {"id": "e-1", "date": "2024-05-01T10:00:00Z",
       "leads": [{"name": "I", "number_of_samples": 3, "signal": [1, -1, 2]}]}

#: (method, path, a valid body, the field, a value of the wrong type, what is wrong). Each row's valid
#: body with that field replaced must be a 400 naming the field.
CASES: list[tuple[str, str, dict[str, Any], str, Any, str]] = [
    ("POST", "/auth/token", {"username": "root", "password": PASSWORD}, "username", 5, "number for a string"),
    ("POST", "/auth/token", {"username": "root", "password": PASSWORD}, "password", True, "bool for a string"),
    ("POST", "/exports", {"bookId": "b-1", "type": "epub"}, "bookId", 12, "number for a string"),
    ("POST", "/exports", {"bookId": "b-1", "type": "epub"}, "type", ["epub"], "list for a string"),
    ("POST", "/imports", {"bookId": "b-1", "type": "word", "url": "https://example.com/a.docx"}, "url", 1,
     "number for a string"),
    ("POST", "/imports", {"bookId": "b-1", "type": "word", "url": "https://example.com/a.docx"}, "bookId",
     {"id": "b-1"}, "object for a string"),
    ("POST", "/tasks", {"description": "d"}, "description", 3, "number for a string"),
    ("POST", "/tasks", {"description": "d"}, "duration_s", True, "bool for a number"),
    ("POST", "/tasks", {"description": "d"}, "duration_s", "1", "string for a number"),
    ("POST", "/tasks", {"description": "d"}, "fail_probability", False, "bool for a number"),
    ("POST", "/tasks", {"description": "d"}, "fail_probability", "0.5", "string for a number"),
    ("POST", "/tasks", {"description": "d"}, "priority", "1", "string for an int"),
    ("POST", "/tasks", {"description": "d"}, "priority", 1.0, "float for an int"),
    ("POST", "/exports", {"bookId": "b-1", "type": "epub"}, "priority", True, "bool for an int"),
    ("POST", "/tasks", {"description": "d"}, "delay_s", "60", "string for a number"),
    ("POST", "/ecgs", ECG, "delay_s", False, "bool for a number"),
    ("POST", "/v1/exports", {"resource": "users"}, "run_at", 1893456000, "number for a time"),
    ("POST", "/ecgs", ECG, "id", 5, "number for a string"),
    ("POST", "/ecgs", ECG, "date", 1714557600, "number for a time"),
    ("POST", "/ecgs", ECG, "leads", {"name": "I"}, "object for a list"),
    ("POST", "/ecgs", ECG, "leads.0.number_of_samples", 3.0, "float for an int"),
    ("POST", "/ecgs", ECG, "leads.0.number_of_samples", True, "bool for an int"),
    ("POST", "/ecgs", ECG, "leads.0.name", 1, "number for a string"),
    ("POST", "/v1/imports?resource=users", {"url": "https://example.com/u.csv"}, "url", 7, "number for a string"),
    ("POST", "/v1/exports", {"resource": "users"}, "resource", 1, "number for a string"),
    ("POST", "/v1/exports", {"resource": "users"}, "format", True, "bool for a string"),
    ("POST", "/v1/exports", {"resource": "users"}, "fields", {"id": 1}, "object for a list"),
    ("POST", "/v1/exports", {"resource": "users"}, "fields", "id,email", "string for a list"),
    ("POST", "/v1/exports", {"resource": "users"}, "filters", ["active"], "list for an object"),
    ("POST", "/v1/exports", {"resource": "users", "filters": {}}, "filters.active", "true", "string for a bool"),
    ("POST", "/v1/exports", {"resource": "users", "filters": {}}, "filters.created_from", 0.5,
     "number for a time"),
    ("POST", "/v1/exports", {"resource": "users", "filters": {}}, "filters.created_from", "0.5",
     "a number's text for a time"),
    ("POST", "/v1/exports", {"resource": "articles", "filters": {}}, "filters.author_id", 12,
     "number for a string"),
    ("POST", "/users", {"username": "newbie", "password": PASSWORD}, "username", 5, "number for a string"),
    ("POST", "/users", {"username": "newbie", "password": PASSWORD}, "password", 12345678, "number for a string"),
    ("POST", "/users", {"username": "newbie", "password": PASSWORD}, "roles", "user", "string for a list"),
    ("POST", "/users", {"username": "newbie", "password": PASSWORD}, "roles", [1], "number for an enum"),
    ("POST", "/users", {"username": "newbie", "password": PASSWORD}, "permissions", {"x": 1},
     "object for a list"),
    ("PUT", "/users/root/password", {"password": PASSWORD}, "password", 123456789, "number for a string"),
    ("PUT", "/users/newbie/roles", {"roles": ["user"]}, "roles", "user", "string for a list"),
    ("PUT", "/users/newbie/roles", {"roles": ["user"]}, "roles.0", 1, "number for an enum"),
    ("POST", "/dead/requeue", {"all": True}, "all", "true", "string for a bool"),
    ("POST", "/dead/requeue", {"all": True}, "all", 1, "number for a bool"),
    ("POST", "/dead/requeue", {"all": True}, "queue", 1, "number for a string"),
    ("POST", "/dead/requeue", {"job_ids": ["0b7e58d6-5a57-4a0b-8f2a-8c8f5b0f4d8e"]}, "job_ids", "abc",
     "string for a list"),
    ("POST", "/dead/requeue", {"job_ids": ["0b7e58d6-5a57-4a0b-8f2a-8c8f5b0f4d8e"]}, "job_ids.0", 5,
     "number for an id"),
]

#: (path, the parameter) of query strings with a value that is not its type's canonical text.
QUERY_CASES: list[tuple[str, str]] = [
    ("/logs?until=0.5", "until"),
    ("/logs?since=abc", "since"),
    ("/logs?since=1700000000", "since"),
    ("/logs?limit=1.5", "limit"),
    ("/jobs?limit=1.5", "limit"),
    ("/jobs?limit=true", "limit"),
    ("/jobs?limit=1.0", "limit"),
    ("/jobs?limit=%2B5", "limit"),
    ("/jobs?limit=1_0", "limit"),
    ("/tasks?limit=1.5", "limit"),
    ("/dead?limit=true", "limit"),
    ("/events?after=1.5", "after"),
    ("/v1/exports?resource=users&created_from=0.5", "created_from"),
    ("/v1/exports?resource=users&active=yes", "active"),
]


def replaced(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``body`` with the value at dotted path ``field`` set to ``value``."""
    body = copy.deepcopy(body)
    parts = field.split(".")
    target: Any = body
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


def names(answer: dict[str, Any], field: str) -> bool:
    """Whether the error answer names ``field`` (as a detail's field or one of its items', or as the subject
    of a whole-body detail)."""
    return any(detail["field"] == field or detail["field"].startswith(field + ".")
               or detail["message"].startswith(field + ":")
               for detail in answer.get("details", []))


class Api:
    def __init__(self, client: Any, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.request(method, path, headers=self.headers, **kwargs)
        return resp.status, (await resp.json() if resp.status != 204 else None)


@pytest.fixture
async def api(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any) -> AsyncIterator[Api]:
    """The gateway of a real stack, and the token of ``root``: a user, an operator, an admin, an exporter
    and an importer at once, so that every route's validation is reached."""
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    registry_url = str(registry.make_url("")).rstrip("/")
    front = await aiohttp_server(receptionist_app(ReceptionistSettings(
        registry_url=registry_url, scheduler_url=str(scheduler.make_url("")).rstrip("/"),
        artifacts_dir=str(tmp_path), service_token=TOKEN, sweep_interval_s=0,
        data_store_url=f"sqlite:///{tmp_path}/data.db")))
    client = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[str(front.make_url("")).rstrip("/")], registry_url=registry_url, service_token=TOKEN,
        jwt_secret=SECRET, rate_limit_per_s=0)))
    async with client.session.post(registry_url + "/users", headers={"X-Service-Token": TOKEN}, json={
            "username": "root", "password": PASSWORD, "roles": ["user", "operator", "admin"],
            "permissions": ["exporter", "importer"]}) as resp:
        assert resp.status == 201, await resp.text()
    resp = await client.post("/auth/token", json={"username": "root", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    yield Api(client, {"Authorization": f"Bearer {token}"})


async def test_every_valid_body_of_the_table_is_accepted(api: Api) -> None:
    """The table's bodies are valid, so each row's 400 is its wrong-typed field's doing."""
    seen: set[tuple[str, str]] = set()
    for method, path, body, *_ in CASES:
        if (method, path) in seen or (path == "/dead/requeue" and "job_ids" in body):
            continue  # requeueing unknown ids is a 200 with skips; ``all`` covers the route
        seen.add((method, path))
        status, answer = await api.call(method, path, json=body)
        assert status in (200, 201, 204), (method, path, status, answer)


@pytest.mark.parametrize(("method", "path", "body", "field", "value", "what"), CASES,
                         ids=[f"{c[1]} {c[3]}: {c[5]}" for c in CASES])
async def test_a_wrong_json_type_is_a_400_naming_the_field(api: Api, method: str, path: str, body: dict[str, Any],
                                                           field: str, value: Any, what: str) -> None:
    status, answer = await api.call(method, path, json=replaced(body, field, value))
    assert status == 400, (what, status, answer)
    assert names(answer, field), (what, answer)


@pytest.mark.parametrize(("path", "field"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
async def test_a_query_parameter_takes_only_its_type_s_text(api: Api, path: str, field: str) -> None:
    status, answer = await api.call("GET", path)
    assert status == 400, (status, answer)
    assert names(answer, field), answer


async def test_canonical_query_values_still_work(api: Api) -> None:
    for path in ("/jobs?limit=5", "/tasks?limit=2", "/dead?limit=10", "/jobs?limit=5&kind=task&state=pending"):
        status, answer = await api.call("GET", path)
        assert status == 200, (path, status, answer)
    status, answer = await api.call("GET", "/logs?since=2024-01-01T00:00:00Z&until=2030-01-01T00:00:00%2B00:00"
                                           "&limit=10")
    assert status != 400, answer  # no logging service in this stack: what matters is the query passed
