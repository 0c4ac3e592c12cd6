"""What operators do through the API: queues, instances, dead letters and logs. Mixed into
:class:`shared.client.aio.AsyncClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.client.errors import Unreachable
from shared.client.transport import segment

if TYPE_CHECKING:
    from shared.client.transport import Transport


class Operators:
    http: Transport

    if TYPE_CHECKING:
        def items(self, path: str, params: dict[str, Any] | None = None, *, limit: int | None = None,
                  page_size: int | None = 100) -> AsyncIterator[dict[str, Any]]: ...

    async def health(self) -> dict[str, Any]:
        """The gateway's ``/health`` (open to anyone)."""
        return dict(await self.http.call("GET", "/health"))

    async def queues(self) -> list[dict[str, Any]]:
        """``GET /queues``, every page: each queue by name (``queue``), its counts (ready, delayed, leased,
        dead, oldest ready age...) and whether it is paused."""
        return [item async for item in self.items("/queues", page_size=None)]

    async def instances(self, *, kind: str | None = None) -> list[dict[str, Any]]:
        """``GET /instances``: every service instance, alive or gone, with its last status."""
        return [item async for item in self.items("/instances", {"kind": kind}, page_size=None)]

    async def pause(self, queue: str) -> dict[str, Any]:
        """Pause a queue: it still takes jobs but hands none out."""
        return dict(await self.http.call("POST", f"/queues/{segment(queue)}/pause"))

    async def resume(self, queue: str) -> dict[str, Any]:
        return dict(await self.http.call("POST", f"/queues/{segment(queue)}/resume"))

    async def dead(self, *, queue: str | None = None, limit: int | None = 100) -> list[dict[str, Any]]:
        """Dead letters, oldest death first."""
        return [item async for item in self.items("/dead", {"queue": queue}, limit=limit)]

    async def requeue(self, job_ids: list[str] | None = None, *, all: bool = False,
                      queue: str | None = None) -> dict[str, Any]:
        """Redrive dead letters (``job_ids``, or ``all`` of ``queue``): ``{requeued, skipped}``. Not retried:
        a retry would report the jobs the first try requeued as skipped."""
        return dict(await self.http.call("POST", "/dead/requeue", json=_which(job_ids, all, queue), retry=False))

    async def discard(self, job_ids: list[str] | None = None, *, all: bool = False,
                      queue: str | None = None) -> dict[str, Any]:
        """Drop dead letters for good (``job_ids``, or ``all`` of ``queue``)."""
        return dict(await self.http.call("POST", "/dead/discard", json=_which(job_ids, all, queue), retry=False))

    async def logs(self, *, service: str | None = None, level: str | None = None, job_id: str | None = None,
                   since: datetime | str | None = None, q: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Log lines of every service (operators), newest first; ``q``: only those whose message holds it."""
        params = {"service": service, "level": level, "job_id": job_id, "since": since, "q": q, "limit": limit}
        answer = await self.http.call("GET", "/logs", params=params)
        return list(answer.get("items") or [])

    async def follow_logs(self, *, service: str | None = None, level: str | None = None,
                          job_id: str | None = None, q: str | None = None,
                          after: datetime | str | None = None) -> AsyncIterator[dict[str, Any]]:
        """New log lines as they arrive (operators; ``GET /logs/stream``), from the lines after ``after``
        (else from now on). A stream cut midway is opened again from the last line it gave."""
        params = {"service": service, "level": level, "job_id": job_id, "q": q, "after": after}
        last_id: str | None = None
        while True:
            try:
                async for event in self.http.stream("/logs/stream", params=params, last_event_id=last_id):
                    if event.topic == "log":
                        last_id = event.id or last_id
                        yield dict(event.data)
                return
            except Unreachable:
                if last_id is None:
                    raise
                await asyncio.sleep(1.0)


def _which(job_ids: list[str] | None, all_: bool, queue: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"all": True} if all_ else {"job_ids": list(job_ids or [])}
    if queue:
        body["queue"] = queue
    return body
