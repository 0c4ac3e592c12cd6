"""Operators see states, not contents: every route that shows an operator someone else's job, its errors, its
events or its log lines, through the real gateway in front of the real receptionist, registry, scheduler and
logging service on loopback. The jobs fail as a handler fails them (dequeue, nack, report to the registry),
with errors that quote their payloads, as a failed fetch quotes its URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from logging_service.app import create_app as logging_app
from logging_service.settings import Settings as LoggingSettings
from receptionist.app import create_app as receptionist_app
from receptionist.redaction import redact_error, redact_job, redact_log_line
from receptionist.settings import Settings as ReceptionistSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings
from tests.sse import SseReader

TOKEN = "internal-token-for-redaction-tests"
INTERNAL = {"X-Service-Token": TOKEN}
PASSWORD = "correct horse battery"
#: In every payload value and every error of alice's jobs; no operator's answer may carry it.
SECRET = "s3cret"
URL = f"https://books.example.com/{SECRET}.docx?token={SECRET}"
ECG = {"id": f"ecg-{SECRET}", "date": "2023-07-30T10:15:00+00:00", "leads": [{"name": "I", "signal": [1, -1, 1]}]}


class Stack:
    def __init__(self, gateway: TestClient, registry: str, scheduler: str, logs: str) -> None:
        self.gateway = gateway
        self.registry = registry
        self.scheduler = scheduler
        self.logs = logs
        self.session = gateway.session

    async def internal(self, method: str, url: str, **kwargs: Any) -> Any:
        async with self.session.request(method, url, headers=INTERNAL, **kwargs) as resp:
            assert resp.status < 300, (url, await resp.text())
            return await resp.json() if resp.content_type == "application/json" else None

    async def login(self, username: str, roles: list[str], permissions: list[str] | None = None) -> dict[str, str]:
        await self.internal("POST", self.registry + "/users", json={
            "username": username, "password": PASSWORD, "roles": roles, "permissions": permissions or []})
        resp = await self.gateway.post("/auth/token", json={"username": username, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}

    async def user_id(self, username: str) -> str:
        """The stable id the registry gave ``username``: what their jobs belong to."""
        return str((await self.internal("GET", f"{self.registry}/users/{username}"))["id"])

    async def fail(self, job_id: str, queue: str, error: str) -> None:
        """Fail every attempt of the job as a handler does, until it is dead-lettered."""
        while True:
            answer = await self.internal("POST", f"{self.scheduler}/queues/{queue}/dequeue", json={"wait_s": 5})
            (delivery,) = answer["deliveries"]
            assert delivery["job"]["id"] == job_id
            attempt = delivery["attempt"]
            await self.internal("PATCH", f"{self.registry}/jobs/{job_id}",
                                json={"attempt": attempt, "state": "processing"})
            outcome = await self.internal("POST", self.scheduler + "/leases/nack", json={
                "job_id": job_id, "lease_id": delivery["lease_id"], "error": error, "delay_s": 0})
            await self.internal("PATCH", f"{self.registry}/jobs/{job_id}", json={
                "attempt": attempt, "state": "failed" if outcome["dead"] else "pending", "error": error})
            if outcome["dead"]:
                return


@pytest.fixture
async def stack(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> Stack:
    def url(server: Any) -> str:
        return str(server.make_url("")).rstrip("/")

    registry = url(await aiohttp_server(registry_app(RegistrySettings(store_url="memory://", service_token=TOKEN))))
    scheduler = url(await aiohttp_server(scheduler_app(SchedulerSettings(store_url="memory://",
                                                                         service_token=TOKEN))))
    logs = url(await aiohttp_server(logging_app(LoggingSettings(store_url="memory://", service_token=TOKEN))))
    front = url(await aiohttp_server(receptionist_app(ReceptionistSettings(
        registry_url=registry, scheduler_url=scheduler, logging_url=logs, artifacts_dir=str(tmp_path),
        service_token=TOKEN, sweep_interval_s=0, time_scale=0, event_keepalive_s=15))))
    gateway = await aiohttp_client(gateway_app(GatewaySettings(
        receptionists=[front], registry_url=registry, service_token=TOKEN, jwt_secret="j" * 48,
        rate_limit_per_s=0)))
    return Stack(gateway, registry, scheduler, logs)


async def read(stack: Stack, path: str, headers: dict[str, str], status: int = 200, **params: str) -> str:
    resp = await stack.gateway.get(path, headers=headers, params=params)
    text = await resp.text()
    assert resp.status == status, (path, text)
    return text


async def test_operators_see_states_not_contents_on_every_route(stack: Stack) -> None:
    alice, ops = await stack.login("alice", ["user"], ["importer"]), await stack.login("olga", ["operator"])
    watching = SseReader(await stack.gateway.get("/events", headers=ops, params={"topic": "task.updated"}))

    async def submit(path: str, **kwargs: Any) -> dict[str, Any]:
        resp = await stack.gateway.post(path, headers=alice, **kwargs)
        assert resp.status == 201, await resp.text()
        return await resp.json()

    book = await submit("/imports", json={"bookId": f"book-{SECRET}", "type": "word", "url": URL})
    task = await submit("/tasks", json={"description": f"the {SECRET} plan", "duration_s": 0})
    ecg = await submit("/ecgs", json=ECG)
    form = aiohttp.FormData()
    form.add_field("file", f"id,email\n1,{SECRET}@example.com\n", filename=f"{SECRET}.csv", content_type="text/csv")
    upload = await submit("/v1/imports", params={"resource": "users"}, data=form)
    await stack.fail(book["id"], "import", f"ValueError: fetching {URL} answered 404")
    await stack.fail(task["id"], "task", f"TaskFailed: the {SECRET} plan failed")
    await stack.fail(ecg["id"], "ecg", f"KeyError: 'ecg-{SECRET}'")
    await stack.fail(upload["id"], "data_import", "timed out after 30s")
    await stack.internal("POST", stack.logs + "/logs", json=[
        {"timestamp": "2026-01-01T00:00:00Z", "service": "handler-1", "level": "warning",
         "message": f"could not fetch {URL}", "meta": {
             "job_id": book["id"], "attempt": 1, "kind": "import", "book_id": f"book-{SECRET}", "url": URL,
             "description": SECRET, "filename": f"{SECRET}.csv", "error": f"ValueError: fetching {URL}",
             "exception": f"OSError: {SECRET}"}}])

    # What the operator sees: states, ids, error classes; not one payload value.
    job = orjson.loads(await read(stack, f"/jobs/{book['id']}", ops))
    assert (job["state"], job["owner"], job["attempt"], job["payload"]) == ("failed", await stack.user_id("alice"), 3, None)
    assert job["error"] == "ValueError: [redacted]"
    assert [e["error"] for e in job["errors"]] == ["ValueError: [redacted]"] * 3
    listed = orjson.loads(await read(stack, "/jobs", ops))
    assert {j["id"]: j["error"] for j in listed["items"]} == {
        book["id"]: "ValueError: [redacted]", task["id"]: "TaskFailed: [redacted]",
        ecg["id"]: "KeyError: [redacted]", upload["id"]: "timed out after 30s"}
    logs = orjson.loads(await read(stack, f"/jobs/{book['id']}/logs", ops))
    # The in-process apps' own lines about the job (the scheduler's nacks...) may be stored too, on the
    # logging service's flush timer: the handler's line is the one this test shipped.
    (shipped,) = [line for line in logs["items"] if line["service"] == "handler-1"]
    assert shipped["meta"] == {
        "job_id": book["id"], "attempt": 1, "kind": "import", "error": "ValueError: [redacted]",
        "exception": "OSError: [redacted]"}
    assert shipped["message"] == "could not fetch [url]"
    everything = orjson.loads(await read(stack, "/logs", ops))
    nacks = [line for line in everything["items"] if line["meta"].get("job_id") == book["id"]]
    assert nacks and all(line["meta"].get("error") in (None, "ValueError: [redacted]") for line in nacks)
    dead = orjson.loads(await read(stack, "/dead", ops))
    assert {d["job_id"]: d["error"] for d in dead["items"]} == {
        book["id"]: "ValueError: [redacted]", task["id"]: "TaskFailed: [redacted]",
        ecg["id"]: "KeyError: [redacted]", upload["id"]: "timed out after 30s"}
    seen = orjson.loads(await read(stack, f"/ecgs/{ecg['id']}", ops))
    assert (seen["label"], seen["state"], seen["error"]) == (None, "failed", "KeyError: [redacted]")
    live = await watching.until(lambda b: b.json()["status"] == "FAILED")
    assert live[-1].json()["error"] == "TaskFailed: [redacted]"
    history = SseReader(await stack.gateway.get(f"/jobs/{task['id']}/events", headers=ops))
    replay = await history.rest()
    assert any(b.event == "task.updated" and b.json()["error"] == "TaskFailed: [redacted]" for b in replay)
    texts = [orjson.dumps(body).decode() for body in (job, listed, logs, everything, dead, seen)]
    texts += [b.data for b in [*live, *replay]]
    # Another user's task, import or export is not the operator's to see at all.
    texts += [await read(stack, f"/tasks/{task['id']}", ops, 404),
              await read(stack, f"/v1/imports/{upload['id']}", ops, 404),
              await read(stack, f"/v1/imports/{upload['id']}/errors", ops, 404),
              await read(stack, f"/v1/exports/{upload['id']}", ops, 404)]
    leaks = [text for text in texts if SECRET in text]
    assert not leaks, leaks

    # The owner sees it all, the same routes answering.
    mine = [await read(stack, f"/jobs/{book['id']}", alice), await read(stack, f"/jobs/{book['id']}/logs", alice),
            await read(stack, f"/ecgs/{ecg['id']}", alice), await read(stack, f"/tasks/{task['id']}", alice)]
    assert all(SECRET in text for text in mine)
    assert orjson.loads(mine[0])["error"] == f"ValueError: fetching {URL} answered 404"
    watching.resp.close()


def test_the_redaction_rule() -> None:
    assert redact_error(None) is None
    assert redact_error("ValueError: fetching https://x/?q=1 answered 404") == "ValueError: [redacted]"
    assert redact_error("could not be queued: queue full") == "could not be queued: [redacted]"
    assert redact_error("timed out after 12.5s") == "timed out after 12.5s"
    assert redact_error("timed out after 12s because of https://x") == "[redacted]"
    for raw in ("book-1: not found", "https://x/y failed", "", "valueError: x", "Value Error: x"):
        assert redact_error(raw) == "[redacted]", raw
    job = {"id": "j", "state": "failed", "payload": {"bookId": "b"}, "result": {"artifact": "a"},
           "result_url": "/jobs/j/result", "idempotency_key": "order-b", "error": "E: b",
           "errors": [{"attempt": 1, "error": "E: b", "at": "t"}]}
    assert redact_job(job) == {"id": "j", "state": "failed", "payload": None, "result": None, "result_url": None,
                               "idempotency_key": None, "error": "E: [redacted]",
                               "errors": [{"attempt": 1, "error": "E: [redacted]", "at": "t"}]}
    line = {"timestamp": "t", "service": "s", "level": "info", "message": "see http://h/p?q=1 now",
            "meta": {"job_id": "j", "url": "http://h", "rows": 3, "error": "oops"}}
    assert redact_log_line(line) == {**line, "message": "see [url] now",
                                     "meta": {"job_id": "j", "rows": 3, "error": "[redacted]"}}
