"""Import URLs against server-side request forgery, end to end: a real receptionist, registry, scheduler
and handler on loopback. A URL whose literal host is not public is a 400 at submission (bulk and book
imports); a name that resolves to one fails the job; ``*_FETCH_ALLOW`` lets a loopback file server through
(that is how these tests serve real files); a failed fetch never shows what the remote answered."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from receptionist.app import create_app as receptionist_app
from receptionist.settings import Settings as ReceptionistSettings
from shared.fetching import FAILED
from tests.handler.conftest import IMPORTER
from tests.support import wait_until

USERS = "id,email,role\nu1,ada@example.com,admin\n"


@pytest.fixture
async def files(aiohttp_server: Any) -> Any:
    """A loopback file server; ``hits`` lists the paths asked for."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/users.csv":
            return web.Response(text=USERS, content_type="text/csv")
        if request.path == "/export":  # no suffix: the content type names the format
            return web.Response(text='{"id": "u2", "email": "bo@example.com", "role": "reader"}\n',
                                content_type="application/x-ndjson")
        return web.Response(status=500, reason="Leaky Reason", text="the remote's secret body")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    server.hits = hits
    return server


@pytest.fixture
async def allowing(aiohttp_client: Any, core: Any, tmp_path: Path) -> Any:
    """A receptionist that lets URLs on 127.0.0.1 through, as ``RECEPTIONIST_FETCH_ALLOW=127.0.0.1`` does."""
    return await aiohttp_client(receptionist_app(ReceptionistSettings(
        registry_url=core.registry_url, scheduler_url=core.scheduler_url, artifacts_dir=str(tmp_path),
        sweep_interval_s=0, time_scale=0, fetch_allow=["127.0.0.1"])), headers=IMPORTER)


async def ended(client: Any, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view = await (await client.get(f"/v1/imports/{job_id}")).json()
        return view if view["state"] in ("finished", "failed", "cancelled") else None

    return await wait_until(done, what=f"import {job_id} ended")


async def submitted(client: Any, url: str) -> dict[str, Any]:
    resp = await client.post("/v1/imports?resource=users", json={"url": url})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_literal_addresses_are_refused_at_submission(importing: Any, core: Any) -> None:
    receptionist, _ = importing
    registry_port = int(core.registry_url.rsplit(":", 1)[1].split("/")[0])
    for host in (f"127.0.0.1:{registry_port}", "127.1", "0x7f000001", "2130706433", "[::1]", "[::ffff:127.0.0.1]",
                 "169.254.169.254", "10.0.0.8", "192.168.0.1", "[fd00::1]", "0.0.0.0", "localhost", "app.localhost"):
        url = f"http://{host}/health#.csv"
        for path, body in (("/v1/imports?resource=users", {"url": url}),
                           ("/imports", {"bookId": "b1", "type": "word", "url": url})):
            resp = await receptionist.post(path, json=body)
            assert resp.status == 400, (path, url, await resp.text())
            details = (await resp.json())["details"]
            assert [d["field"] for d in details] == ["url"] and "public addresses" in details[0]["message"], details
    listed = await (await receptionist.get("/jobs")).json()
    assert listed["items"] == []  # nothing was registered


async def test_a_name_that_resolves_to_loopback_fails_the_job(importing: Any, files: Any) -> None:
    receptionist, start_handler = importing
    await start_handler()
    # The machine's own name resolves (through /etc/hosts) to one of its own addresses, often loopback:
    # the literal check at submission lets a name through, the handler's check after DNS does not.
    name = socket.gethostname()
    accepted = await submitted(receptionist, f"http://{name}:{files.port}/users.csv")
    view = await ended(receptionist, accepted["id"])
    assert view["state"] == "failed", view
    assert view["error"].startswith(f"FetchRefused: {name.lower()} resolves to a ") and "public" in view["error"]
    assert files.hits == []


async def test_the_allow_setting_lets_a_loopback_file_server_through(importing: Any, allowing: Any,
                                                                     files: Any) -> None:
    _, start_handler = importing
    await start_handler(fetch_allow=["127.0.0.1"])
    for path in ("/users.csv", "/export"):
        accepted = await submitted(allowing, f"http://127.0.0.1:{files.port}{path}")
        view = await ended(allowing, accepted["id"])
        assert view["state"] == "finished", view
        assert view["counters"] == {"read": 1, "imported": 1, "rejected": 0}


async def test_a_handler_without_the_allow_setting_refuses_what_the_receptionist_let_through(
        importing: Any, allowing: Any, files: Any) -> None:
    _, start_handler = importing
    await start_handler()
    accepted = await submitted(allowing, f"http://127.0.0.1:{files.port}/users.csv")
    view = await ended(allowing, accepted["id"])
    assert view["state"] == "failed" and view["error"].startswith("FetchRefused: 127.0.0.1 is a loopback address")
    assert files.hits == []


async def test_a_failed_fetch_never_shows_the_remotes_answer(importing: Any, allowing: Any, files: Any, core: Any,
                                                             unused_tcp_port: int) -> None:
    _, start_handler = importing
    await start_handler(fetch_allow=["127.0.0.1"])
    errors = set()
    for url in (f"http://127.0.0.1:{files.port}/secret.csv",  # an open port that answers 500 with a body
                f"{core.registry_url}/secret.csv",  # the registry (allowed here): a 404 with its JSON error
                f"http://127.0.0.1:{unused_tcp_port}/users.csv"):  # a closed port
        view = await ended(allowing, (await submitted(allowing, url))["id"])
        assert view["state"] == "failed", view
        errors.add(view["error"])
    assert errors == {f"FetchFailed: {FAILED}"}
    # A 200 that is no file of ours: neither its body nor its content type is shown.
    view = await ended(allowing, (await submitted(allowing, f"{core.registry_url}/health#.csv"))["id"])
    assert view["state"] == "failed" and view["error"] == (
        "InvalidInput: the fetched file is neither CSV nor NDJSON (by the suffix of its URL's path, or its content "
        "type)")


async def attempts_of(core: Any, job_id: str) -> tuple[int, list[str], list[str]]:
    """The registry's last attempt of a job, the error of each failed attempt, and the dead letters' errors."""
    _, job = await core.registry("GET", f"/jobs/{job_id}")
    _, dead = await core.scheduler("GET", "/dead")
    return job["attempt"], [e["error"] for e in job["errors"]], [
        d["error"] for d in dead["items"] if d["job"]["id"] == job_id]


async def test_a_refused_url_fails_the_job_at_once_without_a_retry(importing: Any, files: Any, core: Any) -> None:
    receptionist, start_handler = importing
    await start_handler()
    name = socket.gethostname()  # resolves to one of this machine's own addresses (see above)
    view = await ended(receptionist, (await submitted(receptionist, f"http://{name}:{files.port}/users.csv"))["id"])
    assert view["state"] == "failed" and view["error"].startswith("FetchRefused: "), view
    # One attempt of its three, dead-lettered with the refusal as its error.
    assert await attempts_of(core, view["id"]) == (1, [view["error"]], [view["error"]])
    assert files.hits == []


async def test_a_csv_header_naming_a_column_twice_fails_the_job_at_once(importing: Any, allowing: Any,
                                                                        aiohttp_server: Any, core: Any) -> None:
    _, start_handler = importing
    await start_handler(fetch_allow=["127.0.0.1"])

    async def twice(_: web.Request) -> web.Response:
        return web.Response(text="id,email,email\nu1,a@x.io,b@x.io\n", content_type="text/csv")

    served = web.Application()
    served.router.add_get("/twice.csv", twice)
    server = await aiohttp_server(served, host="127.0.0.1")
    view = await ended(allowing, (await submitted(allowing, f"http://127.0.0.1:{server.port}/twice.csv"))["id"])
    assert view["state"] == "failed" and view["error"] == "InvalidInput: the CSV header names email more than once"
    assert await attempts_of(core, view["id"]) == (1, [view["error"]], [view["error"]])


async def test_a_transient_failure_is_still_retried(importing: Any, allowing: Any, core: Any,
                                                    unused_tcp_port: int) -> None:
    receptionist, start_handler = importing
    await start_handler(fetch_allow=["127.0.0.1"])
    # A closed port the allow setting lets through: the remote may come back, so every attempt is made.
    view = await ended(allowing, (await submitted(allowing, f"http://127.0.0.1:{unused_tcp_port}/users.csv"))["id"])
    assert view["state"] == "failed", view
    assert await attempts_of(core, view["id"]) == (3, [f"FetchFailed: {FAILED}"] * 3, [f"FetchFailed: {FAILED}"])
    # A task whose every attempt fails.
    resp = await receptionist.post("/tasks", json={"description": "doomed", "fail_probability": 1.0})
    assert resp.status == 201, await resp.text()
    task_id = (await resp.json())["id"]

    async def failed() -> dict[str, Any] | None:
        _, job = await core.registry("GET", f"/jobs/{task_id}")
        return job if job["state"] == "failed" else None

    await wait_until(failed, what="the task failed for good")
    error = "TaskFailed: the task failed (simulated)"
    assert await attempts_of(core, task_id) == (3, [error] * 3, [error])
