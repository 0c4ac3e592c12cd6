"""Bulk data imports end to end: a real receptionist, registry, scheduler and handler on loopback, files
uploaded (or served from a URL) and imported into a real data store (SQLite, and PostgreSQL for the tests
that read it)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from receptionist.app import create_app as receptionist_app
from receptionist.jobs import KEY_REUSED
from receptionist.settings import Settings as ReceptionistSettings
from shared.api import DataImportOut
from shared.datastore import DataStore
from shared.kinds.data_import import BATCH_SIZE
from tests.handler.conftest import IMPORTER, ON_EACH_DATA_STORE
from tests.support import stored_keys, wait_until

USERS_CSV = ("id,email,name,role,active\n"
             "u1,ada@example.com,Ada,author,true\n"
             "u2,bob@example.com,Bob,reader,false\n"
             "u3,bad-email,Cy,reader,true\n"
             "u4,dee@example.com,Dee,owner,true\n")


def upload(content: str | bytes, filename: str = "users.csv", content_type: str | None = None,
           field: str = "file") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(field, io.BytesIO(content.encode() if isinstance(content, str) else content), filename=filename,
                   content_type=content_type or "application/octet-stream")
    return form


def ndjson(*records: dict[str, Any]) -> str:
    return "".join(orjson.dumps(r).decode() + "\n" for r in records)


async def submit(client: Any, resource: str, data: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await client.post(f"/v1/imports?resource={resource}", data=data, **kwargs)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def finished(client: Any, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view = await (await client.get(f"/v1/imports/{job_id}", headers=headers)).json()
        assert view["state"] not in ("failed", "cancelled"), view
        return view if view["state"] == "finished" else None

    return await wait_until(done, what=f"import {job_id} finished")


@ON_EACH_DATA_STORE
async def test_a_csv_upload_is_imported_with_a_report_of_the_bad_lines(importing: Any, data_store_url: str) -> None:
    receptionist, start_handler = importing
    await start_handler()
    accepted = await submit(receptionist, "users", upload(USERS_CSV))
    # The submission answers the import as GET /v1/imports/{id} shows it (a handler may have moved it on).
    assert set(accepted) == set(DataImportOut.model_fields) and accepted["resource"] == "users"
    view = await finished(receptionist, accepted["id"])
    listed = await (await receptionist.get("/v1/imports")).json()
    assert listed == {"items": [view], "next_cursor": None}
    assert view["counters"] == {"read": 4, "imported": 2, "rejected": 2}
    assert [e["line"] for e in view["first_errors"]] == [4, 5]
    assert view["error_report_url"] == f"/v1/imports/{accepted['id']}/errors"
    resp = await receptionist.get(view["error_report_url"])
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    report = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert report[0] == {"line": 4, "reason": "email 'bad-email' is not a valid address"}
    assert report[1]["line"] == 5 and "role 'owner'" in report[1]["reason"]
    async with DataStore.from_url(data_store_url, read_only=True) as store:
        assert await store.count("users") == 2 and (await store.get("users", "u2"))["active"] == 0  # type: ignore[index]


@ON_EACH_DATA_STORE
async def test_resources_in_order_and_importing_twice_changes_nothing(importing: Any, data_store_url: str) -> None:
    receptionist, start_handler = importing
    await start_handler()
    articles = ndjson(
        {"id": "a1", "slug": "first-post", "title": "First", "body": "b", "author_id": "u1", "tags": ["x"],
         "status": "published", "published_at": "2024-01-01T00:00:00Z"},
        {"id": "a2", "slug": "by-nobody", "title": "T", "author_id": "u9", "status": "draft"})
    comments = ndjson({"id": "c1", "article_id": "a1", "user_id": "u2", "body": "nice"},
                      {"id": "c2", "article_id": "a2", "user_id": "u2", "body": "no article"})
    for _ in range(2):
        views = []
        for resource, data in (("users", upload(USERS_CSV)),
                               ("articles", upload(articles, "articles.ndjson")),
                               ("comments", upload(comments, "c", "application/x-ndjson"))):
            views.append(await finished(receptionist, (await submit(receptionist, resource, data))["id"]))
        assert [v["counters"] for v in views] == [{"read": 4, "imported": 2, "rejected": 2},
                                                  {"read": 2, "imported": 1, "rejected": 1},
                                                  {"read": 2, "imported": 1, "rejected": 1}]
        assert views[1]["first_errors"] == [{"line": 2, "reason": "author 'u9' does not exist"}]
        assert views[2]["first_errors"] == [{"line": 2, "reason": "article 'a2' does not exist"}]
    async with DataStore.from_url(data_store_url, read_only=True) as store:
        assert [await store.count(t) for t in ("users", "articles", "comments")] == [2, 1, 1]


async def test_an_idempotency_key_gets_the_first_import(importing: Any) -> None:
    receptionist, _ = importing
    headers = {"Idempotency-Key": "users-2024"}
    first = await submit(receptionist, "users", upload(USERS_CSV), headers=headers)
    resp = await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV), headers=headers)
    assert resp.status == 200 and (await resp.json())["id"] == first["id"]
    resp = await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV + "u5,e@x.io,E,reader,true\n"),
                                   headers=headers)
    assert resp.status == 409 and (await resp.json())["details"] == KEY_REUSED  # the header, not the derived id


async def test_bad_requests_are_json_errors(importing: Any, aiohttp_client: Any, core: Any, tmp_path: Path) -> None:
    receptionist, _ = importing

    async def error(resp: aiohttp.ClientResponse, status: int, field: str) -> None:
        assert resp.status == status, await resp.text()
        body = await resp.json()
        assert body["error"] and field in [d["field"] for d in body["details"]], body

    await error(await receptionist.post("/v1/imports?resource=posts", data=upload(USERS_CSV)), 400, "resource")
    await error(await receptionist.post("/v1/imports", data=upload(USERS_CSV)), 400, "resource")
    await error(await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV, field="other")),
                400, "file")
    await error(await receptionist.post("/v1/imports?resource=users", data=upload("", "users.csv")), 400, "file")
    await error(await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV, "users.txt", "text/plain")),
                415, "file")
    await error(await receptionist.post("/v1/imports?resource=users", data=b"id\n1\n",
                                        headers={"Content-Type": "text/csv"}), 415, "Content-Type")
    for url in ("ftp://example.com/users.csv", "not a url", "http://"):
        await error(await receptionist.post("/v1/imports?resource=users", json={"url": url}), 400, "url")
    await error(await receptionist.post("/v1/imports?resource=users", json={"uri": "http://x/y.csv"}), 400, "uri")

    small = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, max_upload_bytes=2048)), headers=IMPORTER)
    await error(await small.post("/v1/imports?resource=users", data=upload(USERS_CSV * 200)), 413, "file")
    # No Content-Length: the limit is checked as the file streams in.
    await error(await small.post("/v1/imports?resource=users", data=upload(USERS_CSV * 200), chunked=True),
                413, "file")

    async def big_stream() -> Any:
        for _ in range(100):
            yield USERS_CSV.encode() * 5

    form = aiohttp.FormData()
    form.add_field("file", big_stream(), filename="users.csv")
    await error(await small.post("/v1/imports?resource=users", data=form), 413, "file")
    assert await stored_keys(tmp_path, "data_import/") == []  # nothing of a refused upload stays behind


async def test_only_the_owner_sees_an_import(importing: Any) -> None:
    receptionist, start_handler = importing
    await start_handler()
    ada = {"X-Conveyor-User": "ada", "X-Conveyor-Roles": "user"}
    accepted = await submit(receptionist, "users", upload(USERS_CSV), headers=ada)
    await finished(receptionist, accepted["id"], headers=ada)
    for headers in ({"X-Conveyor-User": "bob", "X-Conveyor-Roles": "user"},
                    {"X-Conveyor-User": "olga", "X-Conveyor-Roles": "operator"}):
        for path in (f"/v1/imports/{accepted['id']}", f"/v1/imports/{accepted['id']}/errors"):
            assert (await receptionist.get(path, headers=headers)).status == 404
    assert (await receptionist.get("/v1/imports/not-a-uuid", headers=ada)).status == 404
    admin = {"X-Conveyor-User": "root", "X-Conveyor-Roles": "admin"}
    assert (await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV), headers=admin)).status == 403
    # A job of another kind is no import.
    task = await (await receptionist.post("/tasks", json={"description": "x"}, headers=ada)).json()
    assert (await receptionist.get(f"/v1/imports/{task['id']}", headers=ada)).status == 404



async def test_an_import_needs_the_importer_permission(pipeline: Any, aiohttp_client: Any, core: Any,
                                                      tmp_path: Path) -> None:
    """Records keep no owner, so an import may overwrite anyone's: only holders of ``importer`` may import,
    as only holders of ``exporter`` may read them all. Nothing is registered for a refused upload."""
    receptionist, _ = pipeline
    resp = await receptionist.post("/v1/imports?resource=users", data=upload(USERS_CSV))
    assert resp.status == 401
    assert (await resp.json())["details"] == [{"field": "Authorization", "message": "missing"}]
    for permissions in ("", "exporter"):
        resp = await receptionist.post("/v1/imports?resource=users", json={"url": "https://example.com/u.csv"},
                                       headers={"X-Conveyor-User": "bob", "X-Conveyor-Roles": "user",
                                                "X-Conveyor-Permissions": permissions})
        assert resp.status == 403
        assert (await resp.json())["details"] == [{"field": "permission", "message": "importer required"}]
    assert (await (await receptionist.get("/jobs")).json())["items"] == []
    assert await stored_keys(tmp_path, "data_import/") == []
    await submit(receptionist, "users", upload(USERS_CSV), headers=IMPORTER)
    # An operator who wants imports open to everyone says so.
    open_to_all = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path / "open"),
        sweep_interval_s=0, kind_permissions={"data_export": "exporter"})))
    await submit(open_to_all, "users", upload(USERS_CSV))

@ON_EACH_DATA_STORE
async def test_a_cancelled_import_stops_between_batches(importing: Any, data_store_url: str) -> None:
    receptionist, start_handler = importing
    await start_handler(heartbeat_s=0.05, progress_interval_s=0.0)
    n = 300_000
    rows = "".join(f"u{i},user{i}@example.com,U,reader,true\n" for i in range(n))
    accepted = await submit(receptionist, "users", upload("id,email,name,role,active\n" + rows))

    async def under_way() -> bool:
        view = await (await receptionist.get(f"/v1/imports/{accepted['id']}")).json()
        return view["state"] == "processing" and view["progress"] > 0

    await wait_until(under_way, what="the import under way")
    assert (await receptionist.delete(f"/jobs/{accepted['id']}")).status in (200, 202)

    async def cancelled() -> dict[str, Any] | None:
        view = await (await receptionist.get(f"/v1/imports/{accepted['id']}")).json()
        return view if view["state"] == "cancelled" else None

    view = await wait_until(cancelled, what="the import cancelled")
    assert view["error_report_url"] is None
    async with DataStore.from_url(data_store_url, read_only=True) as store:
        imported = await store.count("users")
    # Whole batches only, and not the whole file.
    assert 0 < imported < n and imported % BATCH_SIZE == 0


async def test_an_upload_may_be_larger_than_the_apps_client_max_size(importing: Any, aiohttp_client: Any, core: Any,
                                                                      tmp_path: Path) -> None:
    _, start_handler = importing
    await start_handler()
    receptionist = await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, max_json_bytes=1024, max_ecg_bytes=2048)), headers=IMPORTER)
    assert receptionist.app._client_max_size == 2048
    rows = "".join(f"u{i},user{i}@example.com,U,reader,true\n" for i in range(2000))
    accepted = await submit(receptionist, "users", upload("id,email,name,role,active\n" + rows))
    view = await finished(receptionist, accepted["id"])
    assert view["counters"] == {"read": 2000, "imported": 2000, "rejected": 0}


async def test_a_malformed_multipart_header_is_a_400(importing: Any) -> None:
    receptionist, _ = importing
    body = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\x00bad header\r\n\r\n1\r\n--b--\r\n'
    resp = await receptionist.post("/v1/imports?resource=users", data=body,
                                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status == 400 and (await resp.json())["error"] == "malformed multipart body"


async def _no_jobs(client: Any) -> bool:
    return (await (await client.get("/jobs")).json())["items"] == []


def _part(name: str, filename: str, content: str) -> bytes:
    return (f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: text/csv\r\n\r\n{content}\r\n").encode()


async def test_a_second_file_part_is_a_400_and_nothing_is_registered(importing: Any, tmp_path: Path) -> None:
    receptionist, _ = importing
    for body, field in ((_part("file", "a.csv", USERS_CSV) + _part("file", "b.csv", USERS_CSV) + b"--b--\r\n", "file"),
                        (_part("file", "a.csv", USERS_CSV) + _part("more", "b.csv", USERS_CSV) + b"--b--\r\n", "more"),
                        (_part("other", "a.csv", USERS_CSV) + _part("file", "b.csv", USERS_CSV) + b"--b--\r\n",
                         "other")):
        resp = await receptionist.post("/v1/imports?resource=users", data=body,
                                       headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert resp.status == 400, await resp.text()
        assert field in [d["field"] for d in (await resp.json())["details"]]
    assert await _no_jobs(receptionist)
    assert await stored_keys(tmp_path, "data_import/") == []


async def test_a_body_without_its_closing_boundary_is_a_400_and_nothing_is_registered(importing: Any,
                                                                                      tmp_path: Path) -> None:
    receptionist, _ = importing
    for body in (_part("file", "a.csv", USERS_CSV), _part("file", "a.csv", USERS_CSV)[:-2],
                 _part("file", "a.csv", USERS_CSV) + b"--b"):
        resp = await receptionist.post("/v1/imports?resource=users", data=body,
                                       headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"] == "malformed multipart body"
    assert await _no_jobs(receptionist)
    assert await stored_keys(tmp_path, "data_import/") == []


@pytest.mark.parametrize(("header", "error"), [
    ("id,email,role,email", "the CSV header names email more than once"),
    # ID is not id, nor Name name: their cells would be dropped, and the user get a new id.
    ("ID,email,role,Name", "the CSV header names columns the resource does not have: 'ID', 'Name' (its columns: "
                           "id, email, name, role, active, created_at, updated_at)"),
])
async def test_a_csv_header_it_cannot_use_fails_the_import_at_once(importing: Any, header: str, error: str) -> None:
    receptionist, start_handler = importing
    await start_handler()
    accepted = await submit(receptionist, "users", upload(f"{header}\nu1,a@example.com,admin,x\n"))

    async def failed() -> dict[str, Any] | None:
        view = await (await receptionist.get(f"/v1/imports/{accepted['id']}")).json()
        assert view["state"] != "finished", view
        return view if view["state"] == "failed" else None

    view = await wait_until(failed, what="the import failed")
    assert view["error"] == f"InvalidInput: {error}"
    job = await (await receptionist.get(f"/jobs/{accepted['id']}")).json()
    assert len(job["errors"]) == 1  # failed at its first attempt: never retried
