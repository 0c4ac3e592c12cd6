"""Instances with real processes: a stack started with ``conveyor up``, every one of its services registered
with the registry; a receptionist started by hand (``python -m receptionist``) on a port of its own joins
the gateway's rotation without a restart of anything, and once SIGKILLed it is marked gone and leaves it,
while submissions through the gateway keep succeeding. ``conveyor ps`` shows it all."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack, _free_port_base
from tests.e2e.test_operating_e2e import run_conveyor
from tests.support import wait_until

ADMIN_PASSWORD = "admin password for e2e"
OPS_PASSWORD = "operator password for e2e"
EXPORT = {"bookId": "b-1", "type": "epub"}
#: Heartbeats and discovery a tenth of their defaults, so that the test takes seconds.
FAST = {**{f"{prefix}_INSTANCE_HEARTBEAT_S": "0.2" for prefix in
           ("GATEWAY", "RECEPTIONIST", "HANDLER", "REGISTRY", "SCHEDULER", "LOGGING")},
        "REGISTRY_INSTANCE_GONE_S": "1", "GATEWAY_DISCOVERY_INTERVAL_S": "0.2", "GATEWAY_HEALTH_INTERVAL_S": "0.2",
        "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD}


async def login(stack: Stack, username: str, password: str) -> dict[str, str]:
    status, answer, _ = await stack.request("POST", "/auth/token", json={"username": username, "password": password})
    assert status == 200, answer
    return {"Authorization": f"Bearer {answer['access_token']}"}


async def start_receptionist(stack: Stack, port: int, log: Path) -> asyncio.subprocess.Process:
    """``python -m receptionist`` as an operator would start one by hand: its own port, the stack's registry,
    scheduler, logging service, artifacts and token, and nothing told to the gateway."""
    urls = {s["name"]: s["url"] for s in stack.state()["services"]}
    env = {**os.environ, "RECEPTIONIST_HOST": "127.0.0.1", "RECEPTIONIST_PORT": str(port),
           "RECEPTIONIST_INSTANCE": "receptionist-by-hand", "RECEPTIONIST_REGISTRY_URL": urls["registry"],
           "RECEPTIONIST_SCHEDULER_URL": urls["scheduler"], "RECEPTIONIST_LOG_URL": urls["logging_service"],
           "RECEPTIONIST_SERVICE_TOKEN": (stack.data_dir / "service_token").read_text().strip(),
           "RECEPTIONIST_ARTIFACTS_DIR": str(stack.data_dir / "artifacts"), "RECEPTIONIST_TIME_SCALE": "0",
           "RECEPTIONIST_DATA_STORE_URL": f"sqlite:///{stack.data_dir}/data.db",
           "RECEPTIONIST_INSTANCE_HEARTBEAT_S": "0.2", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "receptionist", env=env,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=asyncio.subprocess.STDOUT)


async def test_a_receptionist_started_by_hand_joins_the_rotation_and_a_killed_one_leaves_it(
        start_stack: Any, tmp_path: Path) -> None:
    stack = await start_stack("--receptionists", "1", "--handlers", "1", "--time-scale", "0", "--rate-limit", "0",
                              env=FAST)
    admin = await login(stack, "admin", ADMIN_PASSWORD)
    status, body, _ = await stack.request("POST", "/users", headers=admin, json={
        "username": "olga", "password": OPS_PASSWORD, "roles": ["operator"]})
    assert status == 201, body
    ops = await login(stack, "olga", OPS_PASSWORD)

    async def instances(**params: str) -> list[dict[str, Any]]:
        status, body, _ = await stack.request("GET", "/instances", headers=ops, params=params)
        assert status == 200, body
        return list(body["items"])

    # Every service of the stack registered itself, once, at the URL the launcher gave it.
    planned = {s["name"]: s["url"] for s in stack.state()["services"]}

    async def all_registered() -> bool:
        return {i["name"]: i["url"] for i in await instances(gone="false")} == planned

    await wait_until(all_registered, timeout_s=30, what="every service of the stack registered")
    kinds = sorted(i["kind"] for i in await instances())
    assert kinds == ["gateway", "handler", "logging_service", "receptionist", "registry", "scheduler"]

    async def gateway_upstreams() -> dict[str, dict[str, Any]]:
        status, body, _ = await stack.request("GET", "/status", headers=ops)
        assert status == 200, body
        return {u["url"]: u for u in body["upstreams"]}

    assert list(await gateway_upstreams()) == [planned["receptionist-1"]]  # the seed, once

    # A receptionist started by hand on a port of its own, pointed at the same registry and scheduler.
    port = _free_port_base()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "receptionist-by-hand.log"
    proc = await start_receptionist(stack, port, log)
    token = {"X-Service-Token": (stack.data_dir / "service_token").read_text().strip()}
    try:
        async def submitted_through_it() -> bool:
            status, body, _ = await stack.request("POST", "/exports", json=EXPORT)
            assert status == 201, body
            try:
                async with stack.session.get(url + "/status", headers=token) as resp:
                    return resp.status == 200 and (await resp.json())["counters"]["submitted"] > 0
            except aiohttp.ClientConnectionError:
                return False  # not listening yet

        await wait_until(submitted_through_it, timeout_s=30, interval_s=0.05,
                         what="the gateway sending submissions to the receptionist started by hand")
        upstreams = await gateway_upstreams()
        assert list(upstreams) == [planned["receptionist-1"], url] and upstreams[url]["requests"] > 0
        (mine,) = [i for i in await instances(kind="receptionist") if i["url"] == url]
        assert mine["name"] == "receptionist-by-hand" and mine["gone"] is False and "in_flight" in mine["status"]
        assert b"registered with the registry as receptionist" in log.read_bytes()

        code, out, err = await run_conveyor("ps", "--data-dir", str(stack.data_dir))  # as conveyor dlq: a receptionist
        assert code == 0, err
        line = next(line for line in out.splitlines() if line.startswith("receptionist-by-hand"))
        assert url in line and " alive " in line and "in_flight=" in line
        assert out.rstrip().endswith(f"{len(planned) + 1} instances, 0 gone"), out

        proc.send_signal(signal.SIGKILL)  # no deregistration: its heartbeats just stop
        await proc.wait()

        submitted = 0

        async def gone_and_out_of_rotation() -> bool:
            nonlocal submitted
            status, body, _ = await stack.request("POST", "/exports", json=EXPORT)
            assert status == 201, body  # whatever happens meanwhile, a submission succeeds
            submitted += 1
            (it,) = [i for i in await instances(kind="receptionist") if i["url"] == url]
            return it["gone"] and url not in await gateway_upstreams()

        await wait_until(gone_and_out_of_rotation, timeout_s=30, interval_s=0.05,
                         what="the killed receptionist marked gone and out of the gateway's rotation")
        assert submitted > 1
        assert list(await gateway_upstreams()) == [planned["receptionist-1"]]
        for _ in range(5):
            status, body, _ = await stack.request("POST", "/exports", json=EXPORT)
            assert status == 201, body
        code, out, err = await run_conveyor("ps", "--data-dir", str(stack.data_dir), "--token",
                                            ops["Authorization"][7:], "--kind", "receptionist")
        assert code == 0, err
        line = next(line for line in out.splitlines() if line.startswith("receptionist-by-hand"))
        assert " gone " in line and out.rstrip().endswith("2 instances, 1 gone"), out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # A clean stop deregisters. The launcher stops the gateway, the handler and the receptionist before the
    # registry, so they are no longer listed, and the registry takes itself off its own list; the killed
    # one stays (until it has been silent for REGISTRY_INSTANCE_DROP_S), and so may the scheduler and the
    # logging service, which stop with or after the registry and cannot reach it any more.
    await stack.stop()
    with sqlite3.connect(stack.data_dir / "registry.db") as db:
        left = {row[0] for row in db.execute("SELECT name FROM instances")}
    assert "receptionist-by-hand" in left and left <= {"receptionist-by-hand", "scheduler", "logging_service"}, left


async def test_ps_says_why_it_cannot_list(tmp_path: Path) -> None:
    code, out, err = await run_conveyor("ps", "--data-dir", str(tmp_path))
    assert code == 1 and out == "" and "no running stack found" in err and "Traceback" not in err
    code, _, err = await run_conveyor("ps", "--kind", "worker")
    assert code == 2 and "invalid choice" in err
    code, _, err = await run_conveyor("ps", "--url", f"http://127.0.0.1:{_free_port_base()}", "--data-dir",
                                      str(tmp_path))
    assert code == 1 and "cannot reach" in err
