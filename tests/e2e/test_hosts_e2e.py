"""One deployment on two hosts, real processes: host A runs ``conveyor up --only gateway,receptionist,registry,
scheduler,logging``, host B ``conveyor up --only handler`` with A's URLs, each with its own data dir.

Each host binds its own loopback address (A 127.0.0.2, B 127.0.0.3), and nothing listens on 127.0.0.1 at their
ports: a service that reached another through a hidden ``127.0.0.1`` would fail, and a job would never end.
Artifacts are files still (another item moves them to S3), so both hosts are given the same artifacts dir.
"""

from __future__ import annotations

import socket
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack
from tests.e2e.test_operating_e2e import run_conveyor
from tests.support import wait_until

HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"


def _nothing_listens(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


async def _job(stack: Stack, job_id: str, state: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, job, _ = await stack.request("GET", f"/jobs/{job_id}")
        assert status == 200, job
        return job if job["state"] == state else None

    return await wait_until(reached, timeout_s=60, interval_s=0.1, what=f"job {job_id} {state}")


async def test_a_job_submitted_on_one_host_runs_on_another(start_stack: Any, tmp_path: Path) -> None:
    artifacts = str(tmp_path / "artifacts")
    a = await start_stack("--only", "gateway,receptionist,registry,scheduler,logging", "--host", HOST_A,
                          "--receptionists", "1", "--time-scale", "0", "--rate-limit", "0",
                          env={"RECEPTIONIST_ARTIFACTS_DIR": artifacts})
    assert sorted(s["name"] for s in a.state()["services"]) == [
        "gateway", "logging_service", "receptionist-1", "registry", "scheduler"]
    urls = {s["name"]: s["url"] for s in a.state()["services"]}
    assert all(url.startswith(f"http://{HOST_A}:") for url in urls.values()), urls
    assert all(_nothing_listens("127.0.0.1", int(url.rsplit(":", 1)[1])) for url in urls.values())

    # Submitted before any handler exists anywhere: it waits.
    status, export, _ = await a.request("POST", "/exports", json={"bookId": "two-hosts", "type": "epub"})
    assert status == 201 and export["state"] == "pending", export
    status, task, _ = await a.request("POST", "/tasks", json={"description": "on B", "fail_probability": 0})
    assert status == 201, task

    token = (a.data_dir / "service_token").read_text().strip()
    b = await start_stack("--only", "handler", "--host", HOST_B, "--handlers", "1", "--time-scale", "0",
                          "--registry-url", urls["registry"], "--scheduler-url", urls["scheduler"],
                          "--logging-url", urls["logging_service"],
                          env={"CONVEYOR_SERVICE_TOKEN": token, "HANDLER_ARTIFACTS_DIR": artifacts})
    assert [s["name"] for s in b.state()["services"]] == ["handler-1"] and b.state()["gateway"] is None
    assert b.service("handler-1")["url"].startswith(f"http://{HOST_B}:")
    # B keeps no registry, queue or log of its own (its bulk data store, data.db, is another item's).
    assert not {p.name for p in b.data_dir.glob("*.db")} & {"registry.db", "scheduler.db", "logs.db"}

    await _job(a, export["id"], "finished")
    await _job(a, task["id"], "finished")
    status, groups, _ = await a.request("GET", "/exports")
    assert status == 200, groups
    item = next(i for i in groups["finished"] if i["id"] == export["id"])
    status, data, _ = await a.request("GET", item["resultUrl"])
    assert status == 200 and zipfile.ZipFile(BytesIO(data)).read("mimetype") == b"application/epub+zip"

    # B's handler shipped its log lines to A's logging service.
    async def handler_logs() -> list[dict[str, Any]]:
        async with a.session.get(urls["logging_service"] + "/logs", headers={"X-Service-Token": token},
                                 params={"job_id": export["id"], "limit": "100"}) as resp:
            assert resp.status == 200
            # A host's part names its instances after the host: handler-1 of one host is not that of another.
            return [line for line in (await resp.json())["items"]
                    if line["service"] == f"handler-1@{socket.gethostname()}"]

    await wait_until(handler_logs, timeout_s=15, what="host B's log lines in host A's logging service")

    # The CLI finds each host's part in that host's data dir: A's registry and gateway; B has neither.
    code, out, err = await run_conveyor("user", "add", "carol", "--password", "carol's password",
                                        "--data-dir", str(a.data_dir))
    assert code == 0, err
    code, out, err = await run_conveyor("token", "carol", "--data-dir", str(a.data_dir),
                                        env={"CONVEYOR_PASSWORD": "carol's password"})
    assert code == 0 and out.strip(), err
    code, out, err = await run_conveyor("token", "carol", "--data-dir", str(b.data_dir),
                                        env={"CONVEYOR_PASSWORD": "carol's password"})
    assert code == 1 and "does not describe a stack with a registry" in err and "Traceback" not in err, err
