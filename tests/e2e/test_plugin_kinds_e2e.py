"""A kind of one's own, end to end: the test distribution ``acme-kinds`` (``tests/plugin_kinds``) installed
with its ``conveyor.kinds`` entry point where the stack's processes find it (:mod:`tests.plugins`), then
``acme.resize`` jobs through the gateway of a live stack (``conveyor up``): documented, validated, run by a
handler to a downloadable result, retried, held to their concurrency limit, cancelled while they run,
dead-lettered and redriven by an operator, their log lines kept, delayed, and fired by a periodic schedule. And a misconfigured kind stops
``conveyor up`` before it starts anything."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack
from tests.e2e.test_kinds_e2e import login
from tests.plugins import install
from tests.support import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
ADMIN_PASSWORD = "admin password for e2e"
KIND = "acme.resize"


async def job(stack: Stack, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    status, body, _ = await stack.request("GET", f"/jobs/{job_id}", headers=headers)
    assert status == 200, body
    return body


async def until(stack: Stack, headers: dict[str, str], job_id: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = await job(stack, headers, job_id)
        return body if body["state"] == state else None

    return await wait_until(reached, timeout_s=timeout_s, interval_s=0.1, what=f"job {job_id} {state}")


async def submit(stack: Stack, headers: dict[str, str], payload: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    status, body, _ = await stack.request("POST", "/jobs", headers=headers, json={"kind": KIND, "payload": payload})
    assert status == expect, body
    return body


def fields(body: dict[str, Any]) -> dict[str, str]:
    return {detail["field"]: detail["message"] for detail in body["details"]}


async def test_a_plugin_kind_through_the_gateway(start_stack: Any, tmp_path: Path) -> None:
    stack = await start_stack("--handlers", "1", "--rate-limit", "0", env={
        **install(tmp_path / "site"), "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD, "HANDLER_PROGRESS_INTERVAL_S": "0.2",
        "HANDLER_HEARTBEAT_S": "1", "RECEPTIONIST_SCHEDULE_POLL_S": "0.2"})
    admin = await login(stack, "admin", ADMIN_PASSWORD)
    for name, role in (("alice", "user"), ("olga", "operator")):
        status, body, _ = await stack.request("POST", "/users", headers=admin, json={
            "username": name, "password": f"{name} password", "roles": [role]})
        assert status == 201, body
    alice, olga = await login(stack, "alice", "alice password"), await login(stack, "olga", "olga password")

    # The document has the kind: its payload's schema among POST /jobs's bodies, its name among the kinds.
    status, document, _ = await stack.request("GET", "/openapi.json")
    assert status == 200
    schemas = document["components"]["schemas"]
    assert {"$ref": f"#/components/schemas/JobSubmission.{KIND}"} in schemas["JobSubmission"]["oneOf"]
    assert schemas[f"JobSubmission.{KIND}"]["properties"]["payload"] == {"$ref": "#/components/schemas/ResizePayload"}
    assert set(schemas["ResizePayload"]["required"]) == {"image", "width", "height"}
    kinds = next(p for p in document["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "kind")
    assert KIND in kinds["schema"]["enum"]

    # Submitted, run by the handler to a result one downloads; a repeat with the same key is the same job.
    keyed = {**alice, "Idempotency-Key": "cat-64"}
    first = await submit(stack, keyed, {"image": "cat", "width": 64, "height": 48})
    assert (first["kind"], first["type"], first["state"], first["max_attempts"]) == (KIND, KIND, "pending", 2)
    again = await submit(stack, keyed, {"image": "cat", "width": 64, "height": 48}, expect=200)
    assert again["id"] == first["id"]
    done = await until(stack, alice, first["id"], "finished")
    assert done["attempt"] == 1 and done["progress"] == 1.0 and done["result_url"] == f"/jobs/{first['id']}/result"
    status, svg, headers = await stack.request("GET", done["result_url"], headers=alice)
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"
    assert b'width="64" height="48"' in svg and b"<title>cat</title>" in svg

    # Its own log lines, through the same context as a built-in kind's.
    async def logged() -> bool:
        status, lines, _ = await stack.request("GET", f"/jobs/{first['id']}/logs", headers=alice)
        return status == 200 and any(line["message"] == "resizing" for line in lines["items"])

    await wait_until(logged, timeout_s=15, interval_s=0.2, what="the kind's log line")

    # Bad payloads name their field under payload; an unknown kind, or one that comes only by its own route,
    # names kind.
    for payload, field in (({"image": "cat", "width": 0, "height": 48}, "payload.width"),
                           ({"image": "cat", "width": "64", "height": 48}, "payload.width"),
                           ({"image": "cat", "width": 64}, "payload.height"),
                           ({"image": "cat", "width": 64, "height": 48, "colour": "red"}, "payload.colour")):
        status, body, _ = await stack.request("POST", "/jobs", headers=alice, json={"kind": KIND, "payload": payload})
        assert status == 400 and set(fields(body)) == {field}, body
    status, body, _ = await stack.request("POST", "/jobs", headers=alice, json={"kind": "acme.crop", "payload": {}})
    assert status == 400 and "'acme.crop'" in fields(body)["kind"] and KIND in fields(body)["kind"]
    status, body, _ = await stack.request("POST", "/jobs", headers=alice, json={"kind": "ecg", "payload": {}})
    assert status == 400 and "POST /ecgs" in fields(body)["kind"]
    status, body, _ = await stack.request("GET", "/jobs", headers=alice, params={"kind": "acme.crop"})
    assert status == 400 and set(fields(body)) == {"kind"}
    status, listed, _ = await stack.request("GET", "/jobs", headers=alice, params={"kind": KIND})
    assert status == 200 and [item["id"] for item in listed["items"]] == [first["id"]]

    # A failed attempt is retried under the kind's policy, and the next one finishes.
    retried = await submit(stack, alice, {"image": "dog", "width": 8, "height": 8, "fail_attempts": 1})
    done = await until(stack, alice, retried["id"], "finished")
    assert done["attempt"] == 2 and [e["error"] for e in done["errors"]] == [
        "RuntimeError: attempt 1 fails, as the payload asked"]

    # At most two at once on a handler (concurrency=2): the third waits in its queue, unleased, until a
    # slot frees; cancelling a running one stops its work at once.
    slow = [await submit(stack, alice, {"image": f"slow{i}", "width": 8, "height": 8, "seconds": 60})
            for i in range(3)]
    ids = [j["id"] for j in slow]

    async def states() -> list[str]:
        return [(await job(stack, alice, job_id))["state"] for job_id in ids]

    async def two_running() -> list[str] | None:
        now = await states()
        assert now.count("processing") <= 2, now
        return now if now.count("processing") == 2 else None

    now = await wait_until(two_running, timeout_s=30, interval_s=0.1, what="two slow jobs running")
    waiting = ids[now.index("pending")]
    running = [job_id for job_id, state in zip(ids, now, strict=True) if state == "processing"]
    status, queues, _ = await stack.request("GET", "/queues", headers=olga)
    mine = {q["queue"]: q for q in queues["items"]}[KIND]
    assert status == 200 and (mine["leased"], mine["ready"]) == (2, 1)

    async def progressed() -> bool:
        return (await job(stack, alice, running[0]))["progress"] > 0

    await wait_until(progressed, timeout_s=15, interval_s=0.1, what="progress of a running job")
    status, cancelling, _ = await stack.request("DELETE", f"/jobs/{running[0]}", headers=alice)
    assert status == 202 and cancelling["cancel_requested"] is True
    await until(stack, alice, running[0], "cancelled", timeout_s=20)  # the next heartbeat tells the handler

    async def third_started() -> bool:
        now = await states()
        assert now.count("processing") <= 2, now
        return (await job(stack, alice, waiting))["state"] == "processing"

    await wait_until(third_started, timeout_s=30, interval_s=0.1, what="the waiting job to start")
    for job_id in (running[1], waiting):
        assert (await stack.request("DELETE", f"/jobs/{job_id}", headers=alice))[0] == 202
    for job_id in ids:
        cancelled = await until(stack, alice, job_id, "cancelled", timeout_s=20)
        assert cancelled["result"] is None
        assert (await stack.request("GET", f"/jobs/{job_id}/result", headers=alice))[0] == 404

    # Out of attempts, the job is a dead letter; an operator's redrive gives it its kind's attempts again.
    doomed = await submit(stack, alice, {"image": "bird", "width": 8, "height": 8, "fail_attempts": 2})
    await until(stack, alice, doomed["id"], "failed")
    status, dead, _ = await stack.request("GET", "/dead", headers=olga, params={"queue": KIND})
    assert status == 200 and [(d["job_id"], d["kind"]) for d in dead["items"]] == [(doomed["id"], KIND)]
    status, answer, _ = await stack.request("POST", "/dead/requeue", headers=olga, json={"job_ids": [doomed["id"]]})
    assert status == 200 and answer == {"requeued": [doomed["id"]], "skipped": []}
    redriven = await until(stack, alice, doomed["id"], "finished")
    assert redriven["attempt"] == 3 and len(redriven["errors"]) == 2

    # Delayed: pending, and not started, before its time.
    status, delayed, _ = await stack.request("POST", "/jobs", headers=alice, json={
        "kind": KIND, "payload": {"image": "later", "width": 8, "height": 8}, "delay_s": 2})
    assert status == 201, delayed
    run_at = datetime.fromisoformat(delayed["run_at"])
    done = await until(stack, alice, delayed["id"], "finished")
    assert datetime.fromisoformat(done["started_at"]) >= run_at

    # Scheduled: a schedule of the kind, its payload checked by the kind's model, fires jobs the handler runs.
    status, body, _ = await stack.request("POST", "/schedules", headers=alice, json={
        "kind": KIND, "payload": {"image": "tick", "width": 0, "height": 8}, "every_s": 1})
    assert status == 400 and set(fields(body)) == {"payload.width"}, body
    status, schedule, _ = await stack.request("POST", "/schedules", headers=alice, json={
        "kind": KIND, "payload": {"image": "tick", "width": 8, "height": 8}, "every_s": 1, "priority": 5})
    assert status == 201 and (schedule["kind"], schedule["max_attempts"]) == (KIND, 2), schedule
    assert (await stack.request("GET", f"/schedules/{schedule['id']}", headers=olga))[1]["payload"] is None

    async def fired_twice() -> list[dict[str, Any]] | None:
        status, listed, _ = await stack.request("GET", "/jobs", headers=alice, params={"kind": KIND, "limit": "100"})
        assert status == 200, listed
        mine = [j for j in listed["items"] if j["schedule_id"] == schedule["id"] and j["state"] == "finished"]
        return mine if len(mine) >= 2 else None

    ticks = await wait_until(fired_twice, timeout_s=30, interval_s=0.2, what="two finished jobs of the schedule")
    # The payload as the kind's model made it (its defaults filled in), as for a POST /jobs.
    assert all(j["payload"] == schedule["payload"] and j["payload"]["image"] == "tick" and j["priority"] == 5
               for j in ticks)
    assert len({j["idempotency_key"] for j in ticks}) == len(ticks)
    assert (await stack.request("POST", f"/schedules/{schedule['id']}/pause", headers=olga))[0] == 403
    assert (await stack.request("DELETE", f"/schedules/{schedule['id']}", headers=alice))[0] == 204

    # The README's example of the kind through the Python client: submitted, waited on, its result downloaded.
    section = README.read_text().split("\n## Write your own kind\n", 1)[1].split("\n## ", 1)[0]
    example = next(block for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL)
                   if "from shared.client import Client" in block)
    (tmp_path / "example.py").write_text(example)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "example.py", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(README.parent), "CONVEYOR_URL": stack.url,
             "CONVEYOR_TOKEN": alice["Authorization"].removeprefix("Bearer ")})
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["finished", "1", "cat.svg"] and (tmp_path / "cat.svg").stat().st_size > 0


async def test_a_misconfigured_kind_stops_conveyor_up_before_it_starts_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir),
        env={**os.environ, **install(tmp_path / "site"), "CONVEYOR_KINDS": "acme_kinds.missing"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1, (out, err)
    assert ("conveyor up: CONVEYOR_KINDS module 'acme_kinds.missing' cannot be imported: ModuleNotFoundError"
            in err.decode()), err
    assert not data_dir.exists()
