"""Bulk data exports end to end: a real receptionist, registry, scheduler and handler on loopback, reading a
real data store the test fills (SQLite, and PostgreSQL for the tests marked to run on each), and the file
downloaded through ``GET /jobs/{id}/result``."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from receptionist import data_exports
from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from shared.datastore import DataStore, DataStoreError
from shared.kinds import data_export
from tests.handler.conftest import ON_EACH_DATA_STORE
from tests.support import wait_until

ADA = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "exporter"}


@pytest.fixture
async def store(data_store_url: str) -> AsyncIterator[DataStore]:
    """The data store the pipeline's handlers read, with three users, two articles and three comments."""
    opened = DataStore.from_url(data_store_url)
    await opened.open()
    await opened.upsert("users", [
        ("u1", "ada@example.com", "Ada", "author", 1, "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00"),
        ("u2", "bob@example.com", "Bob", "reader", 0, "2024-02-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00"),
        ("u3", "cy@example.com", "Cy, Jr.", "author", 1, "2024-03-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
    ])
    await opened.upsert("articles", [
        ("a1", "first-post", "First", "body", "u1", '["x", "y"]', "2024-01-05T00:00:00+00:00", "published"),
        ("a2", "draft-post", "Draft", "", "u1", "[]", None, "draft"),
    ])
    await opened.upsert("comments", [("c1", "a1", "u2", "nice", "2024-01-06T00:00:00+00:00"),
                               ("c2", "a1", "u3", "ok", "2024-01-07T00:00:00+00:00"),
                               ("c3", "a2", "u2", "hm", "2024-01-08T00:00:00+00:00")])
    yield opened
    await opened.close()


async def export(client: Any, body: dict[str, Any], headers: dict[str, str] = ADA) -> dict[str, Any]:
    resp = await client.post("/v1/exports", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def finished(client: Any, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view = await (await client.get(f"/v1/exports/{job_id}", headers=ADA)).json()
        assert view["state"] not in ("failed", "cancelled"), view
        return view if view["state"] == "finished" else None

    return await wait_until(done, what=f"export {job_id} finished")


async def download(client: Any, view: dict[str, Any], content_type: str) -> bytes:
    resp = await client.get(view["download_url"], headers=ADA)
    assert resp.status == 200 and resp.headers["Content-Type"] == content_type
    return await resp.read()


@ON_EACH_DATA_STORE
async def test_each_format_with_filters_and_fields(pipeline: Any, store: DataStore) -> None:
    receptionist, start_handler = pipeline
    await start_handler()
    accepted = await export(receptionist, {"resource": "users", "format": "ndjson",
                                           "filters": {"role": "author", "created_from": "2024-02-15T00:00:00Z"}})
    assert accepted["state"] == "pending" and accepted["download_url"] is None
    view = await finished(receptionist, accepted["id"])
    assert view["rows"] == 1 and view["download_url"] == f"/jobs/{accepted['id']}/result" and view["progress"] == 1
    lines = (await download(receptionist, view, "application/x-ndjson")).splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"id": "u3", "email": "cy@example.com", "name": "Cy, Jr.", "role": "author", "active": True,
         "created_at": "2024-03-01T00:00:00+00:00", "updated_at": "2024-03-01T00:00:00+00:00"}]

    accepted = await export(receptionist, {"resource": "users", "format": "csv", "filters": {"active": True},
                                           "fields": ["name", "active"]})
    text = (await download(receptionist, await finished(receptionist, accepted["id"]), "text/csv")).decode()
    assert list(csv.reader(io.StringIO(text))) == [["name", "active"], ["Ada", "true"], ["Cy, Jr.", "true"]]

    accepted = await export(receptionist, {"resource": "articles", "format": "json",
                                           "filters": {"status": "published", "author_id": "u1"},
                                           "fields": ["slug", "tags", "published_at"]})
    body = await download(receptionist, await finished(receptionist, accepted["id"]), "application/json")
    assert orjson.loads(body) == [{"slug": "first-post", "tags": ["x", "y"], "published_at": "2024-01-05T00:00:00+00:00"}]

    accepted = await export(receptionist, {"resource": "comments", "format": "json", "filters": {"user_id": "nobody"}})
    view = await finished(receptionist, accepted["id"])
    assert view["rows"] == 0 and orjson.loads(await download(receptionist, view, "application/json")) == []


@ON_EACH_DATA_STORE
async def test_pages_cover_every_row_once(pipeline: Any, store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_export, "PAGE_ROWS", 2)
    receptionist, start_handler = pipeline
    await start_handler()
    accepted = await export(receptionist, {"resource": "comments", "format": "csv", "fields": ["body"],
                                           "filters": {"article_id": "a1"}})
    view = await finished(receptionist, accepted["id"])
    assert view["rows"] == 2
    assert (await download(receptionist, view, "text/csv")).decode().splitlines() == ["body", "nice", "ok"]
    accepted = await export(receptionist, {"resource": "comments", "format": "json", "fields": ["body"]})
    body = await download(receptionist, await finished(receptionist, accepted["id"]), "application/json")
    assert orjson.loads(body) == [{"body": "nice"}, {"body": "ok"}, {"body": "hm"}]


@pytest.mark.parametrize(("body", "field"), [
    ({"resource": "books"}, "resource"),
    ({"resource": "users", "format": "xml"}, "format"),
    ({"resource": "users", "fields": ["id", "password"]}, "fields"),
    ({"resource": "users", "fields": []}, "fields"),
    ({"resource": "users", "filters": {"status": "draft"}}, "filters.status"),
    ({"resource": "users", "filters": {"active": "maybe"}}, "filters.active"),
    ({"resource": "articles", "filters": {"published_from": "yesterday"}}, "filters.published_from"),
    ({"resource": "comments", "filters": {"role": "admin"}}, "filters.role"),
    ({"resource": "users", "surprise": 1}, "surprise"),
    ({"resource": "users", "fields": ["id", "id"]}, "fields"),
    ({"resource": "users", "filters": {"created_from": "0001-01-01T00:00:00+01:00"}}, "filters.created_from"),
    ({"resource": "users", "filters": {"created_to": "9999-12-31T23:59:59-01:00"}}, "filters.created_to"),
    ({"resource": "users", "filters": {"created_from": "2024-03-01T00:00:00Z", "created_to": "2024-01-01"}},
     "filters.created_from"),
    ({"resource": "articles", "filters": {"published_from": "2024-01-01T01:00:00+00:00",
                                          "published_to": "2024-01-01T01:30:00+01:00"}}, "filters.published_from"),
])
async def test_bad_requests_are_400s(pipeline: Any, body: dict[str, Any], field: str) -> None:
    """Each refusal names the body field at fault, a filter as ``filters.<name>``; a time bound must have a
    moment in UTC (it is compared there) and a ``_from`` must not be after its ``_to``, or the job would fail
    every attempt."""
    receptionist, _ = pipeline
    resp = await receptionist.post("/v1/exports", json=body, headers=ADA)
    assert resp.status == 400, await resp.text()
    error = await resp.json()
    assert field in [d["field"] for d in error["details"]], error


async def test_exports_need_the_exporter_permission(pipeline: Any) -> None:
    receptionist, _ = pipeline
    for headers in ({"X-Conveyor-User": "bob", "X-Conveyor-Roles": "user"},
                    {"X-Conveyor-User": "bob", "X-Conveyor-Roles": "operator", "X-Conveyor-Permissions": "exporter"}):
        resp = await receptionist.post("/v1/exports", json={"resource": "users"}, headers=headers)
        assert resp.status == 403, await resp.text()


async def test_only_the_owner_sees_an_export(pipeline: Any, store: DataStore) -> None:
    receptionist, start_handler = pipeline
    await start_handler()
    accepted = await export(receptionist, {"resource": "users"})
    view = await finished(receptionist, accepted["id"])
    bob = {"X-Conveyor-User": "bob", "X-Conveyor-Roles": "user", "X-Conveyor-Permissions": "exporter"}
    operator = {"X-Conveyor-User": "olga", "X-Conveyor-Roles": "operator"}
    assert (await receptionist.get(f"/v1/exports/{accepted['id']}", headers=bob)).status == 404
    assert (await receptionist.get(f"/v1/exports/{accepted['id']}", headers=operator)).status == 404
    assert (await receptionist.get(view["download_url"], headers=bob)).status == 404
    assert (await receptionist.get("/v1/exports/not-a-uuid", headers=ADA)).status == 404
    task = await (await receptionist.post("/tasks", json={"description": "x"}, headers=ADA)).json()
    assert (await receptionist.get(f"/v1/exports/{task['id']}", headers=ADA)).status == 404


@ON_EACH_DATA_STORE
async def test_a_cancelled_export_stops_and_leaves_no_file(pipeline: Any, store: DataStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # One row a page, each followed by a progress report: far slower than a cancel takes to arrive.
    monkeypatch.setattr(data_export, "PAGE_ROWS", 1)
    n = 20_000
    await store.upsert("users", [(f"x{i:05}", f"x{i}@example.com", "X", "reader", 1, "2024-01-01T00:00:00+00:00",
                            "2024-01-01T00:00:00+00:00") for i in range(n)])
    receptionist, start_handler = pipeline
    await start_handler(heartbeat_s=0.05, progress_interval_s=0.0)
    accepted = await export(receptionist, {"resource": "users", "format": "csv"})
    url = f"/v1/exports/{accepted['id']}"

    async def under_way() -> bool:
        view = await (await receptionist.get(url, headers=ADA)).json()
        return view["state"] == "processing" and view["progress"] > 0

    await wait_until(under_way, what="the export under way")
    files = [path for path in (tmp_path / "data_export").rglob("*") if path.is_file()]
    assert len(files) == 1 and files[0].stat().st_size > 0  # written as it goes
    assert (await receptionist.delete(f"/jobs/{accepted['id']}", headers=ADA)).status in (200, 202)

    async def cancelled() -> dict[str, Any] | None:
        view = await (await receptionist.get(url, headers=ADA)).json()
        return view if view["state"] == "cancelled" else None

    view = await wait_until(cancelled, what="the export cancelled")
    assert view["download_url"] is None and view["rows"] is None and view["progress"] < 1
    await wait_until(lambda: _no_files(tmp_path / "data_export"), what="the partial file removed")
    assert (await receptionist.get(f"/jobs/{accepted['id']}/result", headers=ADA)).status == 404


async def _no_files(root: Path) -> bool:
    return not any(path.is_file() for path in root.rglob("*"))


@pytest.fixture
async def streamer(aiohttp_client: Any, core: Any, tmp_path: Path, data_store_url: str) -> Any:
    """A receptionist that reads the test's data store for ``GET /v1/exports``."""
    return await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, time_scale=0, data_store_url=data_store_url)))


@ON_EACH_DATA_STORE
async def test_rows_stream_straight_from_the_store(streamer: Any, store: DataStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_export, "PAGE_ROWS", 2)
    resp = await streamer.get("/v1/exports?resource=users&format=csv&fields=id,name&active=true", headers=ADA)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert 'filename="users-export.csv"' in resp.headers["Content-Disposition"]
    assert list(csv.reader(io.StringIO(await resp.text()))) == [["id", "name"], ["u1", "Ada"], ["u3", "Cy, Jr."]]
    resp = await streamer.get("/v1/exports?resource=comments&fields=body&article_id=a1", headers=ADA)
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert [orjson.loads(line) for line in (await resp.read()).splitlines()] == [{"body": "nice"}, {"body": "ok"}]
    resp = await streamer.get("/v1/exports?resource=articles&format=json&fields=slug&published_to=2024-06-01",
                              headers=ADA)
    assert orjson.loads(await resp.read()) == [{"slug": "first-post"}]
    assert await store.count("users") == 3  # the receptionist only read


async def test_a_stream_checks_its_request_and_its_caller(streamer: Any, store: DataStore) -> None:
    # Each refusal names the query parameter at fault: a filter by its own name.
    for url, field in (("/v1/exports?resource=users&fields=id,secret", "fields"),
                       ("/v1/exports?resource=users&fields=id,id", "fields"),
                       ("/v1/exports?resource=users&active=maybe", "active"),
                       ("/v1/exports?resource=users&status=draft", "status"),
                       ("/v1/exports?format=csv", "resource"),
                       # A bound with no moment in UTC (it is compared there), and bounds out of order.
                       ("/v1/exports?resource=users&created_to=9999-12-31T23:59:59-01:00", "created_to"),
                       ("/v1/exports?resource=users&created_from=0001-01-01T00:00:00%2B01:00", "created_from"),
                       ("/v1/exports?resource=users&created_from=2024-03-01&created_to=2024-02-01", "created_from")):
        resp = await streamer.get(url, headers=ADA)
        assert resp.status == 400, url
        assert field in [d["field"] for d in (await resp.json())["details"]], url
    no_permission = {"X-Conveyor-User": "bob", "X-Conveyor-Roles": "user"}
    assert (await streamer.get("/v1/exports?resource=users", headers=no_permission)).status == 403


async def _stalled_stream(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and then reads nothing (its receive window shut tight)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    head = "".join(f"{name}: {value}\r\n" for name, value in ADA.items())
    await asyncio.get_running_loop().sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    return sock


@ON_EACH_DATA_STORE
async def test_a_stalled_stream_is_ended_and_lets_go_of_the_store(streamer: Any, store: DataStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stops reading a streamed export is cut off once it has taken nothing for
    ``STALL_S``: on PostgreSQL each stream holds a pooled connection and a snapshot while it lasts, so
    stalled clients as many as the pool (8) had every later export wait for ever, and kept the snapshots
    open (SQLite holds nothing between pages)."""
    monkeypatch.setattr(data_exports, "STALL_S", 0.5)
    await store.upsert("users", [(f"s{i:05}", f"s{i}@example.com", "N" * 500, "reader", 1,
                                  "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00") for i in range(15_000)])
    port = streamer.server.port
    stalled = [await _stalled_stream(port, "/v1/exports?resource=users&format=json") for _ in range(9)]
    try:
        await asyncio.sleep(1.5)  # each stream fills the sockets' buffers, then stalls, then is ended
        resp = await asyncio.wait_for(streamer.get("/v1/exports?resource=users&fields=id&role=author",
                                                   headers=ADA), timeout=10)
        assert resp.status == 200
        assert [orjson.loads(line)["id"] for line in (await resp.read()).splitlines()] == ["u1", "u3"]
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(("query", "field"), [
    ("resource=users&format=csv&fields=id&fields=email", "fields"),
    ("resource=users&role=author&role=reader", "role"),
    ("resource=users&resource=articles", "resource"),
    ("resource=users&format=csv&format=json", "format"),
])
async def test_a_stream_parameter_given_twice_is_a_400(streamer: Any, store: DataStore, query: str,
                                                       field: str) -> None:
    """As on every route: a parameter given twice is refused, not read as its first value."""
    resp = await streamer.get(f"/v1/exports?{query}", headers=ADA)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["details"] == [{"field": field, "message": "given more than once"}]


@ON_EACH_DATA_STORE
async def test_a_stream_without_a_data_store_is_a_503(aiohttp_client: Any, core: Any, tmp_path: Path,
                                                      data_store_url: str) -> None:
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, data_store_url=data_store_url)))
    for _ in range(2):
        resp = await receptionist.get("/v1/exports?resource=users", headers=ADA)
        assert resp.status == 503, await resp.text()
    assert not (tmp_path / "data.db").exists()  # reading creates nothing (no file, no tables)
    with pytest.raises(DataStoreError):
        await DataStore.from_url(data_store_url, read_only=True).open()
    # Once a handler has made the store, the same receptionist reads it.
    async with DataStore.from_url(data_store_url) as store:
        await store.upsert("users", [("u1", "ada@example.com", "Ada", "author", 1, "2024-01-01T00:00:00+00:00",
                                      "2024-01-01T00:00:00+00:00")])
    resp = await receptionist.get("/v1/exports?resource=users&fields=id", headers=ADA)
    assert resp.status == 200 and orjson.loads(await resp.read()) == {"id": "u1"}


#: Names a spreadsheet would run as formulas, and what a CSV export makes of them (OWASP's advice: a
#: leading single quote, and the cell quoted).
FORMULAS = {"u4": ('=HYPERLINK("http://evil.example","click")', "'=HYPERLINK(\"http://evil.example\",\"click\")"),
            "u5": ("+1+2", "'+1+2"), "u6": ("-2+3", "'-2+3"), "u7": ("@SUM(A1)", "'@SUM(A1)"),
            "u8": ("\tTAB", "'\tTAB"), "u9": ("\r=1", "'\r=1")}


async def _add_formulas(store: DataStore) -> None:
    await store.upsert("users", [(user_id, f"{user_id}@example.com", name, "reader", 1, "2024-04-01T00:00:00+00:00",
                            "2024-04-01T00:00:00+00:00") for user_id, (name, _) in FORMULAS.items()])


def _check_neutralised(text: str, escaped: bool) -> None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    names = {row[0]: row[1] for row in rows[1:]}
    for user_id, (raw, safe) in FORMULAS.items():
        assert names[user_id] == (safe if escaped else raw), (user_id, names[user_id])
    assert names["u1"] == "Ada" and names["u3"] == "Cy, Jr."  # the harmless ones as they are
    if escaped:
        assert "\n\"u5\",\"'+1+2\"\n" in text and "\nu1,Ada\n" in text  # quoted, the row it is in only


@ON_EACH_DATA_STORE
async def test_csv_exports_neutralise_formulas(pipeline: Any, store: DataStore, streamer: Any) -> None:
    await _add_formulas(store)
    receptionist, start_handler = pipeline
    await start_handler()
    accepted = await export(receptionist, {"resource": "users", "format": "csv", "fields": ["id", "name"]})
    _check_neutralised((await download(receptionist, await finished(receptionist, accepted["id"]),
                                       "text/csv")).decode(), escaped=True)
    resp = await streamer.get("/v1/exports?resource=users&format=csv&fields=id,name", headers=ADA)
    _check_neutralised(await resp.text(), escaped=True)
    resp = await streamer.get("/v1/exports?resource=users&format=ndjson&fields=id,name", headers=ADA)
    assert {"id": "u5", "name": "+1+2"} in [orjson.loads(line) for line in (await resp.read()).splitlines()]


async def test_the_setting_turns_the_neutralising_off(pipeline: Any, store: DataStore, aiohttp_client: Any, core: Any,
                                                      tmp_path: Path, data_store_url: str) -> None:
    await _add_formulas(store)
    _, start_handler = pipeline
    await start_handler()
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, time_scale=0, data_store_url=data_store_url, csv_escape_formulas=False)))
    accepted = await export(receptionist, {"resource": "users", "format": "csv", "fields": ["id", "name"]})
    _check_neutralised((await download(receptionist, await finished(receptionist, accepted["id"]),
                                       "text/csv")).decode(), escaped=False)
    resp = await receptionist.get("/v1/exports?resource=users&format=csv&fields=id,name", headers=ADA)
    _check_neutralised(await resp.text(), escaped=False)
