"""What the launchers that autoscale handlers (:mod:`shared.autoscale`) last reported: each sends its
report (bounds, handlers running, the signal, its recent decisions with their reasons) after every step,
and the scheduler shows them in ``/status`` under ``autoscale`` (so in the operators' ``GET /queues``
too). Kept in memory: a launcher reports again within a second, and a report older than a minute is
shown as ``stale``."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from shared.errors import BadRequest, PayloadTooLarge

REPORTS = web.AppKey("autoscale_reports", dict)
MAX_REPORT_BYTES = 16 * 1024
STALE_S = 60.0


async def put_report(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if len(name) > 200:
        raise BadRequest("invalid launcher name", [{"field": "name", "message": "at most 200 characters"}])
    body = await request.read()
    if len(body) > MAX_REPORT_BYTES:
        raise PayloadTooLarge("report too large", [{"field": "body", "message": f"at most {MAX_REPORT_BYTES} bytes"}])
    try:
        report = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("malformed JSON", [{"field": "body", "message": "not JSON"}]) from None
    if not isinstance(report, dict):
        raise BadRequest("invalid report", [{"field": "body", "message": "a JSON object"}])
    request.app[REPORTS][name] = (time.monotonic(), report)
    return web.Response(status=204)


def reports(app: web.Application) -> dict[str, Any]:
    now = time.monotonic()
    return {name: {**report, "reported_s_ago": round(now - at, 1), "stale": now - at > STALE_S}
            for name, (at, report) in sorted(app[REPORTS].items())}


def add_routes(app: web.Application) -> None:
    app[REPORTS] = {}
    app.router.add_put("/autoscale/{name}", put_report)
