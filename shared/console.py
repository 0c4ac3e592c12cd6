"""Operator commands of the ``conveyor`` CLI that talk to a running stack (``conveyor dlq ...``).

They find the stack through ``<data dir>/stack.json`` (written by ``conveyor up``) and speak to a
receptionist as an internal caller: the service token from the data dir, in the operator role.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from shared.http import path as url_path
from shared.table import table
from shared.web import SERVICE_TOKEN_HEADER


class ConsoleError(Exception):
    """A command that cannot be carried out; its message is for the operator."""


class Stack:
    """A running stack, as ``stack.json`` in its data dir describes it. ``url`` overrides the service
    the commands of one group talk to (a receptionist for ``dlq``, the registry for ``user``)."""

    def __init__(self, data_dir: Path, url: str | None = None, service: str = "receptionist") -> None:
        state_path = data_dir / "stack.json"
        self.gateway = "http://127.0.0.1:8080"
        if url is None:
            if not state_path.exists():
                raise ConsoleError(f"no running stack found: {state_path} is missing (is `conveyor up` running?)")
            state = orjson.loads(state_path.read_bytes())
            url = next(s["url"] for s in state["services"] if s["name"].startswith(service))
            self.gateway = state["gateway"]
        self.url = url.rstrip("/")
        token = os.environ.get("CONVEYOR_SERVICE_TOKEN")
        if token is None and (data_dir / "service_token").exists():
            token = (data_dir / "service_token").read_text().strip()
        self.headers = {"X-Conveyor-Roles": "operator", "X-Conveyor-User": "operator"}
        if token:
            self.headers[SERVICE_TOKEN_HEADER] = token

    async def call(self, method: str, path: str, *, base: str | None = None, **kwargs: Any) -> Any:
        # Sent as given: a name in the path was encoded by shared.http.path and must stay one segment.
        url = URL((base or self.url) + path, encoded=True)
        async with aiohttp.ClientSession(headers=self.headers if base is None else None) as session:
            try:
                async with session.request(method, url, **kwargs) as resp:
                    body = await resp.json(content_type=None) if resp.status != 204 else {}
                    if resp.status >= 400:
                        raise ConsoleError(f"{resp.status}: {body.get('error')} {body.get('details') or ''}")
                    return body
            except aiohttp.ClientError as exc:
                raise ConsoleError(f"cannot reach {url}: {exc}") from exc


async def dlq_list(stack: Stack, queue: str | None, limit: int) -> str:
    params: dict[str, Any] = {"limit": limit, **({"queue": queue} if queue else {})}
    items = (await stack.call("GET", "/dead", params=params))["items"]
    if not items:
        return "no dead letters"
    rows = [("job id", "queue", "attempt", "died at", "error")]
    rows += [(item["job_id"], item["queue"], str(item["attempt"]), item["died_at"][:19],
              (item.get("error") or "")[:60]) for item in items]
    return table(rows) + f"\n{len(items)} dead letters"


async def dlq_requeue(stack: Stack, job_ids: list[str], all_: bool, queue: str | None) -> str:
    body: dict[str, Any] = {"all": True, **({"queue": queue} if queue else {})} if all_ else {"job_ids": job_ids}
    answer = await stack.call("POST", "/dead/requeue", json=body)
    lines = [f"requeued {len(answer['requeued'])}"] + [f"skipped {s['id']}: {s['reason']}" for s in answer["skipped"]]
    return "\n".join(lines)


async def user_list(stack: Stack) -> str:
    users = (await stack.call("GET", "/users"))["items"]
    # The id too: jobs belong to it, and operators see it as a job's owner.
    rows = [("username", "id", "roles", "permissions", "created at")]
    rows += [(u["username"], u["id"], ",".join(u["roles"]), ",".join(u["permissions"]) or "-", u["created_at"][:19])
             for u in users]
    return table(rows)


async def user_add(stack: Stack, username: str, password: str, roles: list[str], permissions: list[str]) -> str:
    user = await stack.call("POST", "/users", json={"username": username, "password": password, "roles": roles,
                                                   "permissions": permissions})
    return f"added {user['username']} ({', '.join(user['roles'])})"


async def user_remove(stack: Stack, username: str) -> str:
    await stack.call("DELETE", url_path("users", username))
    return f"removed {username}"


async def user_passwd(stack: Stack, username: str, password: str) -> str:
    await stack.call("PUT", url_path("users", username, "password"), json={"password": password})
    return f"changed the password of {username}"


async def user_roles(stack: Stack, username: str, roles: list[str]) -> str:
    user = await stack.call("PUT", url_path("users", username, "roles"), json={"roles": roles})
    return f"set the roles of {user['username']} to {', '.join(user['roles'])}"


async def token(stack: Stack, username: str, password: str) -> str:
    """A token from the gateway, as any client gets one."""
    answer = await stack.call("POST", "/auth/token", base=stack.gateway,
                              json={"username": username, "password": password})
    return str(answer["access_token"])
