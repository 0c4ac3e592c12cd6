"""Operator commands of the ``conveyor`` CLI that talk to a running stack (``conveyor ps``, ``conveyor user``), and
the local stack the client commands fall back on (``conveyor dlq`` without a token).

They find the stack through ``<data dir>/stack.json`` (written by ``conveyor up``) and speak to a
receptionist as an internal caller: the service token from the data dir, in the operator role.
``conveyor ps`` given an operator's token asks the gateway with it instead, as any client would.

Whatever goes wrong (no stack, a stack that does not answer, an error answer, a job that could not be
requeued) is a :class:`ConsoleError` whose message is one line for the operator; the CLI prints it on
stderr and exits 1.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from shared.http import path as url_path
from shared.table import table
from shared.web import SERVICE_TOKEN_HEADER

#: How long one call to the stack may take before the command gives up.
CALL_TIMEOUT_S = 60.0


class ConsoleError(Exception):
    """A command that cannot be carried out, or did not do all it was asked; its message (one line) is for
    the operator. ``output`` is what it did do, printed before the error."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def _one_line(answer: Any) -> str:
    """An error answer ``{"error", "details"}`` as one line: ``invalid request (job_ids.0: not a UUID)``."""
    if not isinstance(answer, dict):
        return str(answer)[:200].replace("\n", " ")
    details = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in answer.get("details") or []
                        if isinstance(d, dict))
    return f"{answer.get('error') or 'error'}" + (f" ({details})" if details else "")


class Stack:
    """A running stack, as ``stack.json`` in its data dir describes it. ``url`` overrides the service
    the commands of one group talk to (a receptionist for ``dlq``, the registry for ``user``)."""

    def __init__(self, data_dir: Path, url: str | None = None, service: str = "receptionist") -> None:
        state_path = data_dir / "stack.json"
        self.gateway: str | None = "http://127.0.0.1:8080"
        if url is None:
            if not state_path.exists():
                raise ConsoleError(f"no running stack found: {state_path} is missing (is `conveyor up` running?)")
            try:
                state = orjson.loads(state_path.read_bytes())
                url = next(s["url"] for s in state["services"] if s["name"].startswith(service))
                self.gateway = state["gateway"]
            except (OSError, orjson.JSONDecodeError, TypeError, KeyError, StopIteration) as exc:
                raise ConsoleError(f"{state_path} does not describe a stack with a {service} "
                                   f"({type(exc).__name__}); start it with `conveyor up`, or give --url") from exc
        self.url = url.rstrip("/")
        token = os.environ.get("CONVEYOR_SERVICE_TOKEN")
        try:
            if token is None and (data_dir / "service_token").exists():
                token = (data_dir / "service_token").read_text().strip()
        except OSError as exc:
            raise ConsoleError(f"cannot read {data_dir / 'service_token'}: {exc.strerror}") from exc
        self.headers = {"X-Conveyor-Roles": "operator", "X-Conveyor-User": "operator"}
        if token:
            self.headers[SERVICE_TOKEN_HEADER] = token

    async def call(self, method: str, path: str, *, base: str | None = None, **kwargs: Any) -> Any:
        """The JSON answer of ``method path``; a :class:`ConsoleError` for an error answer (its status and
        reason), an answer that is not JSON, or a stack that cannot be reached in time."""
        # Sent as given: a name in the path was encoded by shared.http.path and must stay one segment.
        url = URL((base or self.url) + path, encoded=True)
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with aiohttp.ClientSession(headers=self.headers if base is None else None, timeout=timeout) as session:
            try:
                async with session.request(method, url, **kwargs) as resp:
                    raw = await resp.read()
                    try:
                        body = orjson.loads(raw) if raw else {}
                    except orjson.JSONDecodeError:
                        body = raw.decode(errors="replace").strip() or resp.reason
                    if resp.status >= 400:
                        raise ConsoleError(f"{resp.status}: {_one_line(body)}")
                    if not isinstance(body, dict):
                        raise ConsoleError(f"{url} answered {resp.status} with something that is not a JSON object")
                    return body
            except aiohttp.ClientError as exc:
                raise ConsoleError(f"cannot reach {url}: {exc}") from exc
            except TimeoutError as exc:
                raise ConsoleError(f"no answer from {url} in {CALL_TIMEOUT_S:g}s") from exc


def _ago(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: how long, in its largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def _summary(status: dict[str, Any], width: int = 70) -> str:
    """An instance's status snapshot on one line: ``in_flight=0 running=3 slots=16``."""
    parts = []
    for key, value in status.items():
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, dict):
            value = "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
        parts.append(f"{key}={value}")
    text = " ".join(parts) or "-"
    return text if len(text) <= width else text[:width - 1] + "…"


async def instances(stack: Stack, *, token: str | None = None, kind: str | None = None) -> str:
    """The service instances, as a table: from the gateway with an operator's ``token``, else from the
    receptionist as an internal operator."""
    params = {"kind": kind} if kind else {}
    if token:
        answer = await stack.call("GET", "/instances", base=stack.url, params=params,
                                  headers={"Authorization": f"Bearer {token}"})
    else:
        answer = await stack.call("GET", "/instances", params=params)
    items = answer["items"]
    if not items:
        return "no instances registered"
    now = datetime.now(timezone.utc)
    rows = [("name", "kind", "url", "version", "age", "heartbeat", "state", "status")]
    for item in items:
        age_s = max(0.0, (now - datetime.fromisoformat(item["started_at"])).total_seconds())
        rows.append((item["name"], item["kind"], item["url"], item["version"], _ago(age_s),
                     f"{_ago(item['silent_s'])} ago", "gone" if item["gone"] else "alive",
                     _summary(item.get("status") or {})))
    gone = sum(1 for item in items if item["gone"])
    return table(rows) + f"\n{len(items)} instances, {gone} gone"


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
    if stack.gateway is None:  # stack.json of a host that runs no gateway (``conveyor up --only``)
        raise ConsoleError("the stack in this data dir runs no gateway (conveyor up --only): ask the gateway's host")
    answer = await stack.call("POST", "/auth/token", base=stack.gateway,
                              json={"username": username, "password": password})
    return str(answer["access_token"])
