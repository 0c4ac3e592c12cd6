"""Every newer kind through the gateway of a live stack (``conveyor up``): tasks and their event stream,
an ECG, a bulk import and its error report, exports (as a job and streamed), ownership, bad input, and
the expiry of a result."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.e2e.conftest import Stack
from tests.sse import SseReader
from tests.support import wait_until

ADMIN_PASSWORD = "admin password for e2e"
USERS_CSV = (
    "id,email,name,role,active,created_at,updated_at\n"
    "u1,ada@example.com,Ada,author,true,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z\n"
    "u2,not-an-email,Bob,reader,true,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z\n"
    "u3,cy@example.com,Cy,reader,false,2026-01-02T00:00:00Z,2026-01-02T00:00:00Z\n"
)


async def login(stack: Stack, username: str, password: str) -> dict[str, str]:
    status, answer, _ = await stack.request("POST", "/auth/token", json={"username": username, "password": password})
    assert status == 200, answer
    return {"Authorization": f"Bearer {answer['access_token']}"}


async def until_state(stack: Stack, path: str, headers: dict[str, str], state: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, body, _ = await stack.request("GET", path, headers=headers)
        assert status == 200, body
        return body if body["state"] == state else None

    return await wait_until(reached, timeout_s=30, interval_s=0.1, what=f"{path} {state}")


async def test_every_kind_through_the_gateway(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0", "--rate-limit", "0", env={
        "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD, "RECEPTIONIST_ARTIFACT_TTL_S": "3",
        "RECEPTIONIST_ARTIFACT_SWEEP_INTERVAL_S": "0"})
    admin = await login(stack, "admin", ADMIN_PASSWORD)
    ids = {}
    for name, permissions in (("alice", ["exporter", "importer"]), ("bob", [])):
        status, body, _ = await stack.request("POST", "/users", headers=admin, json={
            "username": name, "password": f"{name} password", "roles": ["user"], "permissions": permissions})
        assert status == 201, body
        ids[name] = body["id"]
    alice, bob = await login(stack, "alice", "alice password"), await login(stack, "bob", "bob password")

    # Tasks, and the events of their changes as server-sent events.
    async with stack.session.get(stack.url + "/events", params={"topic": "task.created,task.updated"},
                                 headers=alice, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        events = SseReader(resp)
        status, task, _ = await stack.request("POST", "/tasks", headers=alice,
                                              json={"description": "e2e", "fail_probability": 0})
        assert status == 201
        created = await events.event()
        assert created.event == "task.created"
        assert created.json()["task_id"] == task["id"] and created.json()["user_id"] == ids["alice"]
        statuses = []
        while "SUCCESS" not in statuses:
            block = await events.event()
            assert block.event == "task.updated" and block.json()["task_id"] == task["id"]
            statuses.append(block.json()["status"])
        assert statuses[0] == "RUNNING"
    status, listed, _ = await stack.request("GET", "/tasks", headers=alice)
    assert [(t["id"], t["status"]) for t in listed["items"]] == [(task["id"], "SUCCESS")]
    assert (await stack.request("GET", f"/tasks/{task['id']}", headers=bob))[0] == 404

    # An ECG: zero crossings per lead; another user cannot see it; a bad ECG is a 400 naming the field.
    status, ecg, _ = await stack.request("POST", "/ecgs", headers=alice, json={
        "id": "e2e-ecg", "date": "2026-11-22T10:00:00Z",
        "leads": [{"name": "I", "signal": [1, -1, 0, 2, -3]}, {"name": "V2", "number_of_samples": 3,
                                                               "signal": [5, 0, 5]}]})
    assert status == 201, ecg
    done = await until_state(stack, f"/ecgs/{ecg['id']}", alice, "finished")
    assert done["result"] == {"leads": [{"name": "I", "zero_crossings": 3}, {"name": "V2", "zero_crossings": 0}]}
    assert (await stack.request("GET", f"/ecgs/{ecg['id']}", headers=bob))[0] == 404
    status, body, _ = await stack.request("POST", "/ecgs", headers=alice, json={
        "date": "2026-11-22T10:00:00Z", "leads": [{"name": "V7", "signal": [1]}]})
    assert status == 400 and "leads.0.name" in {d["field"] for d in body["details"]}

    # A bulk import: the good records in, the bad one reported with its line.
    form = aiohttp.FormData()
    form.add_field("file", USERS_CSV.encode(), filename="users.csv", content_type="text/csv")
    status, imported, _ = await stack.request("POST", "/v1/imports", params={"resource": "users"},
                                              headers=alice, data=form)
    assert status == 201, imported
    report = await until_state(stack, f"/v1/imports/{imported['id']}", alice, "finished")
    assert report["counters"] == {"read": 3, "imported": 2, "rejected": 1}
    assert [e["line"] for e in report["first_errors"]] == [3] and "email" in report["first_errors"][0]["reason"]
    assert (await stack.request("GET", f"/v1/imports/{imported['id']}", headers=bob))[0] == 404
    # Only holders of `importer` may import: records keep no owner, an import may overwrite anyone's.
    form = aiohttp.FormData()
    form.add_field("file", USERS_CSV.encode(), filename="users.csv", content_type="text/csv")
    status, refused, _ = await stack.request("POST", "/v1/imports", params={"resource": "users"}, headers=bob,
                                             data=form)
    assert status == 403 and refused["details"] == [{"field": "permission", "message": "importer required"}]

    # Exports: streamed, and as a job with a download; only holders of `exporter` may.
    status, streamed, _ = await stack.request("GET", "/v1/exports", headers=alice,
                                              params={"resource": "users", "format": "csv", "fields": "id,email"})
    assert status == 200 and streamed.decode().splitlines() == ["id,email", "u1,ada@example.com",
                                                                "u3,cy@example.com"]
    body = {"resource": "users", "format": "ndjson", "filters": {"active": True}, "fields": ["id", "email"]}
    assert (await stack.request("POST", "/v1/exports", headers=bob, json=body))[0] == 403
    status, export, _ = await stack.request("POST", "/v1/exports", headers=alice, json=body)
    assert status == 201, export
    finished = await until_state(stack, f"/v1/exports/{export['id']}", alice, "finished")
    status, data, _ = await stack.request("GET", finished["download_url"], headers=alice)
    assert status == 200 and data.decode().splitlines() == ['{"id":"u1","email":"ada@example.com"}']
    assert (await stack.request("GET", finished["download_url"], headers=bob))[0] == 404

    # Results expire (RECEPTIONIST_ARTIFACT_TTL_S=3 here): the download becomes a 410.
    async def expired() -> bool:
        return (await stack.request("GET", finished["download_url"], headers=alice))[0] == 410

    await wait_until(expired, timeout_s=15, interval_s=0.25, what="the export's result to expire")
