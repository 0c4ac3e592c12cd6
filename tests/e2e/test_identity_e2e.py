"""Identities on a live stack (``conveyor up``, real processes): the CLI changes a user's roles and their
older tokens stop working within the gateway's ``GATEWAY_REVOCATION_S``; a user made again under a removed
user's name owns none of the old jobs."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tests.support import wait_until

REVOCATION_S = 1.0
SLACK_S = 5.0  # a loaded test machine; the bound itself is REVOCATION_S
EXPORT = {"bookId": "b-1", "type": "epub"}


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shared.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


async def test_roles_changed_with_the_cli_revoke_old_tokens(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--time-scale", "0",
                              env={"CONVEYOR_ADMIN_PASSWORD": "admin's secret",
                                   "GATEWAY_REVOCATION_S": str(REVOCATION_S)})
    data = ["--data-dir", str(stack.data_dir)]

    async def token(username: str, password: str) -> dict[str, str]:
        code, out = await cli("token", username, "--password", password, *data)
        assert code == 0, out
        return {"Authorization": f"Bearer {out.strip()}"}

    code, out = await cli("user", "add", "alice", "--password", "alice's secret", *data)
    assert code == 0, out
    alice = await token("alice", "alice's secret")
    status, job, _ = await stack.request("POST", "/exports", json=EXPORT, headers=alice)
    assert status == 201

    code, out = await cli("user", "roles", "alice", "operator", "user", *data)
    assert code == 0 and "set the roles of alice to operator, user" in out, out

    async def refused() -> bool:
        status, body, _ = await stack.request("GET", "/jobs", headers=alice)
        return status == 401 and body["details"][0]["message"] == "revoked"

    await wait_until(refused, timeout_s=REVOCATION_S + SLACK_S, what="alice's old token to be refused")
    operator = await token("alice", "alice's secret")
    status, body, _ = await stack.request("GET", "/dead", headers=operator)  # an operator's route
    assert status == 200, body

    code, out = await cli("user", "roles", "nobody", "user", *data)
    assert code == 1 and "404" in out
    code, out = await cli("user", "roles", "alice", "root", *data)
    assert code == 2 and "invalid choice" in out
    code, out = await cli("user", "roles", "alice", *data)
    assert code == 2

    # Removed and made again: the new alice is someone else, with none of the old alice's jobs.
    code, out = await cli("user", "remove", "alice", *data)
    assert code == 0, out
    code, out = await cli("user", "add", "alice", "--password", "another secret", *data)
    assert code == 0, out
    new_alice = await token("alice", "another secret")
    status, _, _ = await stack.request("GET", f"/jobs/{job['id']}", headers=new_alice)
    assert status == 404
    status, listed, _ = await stack.request("GET", "/jobs", headers=new_alice)
    assert status == 200 and listed["items"] == []
    # The CLI lists users with their ids: what operators see as a job's owner.
    status, users, _ = await stack.request("GET", "/users", headers=await token("admin", "admin's secret"))
    assert status == 200
    code, out = await cli("user", "list", *data)
    assert code == 0 and all(u["id"] in out for u in users["items"]) and len(users["items"]) == 2
