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

from shared.web import SERVICE_TOKEN_HEADER


class ConsoleError(Exception):
    """A command that cannot be carried out; its message is for the operator."""


class Stack:
    def __init__(self, data_dir: Path, receptionist_url: str | None = None) -> None:
        state_path = data_dir / "stack.json"
        if receptionist_url is None:
            if not state_path.exists():
                raise ConsoleError(f"no running stack found: {state_path} is missing (is `conveyor up` running?)")
            services = orjson.loads(state_path.read_bytes())["services"]
            receptionist_url = next(s["url"] for s in services if s["name"].startswith("receptionist"))
        self.url = receptionist_url.rstrip("/")
        token = os.environ.get("CONVEYOR_SERVICE_TOKEN")
        if token is None and (data_dir / "service_token").exists():
            token = (data_dir / "service_token").read_text().strip()
        self.headers = {"X-Conveyor-Roles": "operator", "X-Conveyor-User": "operator"}
        if token:
            self.headers[SERVICE_TOKEN_HEADER] = token

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with aiohttp.ClientSession(headers=self.headers) as session:
            try:
                async with session.request(method, self.url + path, **kwargs) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status >= 400:
                        raise ConsoleError(f"{resp.status}: {body.get('error')} {body.get('details') or ''}")
                    return body
            except aiohttp.ClientError as exc:
                raise ConsoleError(f"cannot reach {self.url}: {exc}") from exc


async def dlq_list(stack: Stack, queue: str | None, limit: int) -> str:
    params: dict[str, Any] = {"limit": limit, **({"queue": queue} if queue else {})}
    items = (await stack.call("GET", "/dead", params=params))["items"]
    if not items:
        return "no dead letters"
    rows = [("job id", "queue", "attempt", "died at", "error")]
    rows += [(item["job"]["id"], item["queue"], str(item["attempt"]), item["died_at"][:19],
              (item.get("error") or "")[:60]) for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], f"{len(items)} dead letters"])


async def dlq_requeue(stack: Stack, job_ids: list[str], all_: bool, queue: str | None) -> str:
    body: dict[str, Any] = {"all": True, **({"queue": queue} if queue else {})} if all_ else {"job_ids": job_ids}
    answer = await stack.call("POST", "/dead/requeue", json=body)
    lines = [f"requeued {len(answer['requeued'])}"] + [f"skipped {s['id']}: {s['reason']}" for s in answer["skipped"]]
    return "\n".join(lines)
