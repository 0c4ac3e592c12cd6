"""A NUL character (U+0000) in the text of a submission: PostgreSQL's text and jsonb cannot hold one, not even
escaped, so the registry's PostgreSQL store answered such a payload with a 500 (the client a 502) where the
memory and SQLite stores took it. Every backend now refuses it alike, a 400 naming the field, before anything
is registered; the receptionist runs here in front of a real registry on memory and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from receptionist.app import create_app
from receptionist.jobs import refuse_nul
from receptionist.settings import Settings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from shared.errors import ValidationFailed

USER = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "exporter"}
ECG = {"date": "2023-07-30T10:15:00Z", "leads": [{"name": "I", "signal": [1, -1, 1]}]}


@pytest.fixture(params=["memory", "postgres"])
async def client(request: pytest.FixtureRequest, aiohttp_server: Any, aiohttp_client: Any,
                 tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    store_url = "memory://" if request.param == "memory" else request.getfixturevalue("postgres_url")
    registry = await aiohttp_server(registry_app(RegistrySettings(store_url=store_url)))
    scheduler = await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://")))
    registry_url = str(registry.make_url("")).rstrip("/")
    app = create_app(Settings(registry_url=registry_url, scheduler_url=str(scheduler.make_url("")).rstrip("/"),
                              artifacts_dir=str(tmp_path), data_store_url=f"sqlite:///{tmp_path}/data.db",
                              sweep_interval_s=0))
    yield await aiohttp_client(app), registry_url


async def registered(registry_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(registry_url + "/counts") as resp:
        return sum((await resp.json()).values())


@pytest.mark.parametrize(("method", "route", "body", "field"), [
    ("POST", "/tasks", {"description": "count\u0000the sheep"}, "description"),
    ("POST", "/tasks", {"description": "\u0000"}, "description"),
    ("POST", "/jobs", {"kind": "task", "payload": {"description": "x\u0000"}}, "payload.description"),
    ("POST", "/schedules", {"kind": "task", "payload": {"description": "x\u0000"}, "every_s": 60},
     "payload.description"),
    ("POST", "/ecgs", {**ECG, "id": "label\u0000"}, "id"),
    ("POST", "/v1/exports", {"resource": "articles", "filters": {"author_id": "a\u0000"}}, "filters.author_id"),
    ("POST", "/v1/exports", {"resource": "comments", "filters": {"user_id": "\u0000"}}, "filters.user_id"),
    ("POST", "/jobs", {"kind": "data_export", "payload": {"resource": "comments",
                                                         "filters": {"article_id": "1\u0000"}}},
     "payload.filters.article_id"),
    ("GET", "/v1/exports?resource=comments&article_id=a%00", None, "article_id"),
    ("GET", "/v1/exports?resource=articles&author_id=%00a", None, "author_id"),
])
async def test_a_nul_in_text_is_a_400_naming_the_field(client: tuple[Any, str], method: str, route: str,
                                                        body: Any, field: str) -> None:
    http, registry_url = client
    resp = await http.request(method, route, json=body, headers=USER)
    answer = await resp.json()
    assert resp.status == 400, answer
    assert {detail["field"]: detail["message"] for detail in answer["details"]}[field] == (
        "must not contain a NUL character (U+0000)"), answer
    assert await registered(registry_url) == 0


async def test_text_without_a_nul_is_kept_as_sent(client: tuple[Any, str]) -> None:
    http, _ = client
    odd = "\u0001 \U0001f600 \u202e \ufffd " + "x" * 900
    resp = await http.post("/tasks", json={"description": odd}, headers=USER)
    assert resp.status == 201, await resp.text()
    task = await resp.json()
    assert (await (await http.get(f"/tasks/{task['id']}", headers=USER)).json())["description"] == odd


def test_a_payload_of_a_kind_of_your_own_is_looked_through() -> None:
    """A plugin kind's payload may be free-form: the receptionist walks it, keys included."""
    refuse_nul({"image": "cat", "tags": ["a", {"b": "c"}], "n": 1, "ok": None})
    for payload, path in (({"image": "c\x00t"}, "payload.image"), ({"tags": ["a", {"b": "\x00"}]}, "payload.tags.1.b"),
                          ({"meta": {"k\x00": 1}}, "payload.meta.k\x00")):
        with pytest.raises(ValidationFailed) as refused:
            refuse_nul(payload, "payload.")
        assert refused.value.details == [{"field": path, "message": "must not contain a NUL character (U+0000)"}]
