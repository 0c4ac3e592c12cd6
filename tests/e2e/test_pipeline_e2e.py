"""The whole pipeline, real processes: ``conveyor up`` at a small time scale, driven through the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
import zipfile
from io import BytesIO
from typing import Any

import orjson

from tests.e2e.conftest import Stack
from tests.support import wait_until as wait_for

TIME_SCALE = "0.05"  # epub 0.5 s, pdf 1.25 s, import 3 s


async def _states(stack: Stack, route: str) -> dict[str, str]:
    status, groups, _ = await stack.request("GET", route)
    assert status == 200, groups
    assert groups.pop("next_cursor") is None  # one page holds them all
    return {item["id"]: state for state, items in groups.items() for item in items}


async def test_book_jobs_flow_through_the_stack(start_stack: Any) -> None:
    # One handler running one job at a time makes the order of states observable: while a first pdf
    # runs, the jobs under test wait in their queues as pending, then run one after the other.
    stack = await start_stack("--handlers", "1", "--time-scale", TIME_SCALE, "--rate-limit", "100",
                              "--rate-burst", "100", env={"HANDLER_CONCURRENCY": "1"})
    status, _, _ = await stack.request("POST", "/exports", json={"bookId": "blocker", "type": "pdf"})
    assert status == 201

    submitted: dict[str, tuple[str, dict[str, Any]]] = {}
    for route, body in (("/exports", {"bookId": "b-pdf", "type": "pdf"}),
                        ("/exports", {"bookId": "b-epub", "type": "epub"}),
                        ("/imports", {"bookId": "b-imp", "type": "word", "url": "https://example.com/b.docx"})):
        status, job, headers = await stack.request("POST", route, json=body)
        assert status == 201, job
        assert job["state"] == "pending" and job["bookId"] == body["bookId"] and job["type"] == body["type"]
        assert job["created_at"] and job["updated_at"]
        assert headers["X-Request-ID"]
        submitted[job["id"]] = (route, job)

    seen: dict[str, list[str]] = {job_id: [] for job_id in submitted}

    async def all_finished() -> bool:
        states = {**await _states(stack, "/exports"), **await _states(stack, "/imports")}
        for job_id, history in seen.items():
            state = states[job_id]
            if not history or history[-1] != state:
                history.append(state)
        return all(states[job_id] == "finished" for job_id in submitted)

    await wait_for(all_finished, timeout_s=60, interval_s=0.05, what="every job finished")
    for job_id, history in seen.items():
        assert history == ["pending", "processing", "finished"], (submitted[job_id][1]["bookId"], history)

    # Results are real files behind resultUrl.
    for job_id, (route, _) in submitted.items():
        status, job, _ = await stack.request("GET", f"/jobs/{job_id}")
        assert status == 200 and job["state"] == "finished" and job["attempt"] == 1
        status, groups, _ = await stack.request("GET", route)
        item = next(i for i in groups["finished"] if i["id"] == job_id)
        status, data, headers = await stack.request("GET", item["resultUrl"])
        assert status == 200
        if item["type"] == "epub":
            assert zipfile.ZipFile(BytesIO(data)).read("mimetype") == b"application/epub+zip"
        elif item["type"] == "pdf":
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        else:
            assert data["source"] == "https://example.com/b.docx" and data["bookId"] == "b-imp"

    # Every service logged to the central log, with request ids.
    logging_url = stack.service("logging_service")["url"]
    token = (stack.data_dir / "service_token").read_text()

    async def logs_of_job() -> list[dict[str, Any]]:
        job_id = next(iter(submitted))
        async with stack.session.get(f"{logging_url}/logs", params={"job_id": job_id, "limit": "100"},
                                     headers={"X-Service-Token": token}) as resp:
            items = (await resp.json())["items"]
        services = {item["service"] for item in items}
        has_receptionist = any(name.startswith("receptionist") for name in services)
        return items if has_receptionist and "handler-1" in services else []

    items = await wait_for(logs_of_job, timeout_s=15, what="the job's log lines in the logging service")
    assert all(item["meta"].get("request_id") for item in items if item["service"].startswith("receptionist"))

    # Each service's own log file is JSON lines of the same shape as the central log's.
    written = set()
    for path in sorted((stack.data_dir / "logs").glob("*.log")):
        for raw in path.read_bytes().splitlines():
            line = orjson.loads(raw)
            assert set(line) == {"timestamp", "service", "level", "message", "meta"}, (path, raw)
            assert line["service"] == path.stem
            written.add(path.stem)
    assert {"handler-1", "receptionist-1", "registry", "scheduler"} <= written


async def test_bad_input_unknown_ids_rate_limit_and_a_dead_receptionist(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0", "--rate-limit", "20", "--rate-burst", "40")
    bad = [
        ("/exports", {"bookId": "1", "type": "docx"}, "type"),
        ("/exports", {"type": "epub"}, "bookId"),
        ("/exports", {"bookId": 7, "type": "epub"}, "bookId"),
        ("/exports", {"bookId": "1", "type": "epub", "extra": 1}, "extra"),
        ("/imports", {"bookId": "1", "type": "word", "url": "ftp://x"}, "url"),
        ("/imports", {"bookId": "1", "type": "word"}, "url"),
    ]
    for route, body, field in bad:
        status, answer, _ = await stack.request("POST", route, json=body)
        assert status == 400, answer
        assert field in {d["field"] for d in answer["details"]}, answer
    status, answer, _ = await stack.request("POST", "/exports", data=b"{not json",
                                            headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"] == "malformed JSON"
    status, answer, _ = await stack.request("POST", "/exports", data=b"bookId=1", headers={"Content-Type": "text/plain"})
    assert status == 415 and answer["details"][0]["field"] == "Content-Type"
    for route in ("/exports", "/imports"):
        status, groups, _ = await stack.request("GET", route)
        assert status == 200 and not any(groups.values()), groups  # nothing was registered

    status, answer, _ = await stack.request("GET", f"/jobs/{uuid.uuid4()}")
    assert status == 404 and answer["error"]
    status, answer, _ = await stack.request("GET", "/jobs/not-a-uuid")
    assert status == 404

    # One receptionist dies: once it is gone, the gateway skips it and every submission still succeeds.
    # (A request already sent to it as it died is not replayed: only GETs are.)
    victim = stack.service("receptionist-1")["pid"]
    os.kill(victim, signal.SIGKILL)

    async def gone() -> bool:
        # Reaped, not merely a zombie: a zombie main thread's other threads may still hold its sockets.
        try:
            os.kill(victim, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_for(gone, timeout_s=10, what="the killed receptionist to be gone")
    statuses = []
    for i in range(10):
        status, _, _ = await stack.request("POST", "/exports", json={"bookId": f"after-{i}", "type": "epub"})
        statuses.append(status)
    assert statuses == [201] * 10

    # The rate limit: a burst past it gets 429 with Retry-After.
    answers = await asyncio.gather(*(stack.request("GET", "/exports") for _ in range(80)))
    limited = [headers for status, _, headers in answers if status == 429]
    assert limited, [status for status, _, _ in answers]
    assert int(limited[0]["Retry-After"]) >= 1
    assert "RateLimit-Limit" in limited[0]


async def test_jobs_and_results_survive_a_restart_of_the_stack(start_stack: Any, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "kept")
    first = await start_stack("--handlers", "1", "--time-scale", "0", "--data-dir", data_dir)
    status, job, _ = await first.request("POST", "/exports", json={"bookId": "kept", "type": "epub"})
    assert status == 201

    async def finished() -> dict[str, Any] | None:
        _, current, _ = await first.request("GET", f"/jobs/{job['id']}")
        return current if current["state"] == "finished" else None

    done = await wait_for(finished, timeout_s=30, what="the job to finish")
    _, before, _ = await first.request("GET", done["result_url"])
    await first.stop()

    second = await start_stack("--handlers", "1", "--time-scale", "0", "--data-dir", data_dir)
    status, again, _ = await second.request("GET", f"/jobs/{job['id']}")
    assert status == 200 and again["state"] == "finished" and again["finished_at"] == done["finished_at"]
    status, after, _ = await second.request("GET", done["result_url"])
    assert status == 200 and after == before
    assert (await second.request("GET", "/exports"))[1]["finished"][0]["id"] == job["id"]

    # The first launcher's stop reached the central log (kept across the restart) before its logging
    # service stopped: its last line, and each service it stopped before that one.
    token = (second.data_dir / "service_token").read_text()
    async with second.session.get(second.service("logging_service")["url"] + "/logs", headers={
            "X-Service-Token": token}, params={"service": "launcher", "limit": "500"}) as resp:
        messages = [line["message"] for line in (await resp.json())["items"]]
    assert "stopping the stack" in messages
    services = {s["name"] for s in second.state()["services"] if not s["standby"]}  # the first's, too
    assert services - {"logging_service"} == {message.split()[1] for message in messages
                                              if message.startswith("stopped ")}


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shared.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


async def test_dead_letters_are_listed_and_redriven_with_the_cli(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0")
    status, job, _ = await stack.request("POST", "/tasks", json={"description": "doomed", "fail_probability": 1})
    assert status == 201

    async def failed() -> dict[str, Any] | None:
        _, current, _ = await stack.request("GET", f"/jobs/{job['id']}")
        return current if current["state"] == "failed" else None

    first = await wait_for(failed, timeout_s=30, what="the task to fail for good")
    assert first["attempt"] == 3 and len(first["errors"]) == 3
    code, out = await run_cli("dlq", "list", "--data-dir", str(stack.data_dir))
    assert code == 0 and job["id"] in out and "1 dead letters" in out

    code, out = await run_cli("dlq", "requeue", job["id"], "--data-dir", str(stack.data_dir))
    assert code == 0 and "requeued 1" in out

    async def failed_again() -> dict[str, Any] | None:
        current = await failed()
        return current if current and current["attempt"] == 6 else None

    second = await wait_for(failed_again, timeout_s=30, what="the redriven task to fail again")
    assert [e["attempt"] for e in second["errors"]] == [1, 2, 3, 4, 5, 6]  # its history kept, attempts went on
    code, out = await run_cli("dlq", "requeue", "--all", "--data-dir", str(stack.data_dir))
    assert code == 0 and "requeued 1" in out
    code, out = await run_cli("dlq", "requeue", "--data-dir", str(stack.data_dir))
    assert code == 2


async def test_first_start_makes_an_admin_and_the_cli_manages_users(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0", env={"CONVEYOR_ADMIN_PASSWORD": ""})
    printed = b"".join(stack.output).decode()
    password = printed.split("created the user 'admin' with the password ", 1)[1].split()[0]
    data = ["--data-dir", str(stack.data_dir)]

    code, admin_token = await run_cli("token", "admin", "--password", password, *data)
    assert code == 0, admin_token
    admin = {"Authorization": f"Bearer {admin_token.strip()}"}
    status, users, _ = await stack.request("GET", "/users", headers=admin)
    assert status == 200 and [u["username"] for u in users["items"]] == ["admin"]

    code, out = await run_cli("user", "add", "alice", "--password", "alice's secret", "--role", "user", *data)
    assert code == 0 and "added alice (user)" in out
    code, out = await run_cli("user", "add", "alice", "--password", "alice's secret", *data)
    assert code == 1 and "409" in out
    code, alice_token = await run_cli("token", "alice", "--password", "alice's secret", *data)
    alice = {"Authorization": f"Bearer {alice_token.strip()}"}
    status, _, _ = await stack.request("POST", "/exports", json={"bookId": "a", "type": "epub"}, headers=alice)
    assert status == 201
    assert (await stack.request("POST", "/exports", json={"bookId": "a", "type": "epub"}, headers=admin))[0] == 403
    code, out = await run_cli("user", "list", *data)
    assert code == 0 and "admin" in out and "alice" in out
    code, out = await run_cli("user", "passwd", "alice", *data)
    assert code == 0 and "password: " in out
    code, out = await run_cli("token", "alice", "--password", "alice's secret", *data)
    assert code == 1 and "401" in out
    code, out = await run_cli("user", "remove", "alice", *data)
    assert code == 0
    # A second start on the same data dir makes no new admin.
    await stack.stop()
    again = await start_stack("--handlers", "1", "--data-dir", str(stack.data_dir))
    assert b"created the user 'admin'" not in b"".join(again.output)
